"""The settings of each `python -m train.world` subcommand: one dataclass each, checked
on construction (before any work starts); the command line is generated from them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from m2chat_core.cpu_units import CPU_HAS_BF16_UNITS

from ..config import ConfigError
from .layout import SHIPPED, WeightsLayout
from .loop import LoopSettings
from .sdxl import GUIDANCE, SAMPLER_STEPS
from .taesd import DECODER_FILE, ENCODER_FILE
from .vocabulary import GRID


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name} {message}")


@dataclass(frozen=True)
class DataConfig:
    """Write the shapes world's data (train, validation and test splits) to --out."""

    out: str
    seed: int = 0
    # The train split's sizes; the defaults are the M³FT recipe's (world_stage{1,2}.yaml). 2048 edits,
    # not 512: stage 2 underfit edits (validation L_align 0.017 against 0.005 on requests; 0.0065 with
    # them). 512 stories, not 128: with the edits, stage 2 drew stories worse (validation stories,
    # bench_world --split validation: consistent 0.750; 0.953 with them, other tasks within two cases
    # of 64). train/world/RESULTS.md, "M³FT on the world".
    images: int = 2048  # stage-1 pairs (and as many text-to-image requests)
    dialogues: int = 512
    edits: int = 2048
    stories: int = 512
    test_fraction: float = 0.125  # the validation and the test split's size each, as a fraction of the train split's
    shard_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("images", "dialogues", "edits", "stories", "shard_size"):
            _check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}.")
        _check(0 < self.test_fraction <= 1, "test_fraction", f"must be in (0, 1], got {self.test_fraction}.")


@dataclass(frozen=True)
class TrainingConfig:
    out: str  # the run folder: checkpoint, log, learning curve, trained weights
    seed: int = 0
    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    checkpoint_every: int = 100
    evaluate_every: int = 100
    eval_images: int = 256
    bf16: bool = CPU_HAS_BF16_UNITS  # bfloat16 autocast, by default where the CPU has bf16 units
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the trained weights (0: none)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "evaluate_every", "eval_images"):
            _check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}.")
        _check(self.warmup_steps >= 0, "warmup_steps", f"must be 0 or more, got {self.warmup_steps}.")
        _check(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1), got {self.learning_rate}.")
        _check(self.weight_decay >= 0, "weight_decay", f"must be 0 or more, got {self.weight_decay}.")
        out = Path(self.out)
        _check(not out.exists() or out.is_dir(), "out", f"{out} exists and is not a folder; choose a folder.")

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(self.steps, self.learning_rate, self.warmup_steps, self.checkpoint_every,
                            self.evaluate_every, self.bf16, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class JudgeConfig(TrainingConfig):
    """Train the judge (reads shape, colour, size, position and background) into --out."""

    width: int = 48
    steps: int = 2000
    evaluate_every: int = 250
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.width >= 16 and self.width % 16 == 0, "width", f"must be a multiple of 16, got {self.width}.")


@dataclass(frozen=True)
class VaeConfig(TrainingConfig):
    """Train the world's TAESD-format VAE into --out."""

    batch_size: int = 8
    learning_rate: float = 2e-3
    steps: int = 4000
    evaluate_every: int = 500  # each evaluation also keeps a snapshot of the VAE (5 MB)
    checkpoint_every: int = 250
    crop: int = 48  # training crops (pixels, multiple of 8) around an object: cheaper than whole images
    shape_weight: float = 8.0  # extra loss weight of pixels on and around the shapes
    latent_noise: float = 0.1  # z + noise before decoding: a decoder robust to imperfect latents
    latent_penalty: float = 1e-3  # keeps z near unit spread (the UNet's scale)
    eval_images: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.crop >= 32 and self.crop % 8 == 0, "crop", f"must be a multiple of 8 and >= 32, got {self.crop}.")
        for name in ("shape_weight", "latent_noise", "latent_penalty"):
            _check(getattr(self, name) >= 0, name, f"must be 0 or more, got {getattr(self, name)}.")


@dataclass(frozen=True)
class UnetConfig(TrainingConfig):
    """Train the world's SDXL UNet (epsilon-prediction) on the world VAE's latents into --out."""

    vae: str = str(SHIPPED.vae)  # a folder with the taesdxl files
    judge: str = str(SHIPPED.judge)  # scores the evaluation's pictures ("" = no scoring)
    init: str = ""  # a UNet .safetensors (ComfyUI's layout) to start from, e.g. the shipped one ("" = new)
    ema_decay: float = 0.0  # > 0: evaluate and save the weights' moving average at this decay
    steps: int = 2500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    evaluate_every: int = 250
    checkpoint_every: int = 250
    pool_scenes: int = 4096  # train-split scenes whose latents and contexts are computed once
    uncond_probability: float = 0.1  # captions dropped for classifier-free guidance
    offset_noise: float = 0.1  # std of a per-channel constant added to the noise
    noisy_weight_cap: float = 20.0  # loss weight max(1, min(cap, 1/SNR)); 1 = the plain epsilon loss
    eval_prompts: int = 32  # held-out prompts drawn and judged at each evaluation
    eval_steps: int = 20
    guidance: float = GUIDANCE

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(Path(self.vae).is_dir(), "vae",
               f"{self.vae} is not a folder; train one with `python -m train.world vae`.")
        _check(not self.judge or Path(self.judge).is_file(), "judge",
               f"{self.judge} is not a file; train one with `python -m train.world judge` or pass --judge ''.")
        for name in ("pool_scenes", "eval_prompts", "eval_steps"):
            _check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}.")
        _check(self.offset_noise >= 0, "offset_noise", f"must be 0 or more, got {self.offset_noise}.")
        _check(self.noisy_weight_cap >= 1, "noisy_weight_cap", f"must be 1 or more, got {self.noisy_weight_cap}.")
        _check(0 <= self.uncond_probability < 1, "uncond_probability",
               f"must be in [0, 1), got {self.uncond_probability}.")
        _check(self.guidance >= 1, "guidance", f"must be 1 or more, got {self.guidance}.")
        _check(not self.init or Path(self.init).is_file(), "init",
               f"{self.init} is not a file; pass a UNet .safetensors (e.g. {SHIPPED.unet}) or ''.")
        _check(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}.")


@dataclass(frozen=True)
class ClipConfig(TrainingConfig):
    """Train the world's CLIP (the scorer of InterRel on the world) into --out."""

    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 1e-3
    evaluate_every: int = 250
    checkpoint_every: int = 250
    width: int = 64  # both towers' hidden size, and the embedding's
    layers: int = 2
    image_size: int = 64
    patch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.width >= 32 and self.width % 32 == 0, "width", f"must be a multiple of 32, got {self.width}.")
        _check(self.layers >= 1, "layers", f"must be at least 1, got {self.layers}.")
        _check(self.patch_size >= 1 and self.image_size % self.patch_size == 0, "patch_size",
               f"must divide image_size ({self.image_size}), got {self.patch_size}.")


@dataclass(frozen=True)
class MeasureConfig:
    """Measure the judge (and, with --vae, what survives the VAE) on fresh images; write JSON to --out."""

    out: str
    judge: str = str(SHIPPED.judge)
    vae: str = ""  # a folder with the taesdxl files, or a VAE run folder (its snapshots are measured too)
    images: int = 256  # per split
    seed: int = 1  # the fresh images' stream (training draws from other streams)

    def __post_init__(self) -> None:
        _check(Path(self.judge).is_file(), "judge",
               f"{self.judge} is not a file; train one with `python -m train.world judge` or pass --judge.")
        _check(not self.vae or Path(self.vae).is_dir(), "vae", f"{self.vae} is not a folder.")
        _check(self.images >= 1, "images", f"must be at least 1, got {self.images}.")


SCHEDULE_NAMES = ("full", "short")


@dataclass(frozen=True)
class BuildConfig:
    """Rebuild every world model from scratch into --out (resumable), gather them in --weights."""

    out: str
    schedule: str = "full"  # "short": the same stages for a few steps each (CI)
    seed: int = 0
    weights: str = ""  # where the gathered weights go (default <out>/weights; the shipped ones: train/world/weights)

    def __post_init__(self) -> None:
        _check(self.schedule in SCHEDULE_NAMES, "schedule", f"must be one of {SCHEDULE_NAMES}, got {self.schedule!r}.")
        out = Path(self.out)
        _check(not out.exists() or out.is_dir(), "out", f"{out} exists and is not a folder; choose a folder.")


@dataclass(frozen=True)
class M3ftConfig:
    """M³FT (stage 1, stage 2, a float16 export) on the world models in --weights, into --out (resumable)."""

    out: str
    weights: str = str(SHIPPED.root)  # the world's VLM and SDXL, in the shipped layout (layout.py)
    schedule: str = "full"  # "short": a tiny data set and a few steps per stage (CI)
    seed: int = 0  # the data set's

    def __post_init__(self) -> None:
        _check(self.schedule in SCHEDULE_NAMES, "schedule", f"must be one of {SCHEDULE_NAMES}, got {self.schedule!r}.")
        _check_sdxl_weights(self.weights)
        _check(WeightsLayout(Path(self.weights)).vlm.is_dir(), "weights",
               f"{self.weights} has no vlm/ folder; rebuild the world with `python -m train.world build`.")
        out = Path(self.out)
        _check(not out.exists() or out.is_dir(), "out", f"{out} exists and is not a folder; choose a folder.")


@dataclass(frozen=True)
class ReportConfig(M3ftConfig):
    """M³FT and its ablations trained in --out/m3ft (resumable), every row measured through a real
    ComfyUI server on --prompts held-out cases per task: --out/results.json and results.md."""

    prompts: int = 64  # held-out cases per task, the same for every row
    sampler_steps: int = SAMPLER_STEPS  # KSampler steps per picture: the tables' protocol (fewer: a quick look)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.prompts > 0, "prompts", f"must be > 0, got {self.prompts}.")
        _check(self.sampler_steps > 0, "sampler_steps", f"must be > 0, got {self.sampler_steps}.")


@dataclass(frozen=True)
class DiffusersConfig:
    """Write the world's SDXL (from --weights) as a diffusers folder for train/ (model.sdxl) to --out."""

    out: str
    weights: str = str(SHIPPED.root)  # a folder in the shipped layout (layout.py), e.g. a build's --weights

    def __post_init__(self) -> None:
        _check_sdxl_weights(self.weights)
        out = Path(self.out)
        _check(not out.exists() or (out / "model_index.json").is_file() or (out.is_dir() and not any(out.iterdir())),
               "out", f"{out} exists and is not a diffusers folder (which would be replaced); choose a new folder.")


@dataclass(frozen=True)
class CheckpointConfig:
    """Write the world's SDXL (from --weights) as one checkpoint for CheckpointLoaderSimple to --out."""

    out: str  # a .safetensors file, e.g. ComfyUI/models/checkpoints/m2chat-world-sdxl-checkpoint.safetensors
    weights: str = str(SHIPPED.root)  # a folder in the shipped layout (layout.py), e.g. a build's --weights

    def __post_init__(self) -> None:
        _check_sdxl_weights(self.weights)
        _check(self.out.endswith(".safetensors") and not Path(self.out).is_dir(), "out",
               f"{self.out} must be a .safetensors file path (CheckpointLoaderSimple lists those).")


def _check_sdxl_weights(folder: str) -> None:
    """`folder` holds the world's SDXL parts in the shipped layout."""
    weights = WeightsLayout(Path(folder))
    for path in (weights.unet, weights.vae / ENCODER_FILE, weights.vae / DECODER_FILE):
        _check(path.is_file(), "weights", f"{folder} has no {path.relative_to(weights.root)}; give a folder "
               "written by `python -m train.world build` (its --weights), e.g. train/world/weights.")


@dataclass(frozen=True)
class VlmConfig(TrainingConfig):
    """Pretrain the world's VLM (a tiny LLaVA-1.5-style model) into --out."""

    steps: int = 7000  # the shipped VLM's schedule: 1500 vision steps, then 5500 language steps
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    checkpoint_every: int = 50
    evaluate_every: int = 300
    eval_images: int = 32  # held-out pictures to describe, and as many test-split follow-ups
    width: int = 128  # the language model's hidden size
    layers: int = 4
    vision_width: int = 128
    vision_layers: int = 2
    vision_steps: int = 1500  # the first steps pretrain the vision tower alone (vision_pretraining.py)
    vision_batch_size: int = 64
    image_size: int = 96  # the vision tower's input: one patch per grid cell (see vlm_model.py)
    vision_grey: float = 0.5  # share of the vision phase's pictures shown in grey (vision_pretraining.py)
    cell_identity: bool = True  # each image token also learns its own grid cell (vision_pretraining.py)
    # Language-phase levers (train/world/RESULTS.md); the defaults are the shipped VLM's recipe.
    projector_vision_weight: float = 1.0  # > 0: linear heads on the projector's output learn the tower's read-out too
    attribute_weight: float = 4.0  # L_text weight of the shape and size words
    position_weight: float = 1.0  # L_text weight of the position words (top, bottom, left, right, middle)
    word_dropout: float = 0.3  # probability that a written colour or shape word is hidden from the input
    weight_decay: float = 0.1  # AdamW's decoupled decay: held-out pairs' words on both seeds tried (RESULTS.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("width", "vision_width"):
            value = getattr(self, name)
            _check(value >= 32 and value % 32 == 0, name, f"must be a multiple of 32, got {value}.")
        for name in ("layers", "vision_layers", "vision_batch_size"):
            _check(getattr(self, name) >= 1, name, f"must be at least 1, got {getattr(self, name)}.")
        _check(0 <= self.vision_steps < self.steps, "vision_steps",
               f"must be 0 or more and fewer than steps ({self.steps}), got {self.vision_steps}.")
        _check(self.projector_vision_weight >= 0, "projector_vision_weight",
               f"must be 0 or more, got {self.projector_vision_weight}.")
        _check(0 <= self.vision_grey <= 1, "vision_grey", f"must be in [0, 1], got {self.vision_grey}.")
        for name in ("attribute_weight", "position_weight"):
            _check(getattr(self, name) > 0, name, f"must be more than 0, got {getattr(self, name)}.")
        _check(0 <= self.word_dropout < 1, "word_dropout", f"must be in [0, 1), got {self.word_dropout}.")
        _check(self.image_size >= 48 and self.image_size % GRID == 0, "image_size",
               f"must be a multiple of {GRID} (one patch per grid cell) and at least 48, got {self.image_size}.")

    def loop_settings(self) -> LoopSettings:
        """The vision phase and the language phase each get their own warmup and cosine."""
        return replace(super().loop_settings(), restart_at=self.vision_steps)
