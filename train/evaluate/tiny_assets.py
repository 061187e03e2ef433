"""Everything train/configs/evaluate_tiny.yaml points to, seeded, built in seconds:

    python -m train.evaluate.tiny_assets .artifacts/tiny-eval [--seed 0]

writes `vlm/` (tiny LLaVA), `adapter.safetensors` (untrained M³Adapter for it), `sdxl/`
(tiny diffusers SDXL), `clip/` (tiny CLIPModel + CLIPProcessor folder), `fid-tiny-conv.safetensors`
(the tiny_conv FID extractor), and one small evaluation set per layout: `coco/`, `cc3m/`,
`mmdialog/` (see train/evaluate/datasets.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from m2chat_core.tiny import build_tiny_adapter, build_tiny_vlm
from m2chat_core.vlm import load_vlm

from ..tiny_assets import caption, draw
from ..tiny_sdxl import CLIP_BOS, CLIP_EOS, CLIP_MAX_LENGTH, build_tiny_sdxl_diffusers, train_clip_vocab
from .feature_extractors import TinyConvFeatures

logger = logging.getLogger(__name__)

TINY_CLIP_IMAGE_SIZE = 32
NUM_CAPTIONS, NUM_DIALOGUES = 6, 3


def build_tiny_clip(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A seeded 2-layer CLIP (32 px images, 8 px patches, width 32, embedding 16) with a
    CLIPProcessor, saved as a Hugging Face folder that `load_local_clip` reads."""
    out_dir = Path(out_dir)
    model, processor = seeded_clip(seed=seed, width=32, intermediate_size=64, layers=2, heads=2,
                                   image_size=TINY_CLIP_IMAGE_SIZE, patch_size=8, projection_dim=16)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def seeded_clip(*, seed: int, width: int, intermediate_size: int, layers: int, heads: int, image_size: int,
                patch_size: int, projection_dim: int) -> tuple[CLIPModel, CLIPProcessor]:
    """An untrained CLIPModel (both towers alike) with its CLIPProcessor: CLIP-style BPE
    learnt on English text (train_clip_vocab), pictures resized to `image_size` px."""
    vocab, merges = train_clip_vocab()
    tower = {"hidden_size": width, "intermediate_size": intermediate_size, "num_hidden_layers": layers,
             "num_attention_heads": heads}
    config = CLIPConfig(
        text_config={
            **tower, "vocab_size": len(vocab), "max_position_embeddings": CLIP_MAX_LENGTH,
            "bos_token_id": vocab[CLIP_BOS], "eos_token_id": vocab[CLIP_EOS], "pad_token_id": vocab[CLIP_EOS],
        },
        vision_config={**tower, "image_size": image_size, "patch_size": patch_size},
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH),
    )
    return model, processor


def build_tiny_fid_weights(path: str | Path, *, seed: int = 0) -> Path:
    """The seeded tiny_conv FID feature extractor's weights as .safetensors."""
    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extractor = TinyConvFeatures()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in extractor.state_dict().items()}, path)
    return path


def _image_file(folder: Path, name: str, text: str, rng: random.Random) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    draw(text, rng).save(folder / name)
    return f"{folder.name}/{name}"


def write_coco_set(folder: Path, rng: random.Random) -> Path:
    """captions_val2014.json (two captions per image) and val2014/ images."""
    annotations, images = [], []
    for image_id in range(NUM_CAPTIONS // 2):
        text = caption(rng)
        images.append({"id": image_id, "file_name": _image_file(folder / "val2014", f"{image_id:012d}.png", text, rng)})
        annotations += [{"id": 2 * image_id + n, "image_id": image_id, "caption": f"{prefix} {text}"}
                        for n, prefix in enumerate(("A photo of", "There is"))]
    path = folder / "captions_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}, indent=1))
    return path


def write_cc3m_set(folder: Path, rng: random.Random) -> Path:
    """val.tsv ("caption<TAB>image", with a header) and images/."""
    rows = ["caption\timage"]
    for number in range(NUM_CAPTIONS):
        text = caption(rng)
        rows.append(f"{text}\t{_image_file(folder / 'images', f'{number:06d}.png', text, rng)}")
    path = folder / "val.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def write_mmdialog_set(folder: Path, rng: random.Random) -> Path:
    """test.jsonl: two-turn dialogues, a user image in the first turn, a reference image per turn."""
    lines = []
    for dialogue in range(NUM_DIALOGUES):
        pet, another = caption(rng), caption(rng)
        shown = _image_file(folder / "images", f"{dialogue:03d}-user.png", pet, rng)
        turns = [
            {"user_text": "Look at my pet", "images": [shown], "answer": "What a lovely animal!", "caption": pet,
             "target_image": _image_file(folder / "images", f"{dialogue:03d}-0.png", pet, rng)},
            {"user_text": "Show me another one", "answer": f"Here is {another}.", "caption": another,
             "target_image": _image_file(folder / "images", f"{dialogue:03d}-1.png", another, rng)},
        ]
        lines.append(json.dumps({"task": "multimodal_dialogue", "turns": turns}))
    path = folder / "test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tiny_evaluation_assets(out_dir: str | Path, *, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    vlm_folder = build_tiny_vlm(out_dir / "vlm", seed=seed)
    info = load_vlm(vlm_folder).info
    build_tiny_adapter(out_dir / "adapter.safetensors", vlm_hidden_size=info.hidden_size,
                       vision_feature_size=info.vision_feature_size, trained_on_vlm=info.name, seed=seed)
    build_tiny_sdxl_diffusers(out_dir / "sdxl", seed=seed)
    build_tiny_clip(out_dir / "clip", seed=seed)
    build_tiny_fid_weights(out_dir / "fid-tiny-conv.safetensors", seed=seed)
    write_coco_set(out_dir / "coco", rng)
    write_cc3m_set(out_dir / "cc3m", rng)
    write_mmdialog_set(out_dir / "mmdialog", rng)
    logger.info("Built the tiny evaluation assets in %s", out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate.tiny_assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write (e.g. .artifacts/tiny-eval)")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_tiny_evaluation_assets(arguments.out_dir, seed=arguments.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
