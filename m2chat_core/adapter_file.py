"""The adapter file: one .safetensors holding everything M³FT trained.

Tensors: the M³Adapter state under `adapter.` (including the gate's M³FT factor and the
special-token embeddings) and, after stage 2, the VLM deltas under `vlm.` (LoRA weights,
or full values of the norms, biases and projector that were trained).
Metadata (all strings): `m2chat.format_version`, `m2chat.config` (the adapter config as
JSON) and, with VLM deltas, `m2chat.vlm_delta_kind` and `m2chat.vlm_delta_config` (JSON).

Loading sniffs the bytes before parsing anything and never unpickles.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from .adapter import ADAPTER_FORMAT_VERSION, AdapterConfigError, M3Adapter, M3AdapterConfig
from .atomic_files import atomic_path
from .gate import with_one_element_gate

logger = logging.getLogger(__name__)

ADAPTER_PREFIX = "adapter."
VLM_PREFIX = "vlm."
GATE_PREFIX = "learned_gate."  # M3Adapter.learned_gate, within the adapter state
FORMAT_VERSION_KEY = "m2chat.format_version"
CONFIG_KEY = "m2chat.config"
VLM_DELTA_KIND_KEY = "m2chat.vlm_delta_kind"
VLM_DELTA_CONFIG_KEY = "m2chat.vlm_delta_config"
TRAINING_CONFIG_KEY = "m2chat.training_config"  # the M³FT run that produced the file (JSON)
VLM_DELTA_KINDS = ("lora", "full")  # LoRA weights + its config, or trained tensors in full

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since 1.6, most .pt/.ckpt/.bin files
_PICKLE_PROTOCOL_OPCODE = 0x80  # first byte of a pickle (protocol >= 2): legacy torch.save
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
_REEXPORT = "re-export the adapter with m2chat's training module (train/), which writes .safetensors"


class AdapterFileError(ValueError):
    """Base of every reason an adapter file cannot be used."""


class NotSafetensorsError(AdapterFileError):
    """The file is not safetensors (e.g. a pickled .ckpt/.pt, whatever its extension)."""


class CorruptAdapterFileError(AdapterFileError):
    """The safetensors header or data cannot be read."""


class TruncatedAdapterFileError(CorruptAdapterFileError):
    """The file ends before the data its header announces (e.g. an interrupted copy)."""


class NotAnAdapterFileError(AdapterFileError):
    """A valid safetensors file that is not an M²Chat adapter (a checkpoint, a LoRA…)."""


class UnsupportedFormatVersionError(AdapterFileError):
    """The file's format version is unknown to this version of the pack."""


class InvalidAdapterConfigError(AdapterFileError):
    """The config JSON in the metadata is unreadable or invalid."""


class MissingKeysError(AdapterFileError):
    """Adapter tensors the config requires are absent."""


class UnexpectedKeysError(AdapterFileError):
    """Tensors the config does not account for are present."""


class ShapeMismatchError(AdapterFileError):
    """A tensor's shape differs from what the config implies."""


class IncompatibleAdapterError(AdapterFileError):
    """The adapter does not fit the loaded VLM."""


LORA_DOWN_SUFFIX, LORA_UP_SUFFIX = ".lora_A.weight", ".lora_B.weight"  # A (r, in) and B (out, r) of a layer


@dataclass(frozen=True)
class LoraPair:
    """One adapted linear layer `module`: its weight W becomes W + scale·B·A."""

    module: str
    down: torch.Tensor  # A, (r, in)
    up: torch.Tensor  # B, (out, r)


@dataclass(frozen=True)
class VLMDeltas:
    """What stage 2 trained inside the VLM; tensor names are the VLM's own (no `vlm.` prefix).

    kind: "lora" (for each adapted layer `M`, `M.lora_A.weight` and `M.lora_B.weight`;
    config holds {"r", "lora_alpha", "target_modules"}; any other tensor, e.g. the
    projector, is a full value) or "full" (the trained tensors' new values; config optional).
    """

    kind: str
    tensors: Mapping[str, torch.Tensor]
    config: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in VLM_DELTA_KINDS:
            raise ValueError(f"VLMDeltas.kind must be one of {VLM_DELTA_KINDS}, got {self.kind!r}.")
        if not self.tensors:
            raise ValueError("VLMDeltas.tensors is empty; pass vlm_deltas=None when stage 2 changed nothing.")
        if self.kind == "lora":
            config = self.config or {}
            for key in ("r", "lora_alpha"):
                value = config.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(
                        f"VLMDeltas of kind 'lora' need a positive {key!r} in their config, got {value!r}.")
            for pair in self.lora_pairs():
                if pair.down.shape[0] != config["r"] or pair.up.shape[1] != config["r"]:
                    raise ValueError(f"the LoRA pair of {pair.module} does not have rank r = {config['r']}.")

    @property
    def lora_scale(self) -> float:
        """peft's scale lora_alpha / r (0 for "full" deltas)."""
        return self.config["lora_alpha"] / self.config["r"] if self.kind == "lora" else 0.0

    def lora_pairs(self) -> list[LoraPair]:
        """Every LoRA-adapted layer with its A and B (none for "full" deltas)."""
        if self.kind != "lora":
            return []
        pairs = []
        for name, tensor in self.tensors.items():
            if name.endswith(LORA_DOWN_SUFFIX):
                module = name.removesuffix(LORA_DOWN_SUFFIX)
                if module + LORA_UP_SUFFIX not in self.tensors:
                    raise ValueError(f"the LoRA pair of {module} lacks {module + LORA_UP_SUFFIX}.")
                pairs.append(LoraPair(module, tensor, self.tensors[module + LORA_UP_SUFFIX]))
        paired = {pair.module + LORA_UP_SUFFIX for pair in pairs}
        lone = [name for name in self.tensors if name.endswith(LORA_UP_SUFFIX) and name not in paired]
        if lone:
            raise ValueError(f"{lone[0]} has no {LORA_DOWN_SUFFIX.lstrip('.')} beside it.")
        return pairs

    def full_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that replace the VLM's own values (everything but LoRA pairs)."""
        is_lora = self.kind == "lora"
        return {name: tensor for name, tensor in self.tensors.items()
                if not (is_lora and name.endswith((LORA_DOWN_SUFFIX, LORA_UP_SUFFIX)))}


@dataclass(frozen=True)
class AdapterFile:
    """The contents of a loaded, validated adapter file."""

    config: M3AdapterConfig
    adapter_state: dict[str, torch.Tensor]
    vlm_deltas: VLMDeltas | None = None
    training_config: dict[str, Any] | None = None

    def build_adapter(self, operations: Any = torch.nn) -> M3Adapter:
        """The M³Adapter with the file's weights, in the file's dtype, on the CPU, in eval
        mode; its layers from `operations` (see M3Adapter)."""
        with torch.device("meta"):
            adapter = M3Adapter(self.config, operations)
        adapter.load_state_dict(self.adapter_state, assign=True)
        return adapter.eval()


def save_adapter_file(
    path: str | os.PathLike[str],
    adapter: M3Adapter,
    vlm_deltas: VLMDeltas | None = None,
    training_config: Mapping[str, Any] | None = None,
    adapter_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter (with stage-2 VLM deltas and the training run's config, when given)
    to `path` atomically; returns the path. `adapter_state` replaces `adapter.state_dict()`
    where the module's own tensors are shards (sharded training gathers them first)."""
    path = Path(path)
    tensors = _with_prefix(adapter.state_dict() if adapter_state is None else adapter_state, ADAPTER_PREFIX)
    metadata = {
        "format": "pt",
        FORMAT_VERSION_KEY: str(ADAPTER_FORMAT_VERSION),
        CONFIG_KEY: json.dumps({**adapter.config.to_dict(), "format_version": ADAPTER_FORMAT_VERSION}, sort_keys=True),
    }
    if training_config is not None:
        metadata[TRAINING_CONFIG_KEY] = json.dumps(dict(training_config), sort_keys=True, default=str)
    if vlm_deltas is not None:
        tensors.update(_with_prefix(vlm_deltas.tensors, VLM_PREFIX))
        metadata[VLM_DELTA_KIND_KEY] = vlm_deltas.kind
        if vlm_deltas.config is not None:
            metadata[VLM_DELTA_CONFIG_KEY] = json.dumps(dict(vlm_deltas.config), sort_keys=True)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    with atomic_path(path) as temporary:  # readers see the old file or the complete new one
        temporary.write_bytes(_canonical_safetensors(tensors, metadata))
    logger.info("Saved M³Adapter (%d tensors) to %s", len(tensors), path)
    return path


def _canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors keeps metadata in a hash map whose order changes between processes;
    the header is rewritten with sorted keys so the same adapter gives the same bytes."""
    raw = save(tensors, metadata=metadata)
    header_length = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + header_length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data section stays 8-byte aligned
    return len(header).to_bytes(8, "little") + header + raw[8 + header_length :]


def load_adapter_file(path: str | os.PathLike[str]) -> AdapterFile:
    """Read and validate an adapter file; raises a specific AdapterFileError saying what to do."""
    path = Path(path)
    header = _read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if CONFIG_KEY not in metadata or FORMAT_VERSION_KEY not in metadata:
        raise NotAnAdapterFileError(
            f"{path.name} is a safetensors file but not an M²Chat adapter (no {CONFIG_KEY} metadata); "
            "SDXL checkpoints and LoRAs belong in models/checkpoints and models/loras, "
            "adapters trained by m2chat in models/m2chat."
        )
    version = _check_format_version(path, metadata[FORMAT_VERSION_KEY])
    config = _parse_config(path, metadata[CONFIG_KEY])
    tensors = _read_tensors(path)

    adapter_state = _strip_prefix(tensors, ADAPTER_PREFIX)
    if version == 1:
        adapter_state.update(_with_prefix(with_one_element_gate(_strip_prefix(adapter_state, GATE_PREFIX)), GATE_PREFIX))
    deltas = _strip_prefix(tensors, VLM_PREFIX)
    strays = sorted(name for name in tensors if not name.startswith((ADAPTER_PREFIX, VLM_PREFIX)))
    _check_adapter_state(path, config, adapter_state, strays)
    vlm_deltas = _vlm_deltas(path, metadata, deltas)
    training_config = json.loads(metadata[TRAINING_CONFIG_KEY]) if TRAINING_CONFIG_KEY in metadata else None
    return AdapterFile(config, adapter_state, vlm_deltas, training_config)


def _strip_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def _with_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + name: tensor for name, tensor in tensors.items()}


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    """Sniff and parse the safetensors header: 8-byte little-endian length, then JSON."""
    file_size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        plausible_size = 2 <= header_size <= _MAX_HEADER_BYTES
        header_bytes = file.read(header_size) if plausible_size else b""
    if not header_bytes.startswith(b"{"):
        _raise_not_safetensors(path, prefix, file_size)
    if len(header_bytes) < header_size:
        raise TruncatedAdapterFileError(
            f"{path.name} ends inside its safetensors header ({file_size} bytes, the header alone needs "
            f"{8 + header_size}); the download or copy was cut off: copy the adapter file again."
        )
    try:
        header = json.loads(header_bytes)
        data_size = max(
            (int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"),
            default=0,
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise CorruptAdapterFileError(
            f"{path.name} has a damaged safetensors header ({error}); "
            f"copy the adapter file again or {_REEXPORT}."
        ) from None
    if 8 + header_size + data_size > file_size:
        raise TruncatedAdapterFileError(
            f"{path.name} is {file_size} bytes but its header announces {8 + header_size + data_size}; "
            "the download or copy was cut off: copy the adapter file again."
        )
    return header


def _raise_not_safetensors(path: Path, prefix: bytes, file_size: int) -> None:
    """Explain why a file without a safetensors header was refused."""
    if prefix.startswith(_ZIP_MAGIC) or prefix[:1] == bytes([_PICKLE_PROTOCOL_OPCODE]):
        kind = "a zip archive (torch.save)" if prefix.startswith(_ZIP_MAGIC) else "a pickle"
        raise NotSafetensorsError(
            f"{path.name} is {kind}, e.g. a .ckpt/.pt/.bin checkpoint, not safetensors. M²Chat never "
            f"unpickles files, because unpickling can run arbitrary code; {_REEXPORT}."
        )
    if file_size < 8:
        raise TruncatedAdapterFileError(
            f"{path.name} is only {file_size} bytes long, too short for a safetensors header; "
            "the download or copy was cut off: copy the adapter file again."
        )
    raise NotSafetensorsError(
        f"{path.name} does not start with a safetensors header; it is some other format. "
        f"Use the .safetensors adapter file that m2chat's training wrote, or {_REEXPORT}."
    )


def _check_format_version(path: Path, version_text: str) -> int:
    try:
        version = int(version_text)
    except ValueError:
        version = None
    if version is None or version < 1:
        raise UnsupportedFormatVersionError(
            f"{path.name} has an unknown adapter format version {version_text!r}; {_REEXPORT}."
        )
    if version > ADAPTER_FORMAT_VERSION:
        raise UnsupportedFormatVersionError(
            f"{path.name} uses adapter format version {version}, newer than the {ADAPTER_FORMAT_VERSION} "
            "this comfyui-m2chat reads; update comfyui-m2chat."
        )
    return version


def _parse_config(path: Path, config_json: str) -> M3AdapterConfig:
    try:
        return M3AdapterConfig.from_dict(json.loads(config_json))
    except (ValueError, TypeError) as error:  # includes json.JSONDecodeError and AdapterConfigError
        reason = str(error) if isinstance(error, AdapterConfigError) else f"unreadable config JSON ({error})"
        raise InvalidAdapterConfigError(f"{path.name}: {reason}; {_REEXPORT}.") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            return {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CorruptAdapterFileError(
            f"{path.name} cannot be read as safetensors ({error}); "
            f"copy the adapter file again or {_REEXPORT}."
        ) from None


def _check_adapter_state(
    path: Path, config: M3AdapterConfig, adapter_state: Mapping[str, torch.Tensor], strays: list[str]
) -> None:
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in M3Adapter(config).state_dict().items()}
    missing = sorted(set(expected) - set(adapter_state))
    if missing:
        raise MissingKeysError(
            f"{path.name} lacks {len(missing)} adapter tensors its config requires (first: "
            f"{', '.join(missing[:5])}); the file is incomplete: {_REEXPORT}."
        )
    unexpected = strays + sorted(ADAPTER_PREFIX + name for name in set(adapter_state) - set(expected))
    if unexpected:
        raise UnexpectedKeysError(
            f"{path.name} holds {len(unexpected)} tensors this comfyui-m2chat does not know (first: "
            f"{', '.join(unexpected[:5])}); it may come from a newer version: update comfyui-m2chat or "
            f"{_REEXPORT}."
        )
    for name, shape in expected.items():
        actual = tuple(adapter_state[name].shape)
        if actual != shape:
            raise ShapeMismatchError(
                f"{path.name}: tensor adapter.{name} is shaped {actual} but its config implies {shape}; "
                f"the tensors and the config disagree (an edited or mixed-up file): {_REEXPORT}."
            )


def _vlm_deltas(
    path: Path, metadata: Mapping[str, str], tensors: dict[str, torch.Tensor]
) -> VLMDeltas | None:
    if not tensors:
        return None
    kind = metadata.get(VLM_DELTA_KIND_KEY)
    try:
        config_json = metadata.get(VLM_DELTA_CONFIG_KEY)
        config = None if config_json is None else json.loads(config_json)
        return VLMDeltas(kind=kind, tensors=tensors, config=config)
    except ValueError as error:
        raise InvalidAdapterConfigError(
            f"{path.name} has VLM deltas whose description is invalid ({error}); {_REEXPORT}."
        ) from None


def check_compatible(
    config: M3AdapterConfig, vlm_hidden_size: int, vision_feature_size: int, vlm_name: str
) -> None:
    """Raise IncompatibleAdapterError when the adapter cannot read the loaded VLM's features."""
    trained_on = config.trained_on_vlm or "an unrecorded VLM"
    mismatches = [
        f"{what} {expected} but {vlm_name} has {actual}"
        for what, expected, actual in (
            ("hidden size", config.vlm_hidden_size, vlm_hidden_size),
            ("vision feature size", config.vision_feature_size, vision_feature_size),
        )
        if expected != actual
    ]
    if mismatches:
        raise IncompatibleAdapterError(
            f"This adapter was trained on {trained_on} and expects {'; '.join(mismatches)}. "
            f"Load {trained_on} in the VLM loader, or pick an adapter trained on {vlm_name}."
        )
    if config.trained_on_vlm and config.trained_on_vlm != vlm_name:
        logger.warning(
            "Adapter trained on %s, used with %s: sizes match, but results may be poor with a different VLM.",
            config.trained_on_vlm,
            vlm_name,
        )
