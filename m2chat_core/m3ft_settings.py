"""The M³Adapter's architecture settings, its gate modes and the M³FT stage -> trainable
groups table: one torch-free definition shared by the adapter (m2chat_core.adapter), the
training configs (train/config.py, checked before any model loads) and the nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Eq. 3's gate g: "paper" = clamped cos(e_ans, e_cap), "learned" = sigmoid(a·cos + b),
# "fixed" = a value the caller gives.
GATE_MODES = ("paper", "learned", "fixed")
FILE_GATE_MODE = "adapter"  # a choice for nodes and evaluation: the mode the adapter file was trained with
GATE_MODE_CHOICES = (FILE_GATE_MODE, *GATE_MODES)

# Parameter groups M³FT can train, and which stage may train which.
ADAPTER_GROUPS = ("adapter", "special_tokens")  # the M³Adapter; the new tokens' embedding rows
GATE_GROUP = "gate"  # the learned gate's M³FT factor a, b
VLM_GROUPS = ("projector", "llm_norms_biases", "llm_lora")  # the VLM's own weights (stage-2 deltas)
TRAINABLE_GROUPS = {
    1: ADAPTER_GROUPS,  # Eq. 6: L = L_ddpm + phi·L_align
    2: (*ADAPTER_GROUPS, GATE_GROUP, *VLM_GROUPS),  # Eq. 7: L = L_ddpm + phi·L_align + lambda·L_text
}
DEFAULT_GROUPS = {1: TRAINABLE_GROUPS[1], 2: (*ADAPTER_GROUPS, GATE_GROUP, "projector", "llm_norms_biases")}
TRAINING_STAGES = tuple(TRAINABLE_GROUPS)


class AdapterConfigError(ValueError):
    """An M³Adapter setting has a wrong type or value; `field` names it, `reason` says why."""

    def __init__(self, message: str, field: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.field, self.reason = field, reason


def check_gate_mode(gate_mode: str) -> None:
    if gate_mode not in GATE_MODES:
        raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {gate_mode!r}.")


def check_gate_value(gate_value: float) -> None:
    is_number = isinstance(gate_value, (int, float)) and not isinstance(gate_value, bool)
    if not is_number or not 0.0 <= gate_value <= 1.0:
        raise ValueError(f"gate_value must be a number in [0, 1], got {gate_value!r}.")


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class AdapterArchitecture:
    """What a fresh M³Adapter is built from, besides the VLM's sizes. chosen_layers index
    the VLM's hidden states as the encoder reads them (negative counts from the last);
    num_image_tokens is K, the <|img|> tokens the encoder appends."""

    chosen_layers: tuple[int, ...] = (-1, -8, -16)
    num_image_tokens: int = 32
    width: int = 1024
    depth: int = 2
    heads: int = 16
    ffn_multiplier: int = 4
    gate_mode: str = "paper"

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples so the config stays hashable.
        object.__setattr__(self, "chosen_layers", tuple(self.chosen_layers))
        for name in ("num_image_tokens", "width", "depth", "heads", "ffn_multiplier"):
            if not is_positive_int(getattr(self, name)):
                self._refuse(name, f"must be a positive integer, got {getattr(self, name)!r}.")
        layers = self.chosen_layers
        if not layers or any(isinstance(layer, bool) or not isinstance(layer, int) for layer in layers):
            self._refuse("chosen_layers", f"must be a non-empty list of integer layer indices, got {list(layers)!r}.")
        if len(set(layers)) != len(layers):
            self._refuse("chosen_layers", f"lists a layer twice: {list(layers)!r}.")
        if self.width % self.heads:
            self._refuse("width", f"({self.width}) must be divisible by heads ({self.heads}).")
        if self.gate_mode not in GATE_MODES:
            self._refuse("gate_mode", f"must be one of {list(GATE_MODES)}, got {self.gate_mode!r}.")

    def _refuse(self, field: str, reason: str) -> None:
        raise AdapterConfigError(f"{type(self).__name__}.{field} {reason}", field, reason)
