"""Typed, validated M³FT configs: one dataclass per stage sharing `TrainConfig`.

A config is built (config_loading.py) from its defaults, then a YAML file, then dotted
command-line overrides (`--optim.lr 1e-4`), all checked against these definitions:
unknown fields, wrong types and bad values raise ConfigError naming the field, before
any model is loaded. Neither module imports torch, so that check is fast.
"""

from __future__ import annotations

import dataclasses
import glob
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2chat_core.m3ft_settings import (
    DEFAULT_GROUPS,
    GATE_MODES,
    TRAINABLE_GROUPS,
    AdapterArchitecture,
    AdapterConfigError,
)


class ConfigError(ValueError):
    """A config field is unknown, mistyped, out of range or names a missing path."""


class FieldError(ConfigError):
    """Raised by a section's checks with the field's name inside the section."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name} {message}")
        self.name, self.message = name, message


MIXED_PRECISIONS = ("no", "bf16", "fp16")
WEIGHT_DTYPES = ("auto", "float32", "bfloat16", "float16")
CACHE_DTYPES = ("float32", "bfloat16", "float16")
CROPS = ("center", "random")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
REPORTERS = ("tensorboard", "none")


def require_positive(name: str, value: float) -> None:
    if value <= 0:
        raise FieldError(name, f"must be > 0, got {value!r}.")


def require_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise FieldError(name, f"must be >= 0, got {value!r}.")


def require_one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FieldError(name, f"must be one of {list(choices)}, got {value!r}.")


@dataclass(frozen=True)
class DataConfig:
    """train / validation: stage 1 takes WebDataset .tar shards (img2dataset layout), stage 2
    JSONL files; each entry is a file, a folder or a glob pattern."""

    train: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    resolution: int = 1024  # square training size of the target images, pixels
    crop: str = "center"
    max_answer_tokens: int = 128  # VLM tokens of y_res kept
    max_caption_tokens: int = 96  # VLM tokens of ŷ_cap kept
    max_history_turns: int = 4  # earlier dialogue turns kept in the prompt (oldest dropped first)
    num_workers: int = 2

    def __post_init__(self) -> None:
        for name in ("resolution", "max_answer_tokens", "max_caption_tokens"):
            require_positive(name, getattr(self, name))
        for name in ("max_history_turns", "num_workers"):
            require_non_negative(name, getattr(self, name))
        if self.resolution % 8:
            raise FieldError("resolution", f"must be a multiple of 8 (the VAE's downsampling), got {self.resolution}.")
        require_one_of("crop", self.crop, CROPS)


@dataclass(frozen=True)
class ModelConfig:
    """vlm: a VLM folder (m2chat_core.vlm). sdxl: a diffusers SDXL folder or a single SDXL
    .safetensors checkpoint; a single file also needs sdxl_config, a diffusers SDXL folder
    with the component configs and tokenizers (weights not needed)."""

    vlm: str = ""
    sdxl: str = ""
    sdxl_config: str = ""
    weight_dtype: str = "auto"  # frozen weights; auto: float32, or the mixed-precision dtype
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        require_one_of("weight_dtype", self.weight_dtype, WEIGHT_DTYPES)


@dataclass(frozen=True)
class AdapterConfig(AdapterArchitecture):
    """M³Adapter architecture (m2chat_core.m3ft_settings, checked there); stage 2 reads it from --init-from."""

    # Start the output heads at the mean CLIP target of this many training samples (zero
    # weights, mean bias): training begins at the predict-the-mean baseline instead of at
    # random conditioning. 0 keeps the random initialisation.
    mean_init_samples: int = 256

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except AdapterConfigError as error:
            raise FieldError(error.field, error.reason) from None
        require_non_negative("mean_init_samples", self.mean_init_samples)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    epochs: int = 4  # 0: no training; the export is the adapter the stage starts from (an ablation baseline)
    max_steps: int = 0  # optimizer steps; 0: run all epochs
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0: no clipping

    def __post_init__(self) -> None:
        for name in ("lr", "eps", "batch_size", "gradient_accumulation_steps"):
            require_positive(name, getattr(self, name))
        for name in ("epochs", "weight_decay", "max_steps", "warmup_steps", "max_grad_norm"):
            require_non_negative(name, getattr(self, name))
        if not all(0 <= beta < 1 for beta in self.betas):
            raise FieldError("betas", f"must be two numbers in [0, 1), got {list(self.betas)}.")
        require_one_of("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)


@dataclass(frozen=True)
class LossConfig:
    phi: float = 1.0  # φ, weight of L_align (Eq. 6, 7)
    lambda_text: float = 1.0  # λ, weight of L_text (Eq. 7); stage 2 only
    ddpm_weight: float = 1.0  # weight of L_ddpm (Eq. 5); 0: the L_align-only ablation (the UNet is not run)

    def __post_init__(self) -> None:
        for name in ("phi", "lambda_text", "ddpm_weight"):
            require_non_negative(name, getattr(self, name))
        if self.phi == 0 and self.ddpm_weight == 0:
            raise FieldError("ddpm_weight", "and phi are both 0: nothing would train the conditioning. "
                                            "Set at least one of them above 0.")


@dataclass(frozen=True)
class CacheConfig:
    """Precomputed outputs of the frozen parts (VAE latents, CLIP targets), reused across
    epochs and runs; keyed by the data files, the SDXL weights and the image settings."""

    enabled: bool = False
    dir: str = ".cache/m2chat-train"
    dtype: str = "float16"

    def __post_init__(self) -> None:
        require_one_of("dtype", self.dtype, CACHE_DTYPES)


@dataclass(frozen=True)
class EngineConfig:
    output_dir: str = "runs/m2chat"
    seed: int = 0
    mixed_precision: str = "no"
    checkpoint_every: int = 500  # optimizer steps; 0: only on NaN/inf and at the end
    checkpoint_total_limit: int = 3
    log_every: int = 10
    validate_every: int = 0  # optimizer steps; validation also runs before and after training
    report_to: str = "tensorboard"
    export_path: str = ""  # default: <output_dir>/m2chat-adapter.safetensors

    def __post_init__(self) -> None:
        require_one_of("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        require_one_of("report_to", self.report_to, REPORTERS)
        for name in ("checkpoint_every", "validate_every"):
            require_non_negative(name, getattr(self, name))
        for name in ("checkpoint_total_limit", "log_every"):
            require_positive(name, getattr(self, name))
        if not self.output_dir:
            raise FieldError("output_dir", "must name a folder.")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the LLM's attention/MLP projections (group llm_lora, peft)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        require_positive("rank", self.rank)
        require_positive("alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise FieldError("dropout", f"must be in [0, 1), got {self.dropout!r}.")
        if not self.target_modules:
            raise FieldError("target_modules", "must name at least one module.")


# The settings that name files or folders of the training machine: (section, name); None: top level.
PATH_SETTINGS = (
    ("data", "train"), ("data", "validation"), ("model", "vlm"), ("model", "sdxl"), ("model", "sdxl_config"),
    ("cache", "dir"), ("engine", "output_dir"), ("engine", "export_path"), (None, "resume"), (None, "init_from"),
)  # init_from: stage 2 only


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by both stages. groups: the parameter groups trained."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    groups: tuple[str, ...] = ()
    resume: str = ""  # "latest", a checkpoint folder, or "" to start fresh

    stage: typing.ClassVar[int]
    allowed_groups: typing.ClassVar[tuple[str, ...]]
    data_suffix: typing.ClassVar[str]

    def __post_init__(self) -> None:
        unknown = [group for group in self.groups if group not in self.allowed_groups]
        if unknown or not self.groups or len(set(self.groups)) != len(self.groups):
            raise FieldError(
                "groups", f"must list distinct groups from {list(self.allowed_groups)}, got {list(self.groups)}."
            )
        if self.engine.mixed_precision == "no" and self.model.weight_dtype not in ("auto", "float32"):
            raise FieldError(
                "model.weight_dtype",
                f"{self.model.weight_dtype!r} needs engine.mixed_precision bf16 or fp16 (autocast), got 'no'.",
            )
        _check_path("model.vlm", self.model.vlm, want_dir=True)
        _check_path("model.sdxl", self.model.sdxl)
        if Path(self.model.sdxl).is_file():
            if self.model.sdxl_config:
                _check_path("model.sdxl_config", self.model.sdxl_config, want_dir=True)
            else:
                raise FieldError(
                    "model.sdxl_config",
                    "is needed with a single-file SDXL checkpoint: a diffusers SDXL folder holding the "
                    "component configs and tokenizers.",
                )
        if not self.data.train:
            raise FieldError("data.train", f"must list at least one {self.data_suffix} file.")
        for name in ("train", "validation"):
            for entry in getattr(self.data, name):
                expand_data_paths(f"data.{name}", entry, self.data_suffix)
        if self.resume not in ("", "latest"):
            _check_path("resume", self.resume, want_dir=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the YAML a run saves."""
        return plain_values(dataclasses.asdict(self))

    def shareable_dict(self) -> dict[str, Any]:
        """to_dict with each file or folder setting cut to its last name: what an adapter file
        records, so a shared adapter says which data and models trained it, not the folders
        of the machine that trained it."""
        settings = self.to_dict()
        for section, name in PATH_SETTINGS:
            holder = settings if section is None else settings[section]
            if name not in holder:
                continue
            value = holder[name]
            holder[name] = [Path(entry).name for entry in value] if isinstance(value, list) else Path(value).name
        return settings


@dataclass(frozen=True)
class Stage1Config(TrainConfig):
    """Stage 1 (Eq. 6): adapter + special-token embeddings on image-text pairs."""

    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    groups: tuple[str, ...] = DEFAULT_GROUPS[1]

    stage: typing.ClassVar[int] = 1
    allowed_groups: typing.ClassVar[tuple[str, ...]] = TRAINABLE_GROUPS[1]
    data_suffix: typing.ClassVar[str] = ".tar"


@dataclass(frozen=True)
class Stage2Config(TrainConfig):
    """Stage 2 (Eq. 7): from a stage-1 adapter file, also the gate, the projector and the
    LLM's norms and biases (or a LoRA) on instruction and dialogue JSONL."""

    init_from: str = ""  # the stage-1 adapter file
    gate_mode: str = "learned"
    lora: LoraConfig = field(default_factory=LoraConfig)
    groups: tuple[str, ...] = DEFAULT_GROUPS[2]

    stage: typing.ClassVar[int] = 2
    allowed_groups: typing.ClassVar[tuple[str, ...]] = TRAINABLE_GROUPS[2]
    data_suffix: typing.ClassVar[str] = ".jsonl"

    def __post_init__(self) -> None:
        if not self.init_from:
            raise FieldError("init_from", "is required in stage 2: pass --init-from <stage-1 adapter .safetensors>.")
        _check_path("init_from", self.init_from)
        require_one_of("gate_mode", self.gate_mode, GATE_MODES)
        if "gate" in self.groups and self.gate_mode != "learned":
            raise FieldError("groups", f"lists 'gate', which only trains with gate_mode 'learned' (got {self.gate_mode!r}).")
        if {"llm_norms_biases", "llm_lora"} <= set(self.groups):
            raise FieldError("groups", "may list llm_norms_biases or llm_lora, not both.")
        super().__post_init__()


def _check_path(name: str, value: str, *, want_dir: bool = False) -> None:
    if not value:
        raise FieldError(name, "is required.")
    path = Path(value)
    if not path.exists():
        raise FieldError(name, f"names {value}, which does not exist.")
    if want_dir and not path.is_dir():
        raise FieldError(name, f"must be a folder, got the file {value}.")


def expand_data_paths(name: str, entry: str, suffix: str) -> list[Path]:
    """The `suffix` files an entry names: itself, the files in a folder, or a glob's matches."""
    path = Path(entry)
    if path.is_dir():
        matches = sorted(path.glob(f"*{suffix}"))
    elif any(character in entry for character in "*?["):
        matches = sorted(Path(match) for match in glob.glob(entry))
    else:
        matches = [path] if path.exists() else []
    if not matches:
        raise FieldError(name, f"entry {entry!r} names no existing {suffix} file.")
    wrong = [str(match) for match in matches if match.suffix != suffix]
    if wrong:
        raise FieldError(name, f"entry {entry!r} names files that are not {suffix}: {wrong[:3]}.")
    return matches


def plain_values(value: Any) -> Any:
    """Nested dicts, lists and tuples as plain dicts and lists."""
    if isinstance(value, dict):
        return {key: plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(item) for item in value]
    return value
