"""The evaluation config: YAML plus dotted command-line overrides, built and checked with
the training configs' machinery (`train.config`), so an unknown field, a wrong type or a
model path without the expected layout fails before any model is loaded. No torch here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2chat_core.m3ft_settings import FILE_GATE_MODE, GATE_MODE_CHOICES

from ..config import FieldError, require_one_of, require_positive
from .. import cli

DATASET_KINDS = ("coco", "cc3m", "mmdialog")
CAPTION_DATASETS = ("coco", "cc3m")
# m2chat: VLM -> M³Adapter -> SDXL. vlm_sd: the stock VLM's caption through SDXL's own text
# encoders (the paper's "VLM+SD" baseline). sdxl: the reference caption through SDXL.
SYSTEMS = ("m2chat", "vlm_sd", "sdxl")
VLM_SYSTEMS = ("m2chat", "vlm_sd")
DTYPES = ("float32", "float16", "bfloat16")
DRAW_MODES = ("always", "auto")  # as m2chat_core.encoder.DRAW_MODES, less "never" (no image to score)
OLD_FILE_GATE_MODE = ""  # the spelling of FILE_GATE_MODE before 0.1.1, still accepted
FID_ARCHITECTURES = ("fid_inception_v3", "tiny_conv")  # train.evaluate.feature_extractors

SDXL_LAYOUT = (
    "a diffusers SDXL folder (StableDiffusionXLPipeline.save_pretrained): model_index.json, unet/, vae/, "
    "text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/"
)
SDXL_ENTRIES = (
    "model_index.json", "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler",
)
VLM_LAYOUT = "a Hugging Face VLM folder (save_pretrained): config.json, *.safetensors weights, processor files"
CLIP_LAYOUT = (
    "a Hugging Face CLIP folder (CLIPModel and CLIPProcessor save_pretrained): config.json, model.safetensors, "
    "preprocessor_config.json, tokenizer files"
)
CLIP_ENTRIES = ("config.json", ("preprocessor_config.json", "processor_config.json"))


@dataclass(frozen=True)
class ModelsConfig:
    """vlm: VLM folder (m2chat_core.vlm). adapter: the M³Adapter .safetensors file.
    sdxl: a diffusers SDXL folder. dtype: of the VLM, the adapter and SDXL (the VAE is
    upcast by diffusers where SDXL's config asks for it)."""

    vlm: str = ""
    adapter: str = ""
    sdxl: str = ""
    dtype: str = "float32"
    device: str = "auto"  # "auto": cuda when available, else cpu
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require_one_of("dtype", self.dtype, DTYPES)


@dataclass(frozen=True)
class DataConfig:
    """kind: coco (COCO captions JSON), cc3m (TSV or JSONL of caption and image path) or
    mmdialog (dialogue JSONL); see train/evaluate/datasets.py for the layouts. image_root:
    the folder image paths are relative to (default: the file's folder). num_samples:
    captions (coco, cc3m) or dialogues (mmdialog) taken from the start; 0 takes all."""

    kind: str = "coco"
    path: str = ""
    image_root: str = ""
    num_samples: int = 0

    def __post_init__(self) -> None:
        require_one_of("kind", self.kind, DATASET_KINDS)
        if self.num_samples < 0:
            raise FieldError("num_samples", f"must be >= 0 (0 takes all), got {self.num_samples}.")


@dataclass(frozen=True)
class GenerationConfig:
    """Image generation: StableDiffusionXLPipeline at resolution², `steps` steps, CFG `cfg`
    against all-zero negative embeddings (as the authors sample), seed + item number per
    image. The VLM decodes greedily, `max_new_tokens` each for answer and caption."""

    systems: tuple[str, ...] = ("m2chat", "vlm_sd")
    resolution: int = 1024
    steps: int = 25
    cfg: float = 5.0
    seed: int = 0
    batch_size: int = 4
    max_new_tokens: int = 64
    draw_mode: str = "always"
    gate_mode: str = FILE_GATE_MODE

    def __post_init__(self) -> None:
        unknown = [system for system in self.systems if system not in SYSTEMS]
        if unknown or not self.systems or len(set(self.systems)) != len(self.systems):
            raise FieldError("systems", f"must list distinct systems from {list(SYSTEMS)}, got {list(self.systems)}.")
        for name in ("resolution", "steps", "batch_size", "max_new_tokens"):
            require_positive(name, getattr(self, name))
        if self.resolution % 8:
            raise FieldError("resolution", f"must be a multiple of 8 (the VAE's downsampling), got {self.resolution}.")
        if self.cfg < 0:
            raise FieldError("cfg", f"must be >= 0, got {self.cfg}.")
        require_one_of("draw_mode", self.draw_mode, DRAW_MODES)
        if self.gate_mode == OLD_FILE_GATE_MODE:
            object.__setattr__(self, "gate_mode", FILE_GATE_MODE)
        require_one_of("gate_mode", self.gate_mode, GATE_MODE_CHOICES)


@dataclass(frozen=True)
class MetricsConfig:
    """clip_model: a local CLIP folder scoring CLIP and InterRel (the backbone is named in
    the report; the authors used ViT-B/16). fid_weights: a .safetensors file of the FID
    feature extractor `fid_architecture` ("" skips FID)."""

    clip_model: str = ""
    fid_weights: str = ""
    fid_architecture: str = "fid_inception_v3"
    batch_size: int = 16

    def __post_init__(self) -> None:
        require_one_of("fid_architecture", self.fid_architecture, FID_ARCHITECTURES)
        require_positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate M²Chat on COCO-2014 val captions, CC3M val pairs or MMDialog test dialogues."""

    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output_dir: str = "runs/evaluate"

    def __post_init__(self) -> None:
        systems = set(self.generation.systems)
        if self.data.kind == "mmdialog" and "sdxl" in systems:
            raise FieldError(
                "generation.systems",
                "lists 'sdxl', which draws the reference captions of caption sets (coco, cc3m); "
                "dialogues are scored on what the VLM says, so use m2chat and vlm_sd.",
            )
        _check_file("data.path", self.data.path, "the evaluation set (see data.kind)")
        if self.data.image_root:
            _check_folder("data.image_root", self.data.image_root, (), "the folder the set's image paths start from")
        if systems & set(VLM_SYSTEMS):
            _check_folder("models.vlm", self.models.vlm, ("config.json",), VLM_LAYOUT)
        if "m2chat" in systems:
            _check_file("models.adapter", self.models.adapter, "an M³Adapter .safetensors file", suffix=".safetensors")
        _check_folder("models.sdxl", self.models.sdxl, SDXL_ENTRIES, SDXL_LAYOUT)
        _check_folder("metrics.clip_model", self.metrics.clip_model, CLIP_ENTRIES, CLIP_LAYOUT)
        if self.metrics.fid_weights:
            _check_file(
                "metrics.fid_weights", self.metrics.fid_weights,
                f"{self.metrics.fid_architecture} weights as .safetensors", suffix=".safetensors",
            )
        if not self.output_dir:
            raise FieldError("output_dir", "must name a folder.")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), as the report records it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _check_file(name: str, value: str, expected: str, *, suffix: str = "") -> None:
    if not value:
        raise FieldError(name, f"is required: {expected}.")
    path = Path(value)
    if not path.is_file():
        raise FieldError(name, f"names {value}, which is not a file; expected {expected}.")
    if suffix and path.suffix != suffix:
        raise FieldError(name, f"names {value}; expected {expected} (safetensors only, never pickles).")


def _check_folder(name: str, value: str, entries: tuple[str | tuple[str, ...], ...], layout: str) -> None:
    """`value` is a folder holding each entry (a tuple entry: any one of its names)."""
    if not value:
        raise FieldError(name, f"is required: {layout}.")
    path = Path(value)
    if not path.is_dir():
        raise FieldError(name, f"names {value}, which is not a folder; expected {layout}.")
    alternatives = [(entry,) if isinstance(entry, str) else entry for entry in entries]
    missing = [" or ".join(names) for names in alternatives if not any((path / name).exists() for name in names)]
    if missing:
        raise FieldError(name, f"names {value}, which lacks {', '.join(missing)}; expected {layout}.")


# --- command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """`--config FILE` and one `--section.field VALUE` flag per field of EvaluateConfig."""
    return cli.build_parser(
        EvaluateConfig, prog="python -m train.evaluate", config_help="see train/configs/evaluate_*.yaml"
    )


def parse_command_line(argv: Sequence[str]) -> EvaluateConfig:
    """The validated config of a command line; raises ConfigError naming the bad field."""
    return cli.parse_command_line(EvaluateConfig, argv, build_parser())
