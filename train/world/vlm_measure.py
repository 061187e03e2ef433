"""The world's VLM measured through the pack's own generation path (m2chat_core's
encoder, greedy, the nodes' settings without an adapter) on the test split:

    caption_exact       a held-out single-object picture described: the caption after
                        <|IC|> is exactly the canonical caption
    caption_<attribute> ... the object's colour, shape, size or position read back from
                        that caption right (a caption that is not canonical, or names
                        another number of objects, is wrong on all four)
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

from .language import parse_caption
from .vlm_data import WorldTurn, describe_turns, follow_up_turns, named_objects

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


CAPTION_ATTRIBUTES = {"colour": "colour", "shape": "shape", "size": "size", "position": "cell"}  # name: WorldObject's


def describe_scores(vlm: LoadedVLM, samples: list[WorldTurn]) -> dict[str, float]:
    """caption_exact and caption_<attribute> over single-object pictures to describe."""
    exact, hits = [], {name: [] for name in CAPTION_ATTRIBUTES}
    for sample in samples:
        written = generate(vlm, sample).caption
        exact.append(written == sample.turn.caption)
        scene = parse_caption(written)
        read = scene.objects[0] if scene is not None and len(scene.objects) == 1 else None
        truth = sample.scene.objects[0]
        for name, attribute in CAPTION_ATTRIBUTES.items():
            hits[name].append(read is not None and getattr(read, attribute) == getattr(truth, attribute))
    return {"caption_exact": _mean(exact), **{f"caption_{name}": _mean(hit) for name, hit in hits.items()}}


def measure_vlm(vlm: LoadedVLM, turns: dict[str, list[WorldTurn]]) -> dict[str, float]:
    exact, resolved = [], []
    for sample in turns["follow_up"]:
        caption = generate(vlm, sample).caption
        scene = parse_caption(caption)
        exact.append(caption == sample.turn.caption)
        resolved.append(scene is not None and named_objects(scene) == named_objects(sample.scene))
    return {**describe_scores(vlm, turns["describe"]), "follow_up_resolved": _mean(resolved),
            "follow_up_exact": _mean(exact)}


def _mean(hits: list[bool]) -> float:
    return sum(hits) / max(1, len(hits))
