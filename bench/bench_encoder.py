"""Encoder benchmarks on the tiny and the ~1 GB ("bench-1gb") LLaVA-style VLMs.

1. One pass (Eq. 1): tokens the language model processes per encode / the minimum,
   prompt + answer + <|IC|> + caption + K. Target 1.00; re-encoding would be about 2.
   Counted twice: by the encoder (`tokens_processed`) and by a pre-hook of our own on
   the language model (`get_decoder()`), which sees every sequence its layers run on.
   The prompt length comes from the processor, not from the encoder.
2. Peak RSS while loading / size of the folder's .safetensors. Target <= 1.3 (no second
   copy of the weights). Each load runs in a fresh subprocess; after torch and
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

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402

from m2chat_core.adapter import M3Adapter, M3AdapterConfig  # noqa: E402
from m2chat_core.encoder import encode  # noqa: E402
from m2chat_core.prompt import build_prompt  # noqa: E402
from m2chat_core.session import ChatSession, ChatTurn, image_to_png  # noqa: E402
from m2chat_core.tiny.vlm import build_tiny_vlm  # noqa: E402
from m2chat_core.vlm import LoadedVLM, load_vlm  # noqa: E402

transformers.logging.disable_progress_bar()

NUM_IMAGE_TOKENS = 8  # K
MAX_NEW_TOKENS = 12
RSS_TARGET = 1.3
TURNS = {"image turn": ("Draw a red fox in the forest", [Image.new("RGB", (40, 30), (200, 30, 30))]),
         "text turn": ("Tell me a story about a blue whale", [])}


def _status_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def measure_load(folder: str) -> None:
    """Child process: print the RSS before `load_vlm`, the peak during it, and the peak
    once every weight has been read, in KiB."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    baseline = _status_kib("VmRSS")
    vlm = load_vlm(folder)  # dtype "auto": the folder's own (bfloat16 for bench-1gb)
    load_peak = _status_kib("VmHWM")
    with torch.no_grad():
        for tensor in (*vlm.model.parameters(), *vlm.model.buffers()):
            tensor.sum()  # pages the mmapped weights in
    result = {"baseline": baseline, "load": load_peak, "read": _status_kib("VmHWM"), "dtype": str(vlm.dtype)}
    print(json.dumps(result))


def load_rss_ratios(folder: Path) -> tuple[float, float, str]:
    """(peak increase during `load_vlm`, during load + reading every weight) / weights size."""
    child = subprocess.run([sys.executable, __file__, "--measure-load", str(folder)],
                           stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    weights = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    load, read = ((result[key] - result["baseline"]) * 1024 for key in ("load", "read"))
    detail = (f"peak +{load / 2**20:.0f} MiB in load_vlm, +{read / 2**20:.0f} MiB once read, "
              f"for {weights / 2**20:.0f} MiB of {result['dtype']} weights")
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


def token_ratios(vlm: LoadedVLM, prompt: str, images: list[Image.Image]) -> tuple[float, float, str]:
    config = M3AdapterConfig(vlm_hidden_size=vlm.info.hidden_size, vision_feature_size=vlm.info.vision_feature_size,
                             chosen_layers=(-1, -2), num_image_tokens=NUM_IMAGE_TOKENS, width=64, depth=1, heads=4)
    torch.manual_seed(0)
    special = M3Adapter(config).special_token_embeddings.detach()
    turn = ChatTurn(prompt, tuple(image_to_png(image) for image in images))
    prompt_tokens = vlm.process(build_prompt(vlm.processor, (), turn), images)["input_ids"].shape[1]
    counter = LanguageModelTokenCounter(vlm)
    try:
        result = encode(vlm, ChatSession(), prompt, images, special_token_embeddings=special,
                        chosen_layers=config.chosen_layers, num_image_tokens=config.num_image_tokens,
                        max_new_tokens=MAX_NEW_TOKENS)
    finally:
        counter.remove()
    answer, caption = len(result.answer_token_ids), len(result.caption_token_ids)
    minimum = prompt_tokens + answer + 1 + caption + NUM_IMAGE_TOKENS
    detail = (f"min {minimum} = prompt {prompt_tokens} + answer {answer} + <|IC|> 1 + caption {caption} + "
              f"K {NUM_IMAGE_TOKENS}; encoder {result.tokens_processed}, hook {counter.tokens}")
    return result.tokens_processed / minimum, counter.tokens / minimum, detail


def device_name() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"cpu: {cpu}, {torch.get_num_threads()} threads; torch {torch.__version__}, transformers " \
           f"{transformers.__version__}"


def main() -> int:
    rows, details = [], []  # (model, metric, measured, target, passed)
    with tempfile.TemporaryDirectory(prefix="m2chat-bench-") as temp:
        for preset in ("tiny", "bench-1gb"):
            folder = build_tiny_vlm(Path(temp) / preset, seed=0, preset=preset)
            load_ratio, read_ratio, detail = load_rss_ratios(folder)
            gated = preset != "tiny"
            rows.append((preset, "peak RSS / weights (load | load + read)", f"{load_ratio:.2f} | {read_ratio:.2f}",
                         f"<= {RSS_TARGET}" if gated else "info", not gated or read_ratio <= RSS_TARGET))
            details.append(f"{preset}, load: {detail}")
            vlm = load_vlm(folder)
            for name, (prompt, images) in TURNS.items():
                by_encoder, by_hook, detail = token_ratios(vlm, prompt, images)
                rows.append((preset, f"tokens / min, {name} (encoder | hook)", f"{by_encoder:.2f} | {by_hook:.2f}",
                             "1.00", by_encoder == by_hook == 1.0))
                details.append(f"{preset}, {name}: {detail}")
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
        measure_load(sys.argv[2])
    else:
        sys.exit(main())
