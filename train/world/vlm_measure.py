"""The world's VLM measured through the pack's own generation path (m2chat_core's
encoder, greedy, the nodes' settings without an adapter) on the test split:

    caption_exact       a held-out single-object picture described: the caption after
                        <|IC|> is exactly the canonical caption
    follow_up_resolved  a dialogue follow-up ("now make it green", "move it to the
                        right", "add a yellow circle") with the earlier picture and turns
                        in context: the caption names every object's colour, shape and
                        position right
    follow_up_exact     ... and is exactly the canonical caption of the edited scene
"""

from __future__ import annotations

from m2chat_core.encoder import AdapterReadout, EncodeResult, TurnOptions, encode, text_marker_embeddings
from m2chat_core.session import ChatSession
from m2chat_core.vlm import LoadedVLM

from .vlm_data import WorldTurn, describe_turns, follow_up_turns, named_objects, read_caption

MAX_NEW_TOKENS = 48  # per answer and per caption; the world's longest caption has about 30 tokens


def measurement_turns(seed: int, count: int) -> dict[str, list[WorldTurn]]:
    """`count` held-out pictures to describe and `count` test-split follow-ups."""
    return {"describe": describe_turns(seed, count), "follow_up": follow_up_turns(seed, count)}


def generate(vlm: LoadedVLM, sample: WorldTurn) -> EncodeResult:
    """The sample's turn after its history, as the nodes run it without an adapter:
    the markers' text embeddings, the last layer, one <|img|>, greedy, always drawing."""
    readout = AdapterReadout(text_marker_embeddings(vlm), (-1,), 1)
    options = TurnOptions(task=sample.turn.task, draw_mode="always", max_new_tokens=MAX_NEW_TOKENS)
    return encode(vlm, ChatSession(sample.history), sample.turn.user_text, sample.turn.pil_images(),
                  readout=readout, options=options)


def measure_vlm(vlm: LoadedVLM, turns: dict[str, list[WorldTurn]]) -> dict[str, float]:
    describe = [generate(vlm, sample).caption == sample.turn.caption for sample in turns["describe"]]
    exact, resolved = [], []
    for sample in turns["follow_up"]:
        caption = generate(vlm, sample).caption
        scene = read_caption(caption)
        exact.append(caption == sample.turn.caption)
        resolved.append(scene is not None and named_objects(scene) == named_objects(sample.scene))
    return {"caption_exact": _mean(describe), "follow_up_resolved": _mean(resolved), "follow_up_exact": _mean(exact)}


def _mean(hits: list[bool]) -> float:
    return sum(hits) / max(1, len(hits))
