"""The paper's models at their real size with random weights, in the formats users have:
LLaVA-1.5-7B (Vicuna-7B widths, CLIP ViT-L/14-336 tower) as a Hugging Face folder and SDXL
base as a diffusers folder. No weights reach these machines, so the memory and speed of
the paper's setup (issue 14: ZeRO-2 stage 1 at the paper's batch) are measured on these.

    python scripts/paper_size_models.py OUT [--device cuda]   # OUT/llava-1.5-7b, OUT/sdxl-base

About 14 GB (VLM, bfloat16) + 7 GB (SDXL, float16) on disk; drawn in float32 first, so
the device needs about 45 GB free while the VLM is drawn and cast (a GPU draws them in
seconds, 2 CPU cores in many minutes). The tokenizer is the tiny VLM's (about 940
tokens, not LLaMA's 32000: 0.25 B fewer embedding parameters) and the CLIP tokenizers
the tiny SDXL's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from m2chat_core.tiny.vlm import LLAVA_15_VISION, build_tiny_vlm  # noqa: E402
from train.tiny_sdxl import SDXL_BASE, sdxl_pipeline  # noqa: E402

VLM_FOLDER, SDXL_FOLDER = "llava-1.5-7b", "sdxl-base"
# LLaVA-1.5 reads 576 image tokens plus the prompt; the paper's captions stay far below this.
MAX_CONTEXT = 2048


def build(out: Path, device: str, seed: int = 0) -> tuple[Path, Path]:
    vlm = build_tiny_vlm(out / VLM_FOLDER, seed=seed, preset="llava-1.5-7b", vision=LLAVA_15_VISION,
                         max_context=MAX_CONTEXT, device=device)
    torch.manual_seed(seed)
    pipeline = sdxl_pipeline(SDXL_BASE, device)
    pipeline.to(torch.float16).save_pretrained(out / SDXL_FOLDER, safe_serialization=True)
    return vlm, out / SDXL_FOLDER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    arguments = parser.parse_args(argv)
    for folder in build(arguments.out, arguments.device):
        print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
