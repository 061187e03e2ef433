"""The M³Adapter: VLM caption/image hidden states (+ input-image features) -> SDXL
conditioning, a (B, 77, 2048) context and a (B, 1280) pooled vector.

  h_l   = softmax-weighted mix of the chosen VLM layers, each normed and projected
  f_img = vision-tower features, normed and projected
  77 learned queries, `depth` blocks of:
      self-attention over the queries
      f_fus = (1 - g)·CA(q, f_img) + g·CA(q, h_l)          (Eq. 3, gate g from gate.py)
      feed-forward
  context = Linear(norm(q)) -> 2048;  pooled = Linear(attention-pool(norm(q))) -> 1280
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .conditioning import SDXL_CONTEXT_DIM, SDXL_CONTEXT_TOKENS, SDXL_POOLED_DIM
from .encoding import VLMFeatures
from .gate import LearnedGate, compute_gate
from .m3ft_settings import (
    GATE_GROUP,
    TRAINABLE_GROUPS,
    TRAINING_STAGES,
    AdapterArchitecture,
    AdapterConfigError,
    check_gate_value,
    is_positive_int,
)
from .special_tokens import SPECIAL_TOKENS

# Bump when the config or the module's state dict changes meaning.
# 2: the learned gate's a and b are (1,) instead of 0-dim (format 1 files are reshaped on load).
ADAPTER_FORMAT_VERSION = 2


class AdapterInputError(ValueError):
    """VLM features that do not fit the adapter's config."""


@dataclass(frozen=True)
class M3AdapterConfig(AdapterArchitecture):
    """Everything needed to rebuild an M³Adapter (its architecture plus the VLM's sizes
    and what the file records); stored as JSON in the adapter file."""

    vlm_hidden_size: int = field(kw_only=True)
    vision_feature_size: int = field(kw_only=True)
    gate_value: float = 0.5  # used by `fixed` mode when the caller gives no value
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    trained_on_vlm: str = ""  # name or description of the VLM the adapter was trained on
    format_version: int = ADAPTER_FORMAT_VERSION

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "special_tokens", tuple(self.special_tokens))
        for name in ("vlm_hidden_size", "vision_feature_size"):
            if not is_positive_int(getattr(self, name)):
                self._refuse(name, f"must be a positive integer, got {getattr(self, name)!r}.")
        try:
            check_gate_value(self.gate_value)
        except ValueError as error:
            self._refuse("gate_value", str(error).removeprefix("gate_value "))
        if (
            not self.special_tokens
            or any(not isinstance(token, str) or not token for token in self.special_tokens)
            or len(set(self.special_tokens)) != len(self.special_tokens)
        ):
            self._refuse("special_tokens", f"must be distinct non-empty strings, got {self.special_tokens!r}.")
        if not isinstance(self.trained_on_vlm, str):
            self._refuse("trained_on_vlm", f"must be a string, got {self.trained_on_vlm!r}.")
        if (
            isinstance(self.format_version, bool)
            or not isinstance(self.format_version, int)
            or not 1 <= self.format_version <= ADAPTER_FORMAT_VERSION
        ):
            self._refuse(
                "format_version",
                f"must be an integer from 1 to {ADAPTER_FORMAT_VERSION}, got {self.format_version!r}; "
                "a newer version needs a newer comfyui-m2chat.",
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        as_dict = asdict(self)
        as_dict["chosen_layers"] = list(self.chosen_layers)
        as_dict["special_tokens"] = list(self.special_tokens)
        return as_dict

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> M3AdapterConfig:
        """Inverse of to_dict; every field must be present and no other key."""
        names = {item.name for item in fields(cls)}
        missing = sorted(names - set(values))
        unknown = sorted(set(values) - names)
        if missing or unknown:
            raise AdapterConfigError(
                f"M3AdapterConfig dict is missing fields {missing} and has unknown fields {unknown}; "
                "it was written by another version of comfyui-m2chat."
            )
        return cls(**values)


@dataclass(frozen=True)
class M3AdapterOutput:
    """context: (B, 77, 2048); pooled: (B, 1280); gate: (B,) float32, the g each sample used."""

    context: torch.Tensor
    pooled: torch.Tensor
    gate: torch.Tensor


class MultiHeadAttention(nn.Module):
    """softmax(Q·K^T/sqrt d)·V with Q from `queries`, K and V from `context`."""

    def __init__(self, width: int, heads: int, operations: Any = nn) -> None:
        super().__init__()
        self.heads = heads
        self.to_query = operations.Linear(width, width)
        self.to_key = operations.Linear(width, width)
        self.to_value = operations.Linear(width, width)
        self.to_out = operations.Linear(width, width)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """queries (B, N, W), context (B, S, W), context_mask (B, S) bool, True = attend."""
        query, key, value = (
            rearrange(projection(source), "b n (h d) -> b h n d", h=self.heads)
            for projection, source in (
                (self.to_query, queries),
                (self.to_key, context),
                (self.to_value, context),
            )
        )
        attention_mask = None if context_mask is None else context_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        return self.to_out(rearrange(attended, "b h n d -> b n (h d)"))


class GatedFusionBlock(nn.Module):
    """Pre-norm residual block: self-attention, gated dual cross-attention (Eq. 3), FFN."""

    def __init__(self, width: int, heads: int, ffn_multiplier: int, operations: Any = nn) -> None:
        super().__init__()
        self.self_attention_norm = operations.LayerNorm(width)
        self.self_attention = MultiHeadAttention(width, heads, operations)
        self.fusion_norm = operations.LayerNorm(width)
        self.caption_context_norm = operations.LayerNorm(width)
        self.caption_attention = MultiHeadAttention(width, heads, operations)  # CA(q, h_l)
        self.image_context_norm = operations.LayerNorm(width)
        self.image_attention = MultiHeadAttention(width, heads, operations)  # CA(q, f_img)
        self.ffn_norm = operations.LayerNorm(width)
        self.ffn = nn.Sequential(
            operations.Linear(width, ffn_multiplier * width),
            nn.GELU(),
            operations.Linear(ffn_multiplier * width, width),
        )

    def forward(
        self,
        queries: torch.Tensor,
        caption_tokens: torch.Tensor,
        caption_mask: torch.Tensor,
        image_tokens: torch.Tensor | None,
        image_mask: torch.Tensor | None,
        gate: torch.Tensor,
    ) -> torch.Tensor:
        normed = self.self_attention_norm(queries)
        queries = queries + self.self_attention(normed, normed)

        normed = self.fusion_norm(queries)
        gate = gate.to(queries.dtype)[:, None, None]
        caption_tokens = self.caption_context_norm(caption_tokens)
        fused = gate * self.caption_attention(normed, caption_tokens, caption_mask)
        if image_tokens is not None:  # without an image, g = 1 and f_fus is the h_l read-out
            image_tokens = self.image_context_norm(image_tokens)
            fused = fused + (1 - gate) * self.image_attention(normed, image_tokens, image_mask)
        queries = queries + fused

        return queries + self.ffn(self.ffn_norm(queries))


class MultiLevelMix(nn.Module):
    """h_l: each chosen VLM layer normed and projected to the adapter width, then mixed
    with learned softmax weights (uniform at initialisation)."""

    def __init__(self, num_layers: int, vlm_hidden_size: int, width: int, operations: Any = nn) -> None:
        super().__init__()
        self.layer_projections = nn.ModuleList(
            nn.Sequential(operations.LayerNorm(vlm_hidden_size), operations.Linear(vlm_hidden_size, width))
            for _ in range(num_layers)
        )
        self.mix_logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, T, H_vlm) -> (B, T, W)."""
        weights = torch.softmax(self.mix_logits, dim=0)
        projected = torch.stack(
            [projection(hidden_states[:, index]) for index, projection in enumerate(self.layer_projections)],
            dim=1,
        )
        return torch.einsum("l,bltw->btw", weights.to(projected.dtype), projected)


class M3Adapter(nn.Module):
    """M³Adapter; also holds the gate's M³FT factor and the embeddings of the special
    tokens (rows in config.special_tokens order) so the user's VLM folder stays stock."""

    def __init__(self, config: M3AdapterConfig, operations: Any = nn) -> None:
        """`operations`: where the Linear and LayerNorm layers come from, torch.nn by default;
        the nodes pass ComfyUI's `comfy.ops` layers, which its model management can cast and
        stream in low-VRAM mode (same parameters, same state-dict keys)."""
        super().__init__()
        self.config = config
        width = config.width
        self.multi_level_mix = MultiLevelMix(len(config.chosen_layers), config.vlm_hidden_size, width, operations)
        self.image_projection = nn.Sequential(
            operations.LayerNorm(config.vision_feature_size), operations.Linear(config.vision_feature_size, width)
        )
        self.queries = nn.Parameter(torch.randn(SDXL_CONTEXT_TOKENS, width) * 0.02)
        self.blocks = nn.ModuleList(
            GatedFusionBlock(width, config.heads, config.ffn_multiplier, operations) for _ in range(config.depth)
        )
        self.output_norm = operations.LayerNorm(width)
        self.context_projection = operations.Linear(width, SDXL_CONTEXT_DIM)
        self.pool_query = nn.Parameter(torch.randn(1, width) * 0.02)
        self.pool_attention = MultiHeadAttention(width, config.heads, operations)
        self.pooled_norm = operations.LayerNorm(width)
        self.pooled_projection = operations.Linear(width, SDXL_POOLED_DIM)
        self.learned_gate = LearnedGate()
        # Small random rows like a fresh LLM vocabulary entry; training may re-initialise
        # them from the VLM's own embedding statistics.
        self.special_token_embeddings = nn.Parameter(
            torch.randn(len(config.special_tokens), config.vlm_hidden_size) * 0.02
        )

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def forward(
        self, features: VLMFeatures, gate_mode: str | None = None, gate_value: float | None = None
    ) -> M3AdapterOutput:
        """gate_mode and gate_value override the config's for this call."""
        self._check_features(features)
        device, dtype = self.queries.device, self.queries.dtype
        batch_size = features.caption_hidden_states.shape[0]

        caption_tokens = self.multi_level_mix(features.caption_hidden_states.to(device, dtype))  # h_l
        caption_mask = features.caption_mask.to(device=device, dtype=torch.bool)

        image_tokens = image_mask = None
        has_image = torch.zeros(batch_size, dtype=torch.bool, device=device)
        if features.image_features is not None:
            image_tokens = self.image_projection(features.image_features.to(device, dtype))  # f_img
            image_mask = (
                torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=device)
                if features.image_mask is None
                else features.image_mask.to(device=device, dtype=torch.bool)
            )
            has_image = image_mask.any(dim=1)
            # Rows without any image get g = 1; let them attend everywhere so the unused
            # read-out stays finite: some torch versions and GPU attention kernels return
            # NaN for a softmax over no key, and 0·NaN would poison the output.
            image_mask = image_mask | ~has_image[:, None]

        gate = compute_gate(
            self.config.gate_mode if gate_mode is None else gate_mode,
            answer_embedding=features.answer_embedding.to(device),
            caption_embedding=features.caption_embedding.to(device),
            has_answer=features.has_answer,
            has_image=has_image,
            learned_gate=self.learned_gate,
            fixed_value=self.config.gate_value if gate_value is None else gate_value,
        )

        queries = self.queries.expand(batch_size, -1, -1)
        for block in self.blocks:
            queries = block(queries, caption_tokens, caption_mask, image_tokens, image_mask, gate)

        tokens = self.output_norm(queries)
        context = self.context_projection(tokens)
        pooled_token = self.pool_attention(self.pool_query.expand(batch_size, -1, -1), tokens)
        pooled = self.pooled_projection(self.pooled_norm(pooled_token[:, 0]))
        return M3AdapterOutput(context=context, pooled=pooled, gate=gate)

    def _check_features(self, features: VLMFeatures) -> None:
        config = self.config
        trained_on = config.trained_on_vlm or "the VLM it was trained on"
        hidden_states = features.caption_hidden_states
        expected = (len(config.chosen_layers), config.vlm_hidden_size)
        if hidden_states.ndim != 4 or (hidden_states.shape[1], hidden_states.shape[3]) != expected:
            raise AdapterInputError(
                f"caption_hidden_states must be (B, {expected[0]} chosen layers, T, {expected[1]}), "
                f"got {tuple(hidden_states.shape)}; encode with {trained_on} and chosen_layers "
                f"{list(config.chosen_layers)} from the adapter config."
            )
        batch_size, _, tokens, _ = hidden_states.shape
        expected_shapes = {
            "caption_mask": (batch_size, tokens),
            "answer_embedding": (batch_size, config.vlm_hidden_size),
            "caption_embedding": (batch_size, config.vlm_hidden_size),
            "has_answer": (batch_size,),
        }
        for name, shape in expected_shapes.items():
            actual = tuple(getattr(features, name).shape)
            if actual != shape:
                raise AdapterInputError(f"VLMFeatures.{name} must be shaped {shape}, got {actual}.")
        if not bool(features.caption_mask.any(dim=1).all()):
            raise AdapterInputError(
                "a sample has no caption or <|img|> tokens (its caption_mask row is all False); "
                "the encoder must append the image tokens to every prompt."
            )
        image_features = features.image_features
        if image_features is None:
            return
        expected_image = (batch_size, config.vision_feature_size)
        if image_features.ndim != 3 or (image_features.shape[0], image_features.shape[2]) != expected_image:
            raise AdapterInputError(
                f"image_features must be (B={batch_size}, P, {config.vision_feature_size}), got "
                f"{tuple(image_features.shape)}; the adapter expects the vision tower of {trained_on}."
            )
        image_mask = features.image_mask
        if image_mask is not None and tuple(image_mask.shape) != tuple(image_features.shape[:2]):
            raise AdapterInputError(
                f"VLMFeatures.image_mask must be shaped {tuple(image_features.shape[:2])}, "
                f"got {tuple(image_mask.shape)}."
            )


def trainable_parameter_groups(adapter: M3Adapter, stage: int) -> dict[str, dict[str, nn.Parameter]]:
    """The adapter's parameters M³FT may train in `stage` (m3ft_settings.TRAINABLE_GROUPS),
    by group, each {qualified name: parameter}: "adapter", "special_tokens" and, in stage 2,
    "gate" (the learned M³FT factor a, b). The VLM's own groups are chosen by the trainer."""
    if stage not in TRAINING_STAGES:
        raise ValueError(f"stage must be one of {TRAINING_STAGES}, got {stage!r}.")
    groups: dict[str, dict[str, nn.Parameter]] = {"adapter": {}, "special_tokens": {}, GATE_GROUP: {}}
    for name, parameter in adapter.named_parameters():
        if name == "special_token_embeddings":
            groups["special_tokens"][name] = parameter
        elif name.startswith("learned_gate."):
            groups[GATE_GROUP][name] = parameter
        else:
            groups["adapter"][name] = parameter
    return {group: parameters for group, parameters in groups.items() if group in TRAINABLE_GROUPS[stage]}
