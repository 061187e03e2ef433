"""Encoder benchmarks on the tiny and the ~1 GB ("bench-1gb") LLaVA-style VLMs.

1. One pass (Eq. 1): tokens the language model processes per encode / the minimum,
   prompt + answer + <|IC|> + caption + K. Target 1.00; re-encoding would be about 2.
   Counted twice: by the encoder (`tokens_processed`) and by a pre-hook of our own on
   the language model (`get_decoder()`), which sees every sequence its layers run on.
   The prompt length comes from the processor, not from the encoder.
2. Multi-turn (the prefix cache): VLM tokens per story / the incremental minimum for
   N = 1, 2, 4, 8, 16 panels and for a 3-turn chained dialogue with two images, on a
   tiny VLM with a 4k context. Target <= 1.05 (each conversation token prefilled once,
   each generated token decoded once). Tokens are counted by the pre-hook of (1); the
   minimum is computed here from the token ids: the size of the union (as a trie) of
   every turn's prompt ids (image placeholders tagged with their image) followed by its
   generated ids, so a prompt prefix any earlier turn processed counts once. Also
   images through the vision tower (a hook on it) / distinct images, target 1.00, and the same
   ratios without the cache for comparison. On bench-1gb (float32): wall time per panel
   of a 16-panel story / of a 1-panel story, target <= 1.3.
3. Peak RSS while loading / size of the folder's .safetensors. Target <= 1.3 (no second
   copy of the weights); loading float32 from the bfloat16 folder: <= 2.3 (the float32
   weights are 2.0). Each load runs in a fresh subprocess; after torch and
   transformers are imported the kernel's peak (VmHWM) is reset through
   /proc/self/clear_refs, so the peak is exact (no polling gaps) and import-time peaks
   do not count; the increase is taken from the RSS just before `load_vlm`. CPU weights
   are lazy views of the mmapped file, so `load_vlm` alone barely raises RSS; the gated
   number therefore spans the load plus one read of every weight (what the first
   encode does). Only gated for bench-1gb: the tiny model's ~1 MB of weights are
   dwarfed by the processor.

    .venv/bin/python bench/bench_encoder.py      # exits 1 when a target is missed
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from m2chat_core.adapter import M3Adapter, M3AdapterConfig  # noqa: E402
from m2chat_core.encoder import AdapterReadout, TurnOptions, encode  # noqa: E402
from m2chat_core.prefix_cache import PrefixCache  # noqa: E402
from m2chat_core.prompt import build_prompt, panel_prompt  # noqa: E402
from m2chat_core.session import ChatSession, ChatTurn, image_to_png  # noqa: E402
from m2chat_core.tiny.vlm import build_tiny_vlm  # noqa: E402
from m2chat_core.vlm import LoadedVLM, load_vlm  # noqa: E402

transformers.logging.disable_progress_bar()

NUM_IMAGE_TOKENS = 8  # K
MAX_NEW_TOKENS = 12
RSS_TARGET = 1.3
RSS_UPCAST_TARGET = 2.3  # float32 from bfloat16, / the bfloat16 size
MULTI_TURN_TARGET = 1.05
WALL_TIME_TARGET = 1.3
STORY_PANELS = (1, 2, 4, 8, 16)
WALL_TIME_MAX_NEW_TOKENS = 4  # keeps the 17 panels on the 1 GB model to minutes on a CPU
CONTEXT = 4096
PREMISE = "A small fox who wants to learn to fly"
RED, BLUE = Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 40), (20, 40, 220))
DIALOGUE = [("What is in this picture?", [RED]), ("Now draw it at night.", []), ("Put this one beside it.", [BLUE])]
TURNS = {"image turn": ("Draw a red fox in the forest", [Image.new("RGB", (40, 30), (200, 30, 30))]),
         "text turn": ("Tell me a story about a blue whale", [])}


def _status_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def measure_load(folder: str, dtype: str) -> None:
    """Child process: print the RSS before `load_vlm`, the peak during it, and the peak
    once every weight has been read, in KiB."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    baseline = _status_kib("VmRSS")
    vlm = load_vlm(folder, dtype=dtype)  # "auto": the folder's own (bfloat16 for bench-1gb)
    load_peak = _status_kib("VmHWM")
    with torch.no_grad():
        for tensor in (*vlm.model.parameters(), *vlm.model.buffers()):
            tensor.sum()  # pages the mmapped weights in
    result = {"baseline": baseline, "load": load_peak, "read": _status_kib("VmHWM"), "dtype": str(vlm.dtype)}
    print(json.dumps(result))


def load_rss_ratios(folder: Path, dtype: str = "auto") -> tuple[float, float, str]:
    """(peak increase during `load_vlm`, during load + reading every weight) / size of the
    folder's weights."""
    child = subprocess.run([sys.executable, __file__, "--measure-load", str(folder), dtype],
                           stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    weights = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    load, read = ((result[key] - result["baseline"]) * 1024 for key in ("load", "read"))
    detail = (f"peak +{load / 2**20:.0f} MiB in load_vlm, +{read / 2**20:.0f} MiB once read, "
              f"for the folder's {weights / 2**20:.0f} MiB of weights, loaded as {result['dtype']}")
    return load / weights, read / weights, detail


class LanguageModelTokenCounter:
    """Sums the sequence lengths the language model is called on."""

    def __init__(self, vlm: LoadedVLM) -> None:
        self.tokens = 0
        self._hook = vlm.model.get_decoder().register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        embeddings = kwargs.get("inputs_embeds")
        sequence = embeddings if embeddings is not None else kwargs.get("input_ids", args[0] if args else None)
        self.tokens += sequence.shape[1]

    def remove(self) -> None:
        self._hook.remove()


class VisionTowerImages:
    """Counts the images the VLM's vision tower is called on (the rows of its pixel batches)."""

    def __init__(self, vlm: LoadedVLM) -> None:
        self.images = 0
        self._hook = vlm.model.model.vision_tower.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.images += (args[0] if args else kwargs["pixel_values"]).shape[0]

    def remove(self) -> None:
        self._hook.remove()


def adapter_readout(vlm: LoadedVLM) -> AdapterReadout:
    """What an (untrained) adapter for `vlm` gives the encoder: special-token rows, layers, K."""
    config = M3AdapterConfig(vlm_hidden_size=vlm.info.hidden_size, vision_feature_size=vlm.info.vision_feature_size,
                             chosen_layers=(-1, -2), num_image_tokens=NUM_IMAGE_TOKENS, width=64, depth=1, heads=4)
    torch.manual_seed(0)
    special = M3Adapter(config).special_token_embeddings.detach()
    return AdapterReadout(special, tuple(config.chosen_layers), config.num_image_tokens)


def token_ratios(vlm: LoadedVLM, prompt: str, images: list[Image.Image]) -> tuple[float, float, str]:
    readout = adapter_readout(vlm)
    turn = ChatTurn(prompt, tuple(image_to_png(image) for image in images))
    prompt_tokens = vlm.process(build_prompt(vlm.processor, (), turn), images)["input_ids"].shape[1]
    counter = LanguageModelTokenCounter(vlm)
    try:
        result = encode(vlm, ChatSession(), prompt, images, readout=readout,
                        options=TurnOptions(max_new_tokens=MAX_NEW_TOKENS))
    finally:
        counter.remove()
    answer, caption = len(result.answer_token_ids), len(result.caption_token_ids)
    minimum = prompt_tokens + answer + 1 + caption + NUM_IMAGE_TOKENS
    detail = (f"min {minimum} = prompt {prompt_tokens} + answer {answer} + <|IC|> 1 + caption {caption} + "
              f"K {NUM_IMAGE_TOKENS}; encoder {result.tokens_processed}, hook {counter.tokens}")
    return result.tokens_processed / minimum, counter.tokens / minimum, detail


def incremental_minimum(sequences: Sequence[Sequence[object]]) -> int:
    """Positions in the union of `sequences` as a trie: each one adds what no earlier one
    shares as a prefix (the work a perfect prefix cache leaves)."""
    total = 0
    for index, sequence in enumerate(sequences):
        shared = 0
        for earlier in sequences[:index]:
            length = next((i for i, (a, b) in enumerate(zip(sequence, earlier)) if a != b), min(len(sequence), len(earlier)))
            shared = max(shared, length)
        total += len(sequence) - shared
    return total


def prompt_units(vlm: LoadedVLM, history: Sequence[ChatTurn], turn: ChatTurn) -> list[object]:
    """The prompt's token ids from the processor, each image placeholder tagged with the
    digest of its image (the k-th run of placeholders is the k-th image)."""
    images = [image for earlier in (*history, turn) for image in earlier.images]
    pil_images = [image for earlier in (*history, turn) for image in earlier.pil_images()]
    ids = vlm.process(build_prompt(vlm.processor, history, turn), pil_images)["input_ids"][0].tolist()
    placeholder, units, run = vlm.model.config.image_token_id, [], -1
    for position, token in enumerate(ids):
        if token == placeholder:
            run += position == 0 or ids[position - 1] != placeholder
            units.append((token, hashlib.sha256(images[run]).hexdigest()))
        else:
            units.append(token)
    return units


def run_turns(vlm: LoadedVLM, turns: Sequence[tuple[str, list[Image.Image]]], task: str, cache: PrefixCache | None,
              max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[int, int, int, float]:
    """Encode `turns` in one session: (tokens the hook counted, the incremental minimum,
    images through the vision tower, seconds)."""
    readout = adapter_readout(vlm)
    session, sequences = ChatSession(), []
    counter, tower = LanguageModelTokenCounter(vlm), VisionTowerImages(vlm)
    seconds = 0.0
    try:
        for prompt, images in turns:
            turn = ChatTurn(prompt, tuple(image_to_png(image) for image in images), task=task)
            units = prompt_units(vlm, session.turns, turn)
            start = time.perf_counter()
            result = encode(vlm, session, prompt, images, readout=readout,
                            options=TurnOptions(task=task, max_new_tokens=max_new_tokens), prefix_cache=cache)
            seconds += time.perf_counter() - start
            assert result.dropped_turns == 0, "the bench needs every turn in the context"
            sequences.append([*units, *result.answer_token_ids, "<|IC|>", *result.caption_token_ids,
                              *["<|img|>"] * readout.num_image_tokens])
            session = result.session
    finally:
        counter.remove()
        tower.remove()
    return counter.tokens, incremental_minimum(sequences), tower.images, seconds


def story_turns(panels: int) -> list[tuple[str, list[Image.Image]]]:
    return [(panel_prompt(PREMISE, index, panels), []) for index in range(panels)]


def multi_turn_rows(vlm: LoadedVLM) -> tuple[list[tuple], list[str]]:
    rows, details = [], []
    for name, turns, task in [*((f"story, {n} panels", story_turns(n), "storytelling") for n in STORY_PANELS),
                              ("3-turn chained dialogue", DIALOGUE, "multimodal_dialogue")]:
        tokens, minimum, tower_images, _ = run_turns(vlm, turns, task, PrefixCache(max_tokens=CONTEXT))
        plain_tokens, plain_minimum, plain_tower_images, _ = run_turns(vlm, turns, task, None)
        assert plain_minimum == minimum, "the same greedy outputs with and without the cache"
        rows.append(("tiny", f"tokens / min, {name} (cache | none)",
                     f"{tokens / minimum:.2f} | {plain_tokens / minimum:.2f}", f"<= {MULTI_TURN_TARGET}",
                     tokens / minimum <= MULTI_TURN_TARGET))
        details.append(f"tiny, {name}: min {minimum}; hook {tokens} with the cache, {plain_tokens} without")
        distinct_images = len({image_to_png(image) for _, images in turns for image in images})
        if distinct_images:
            rows.append(("tiny", f"vision-tower images / distinct images, {name} (cache | none)",
                         f"{tower_images / distinct_images:.2f} | {plain_tower_images / distinct_images:.2f}",
                         "1.00", tower_images == distinct_images))
    return rows, details


def wall_time_row(vlm: LoadedVLM) -> tuple[tuple, str]:
    seconds = {}
    for panels in (1, 16):
        *_, elapsed = run_turns(vlm, story_turns(panels), "storytelling", PrefixCache(max_tokens=CONTEXT),
                                max_new_tokens=WALL_TIME_MAX_NEW_TOKENS)
        seconds[panels] = elapsed / panels
    ratio = seconds[16] / seconds[1]
    row = ("bench-1gb", "s per panel, 16 / 1 panels (float32, cache)", f"{ratio:.2f}", f"<= {WALL_TIME_TARGET}",
           ratio <= WALL_TIME_TARGET)
    return row, f"bench-1gb, per panel: {seconds[1]:.1f} s of 1, {seconds[16]:.1f} s of 16 (max new tokens " \
                f"{WALL_TIME_MAX_NEW_TOKENS}, K {NUM_IMAGE_TOKENS})"


def device_name() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"cpu: {cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}, transformers " \
           f"{transformers.__version__}"


def main() -> int:
    rows, details = [], []  # (model, metric, measured, target, passed)
    with tempfile.TemporaryDirectory(prefix="m2chat-bench-") as temp:
        for preset in ("tiny", "bench-1gb"):
            folder = build_tiny_vlm(Path(temp) / preset, seed=0, preset=preset, max_context=CONTEXT)
            gated = preset != "tiny"
            for dtype, target in (("auto", RSS_TARGET), ("float32", RSS_UPCAST_TARGET)):
                if dtype == "float32" and not gated:
                    continue  # the tiny folder is float32 already
                load_ratio, read_ratio, detail = load_rss_ratios(folder, dtype)
                rows.append((preset, f"peak RSS / weights, {dtype} (load | load + read)",
                             f"{load_ratio:.2f} | {read_ratio:.2f}", f"<= {target}" if gated else "info",
                             not gated or read_ratio <= target))
                details.append(f"{preset}, load {dtype}: {detail}")
            vlm = load_vlm(folder, dtype="float32")
            for name, (prompt, images) in TURNS.items():
                by_encoder, by_hook, detail = token_ratios(vlm, prompt, images)
                rows.append((preset, f"tokens / min, {name} (encoder | hook)", f"{by_encoder:.2f} | {by_hook:.2f}",
                             "1.00", by_encoder == by_hook == 1.0))
                details.append(f"{preset}, {name}: {detail}")
            if gated:
                row, detail = wall_time_row(vlm)
                rows.append(row)
                details.append(detail)
            else:
                multi_rows, multi_details = multi_turn_rows(vlm)
                rows += multi_rows
                details += multi_details
            del vlm
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    print(device_name())
    print("  ".join(title.ljust(width) for title, width in zip(("model", "metric", "measured", "target"), widths)))
    for *cells, passed in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + ("  ok" if passed else "  MISSED"))
    print("\n".join(details))
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure-load"]:
        measure_load(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
