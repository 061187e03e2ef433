"""The adaptive gate g of the M³Adapter (Eq. 3): how much the fused feature reads the
VLM's caption/image tokens h_l (g) rather than the input image's features f_img (1 - g).

The fusion itself, f_fus = (1 - g)·CA(q, f_img) + g·CA(q, h_l), is in the adapter block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .m3ft_settings import check_gate_mode, check_gate_value

# Initial M³FT factor: sigmoid(4·cos - 2) spans about [0.12, 0.88] over cos in [0, 1],
# close to the paper's clamped cosine, so an adapter trained in stage 1 behaves alike.
INITIAL_GATE_SCALE = 4.0
INITIAL_GATE_SHIFT = -2.0


def answer_caption_cosine(answer_embedding: torch.Tensor, caption_embedding: torch.Tensor) -> torch.Tensor:
    """cos(e_ans, e_cap) per sample, (B, H) x (B, H) -> (B,), computed in float32."""
    return F.cosine_similarity(answer_embedding.float(), caption_embedding.float(), dim=-1)


def paper_gate(answer_embedding: torch.Tensor, caption_embedding: torch.Tensor) -> torch.Tensor:
    """Eq. 3: g = cos(e_ans, e_cap), clamped to [0, 1] so the mix stays convex."""
    return answer_caption_cosine(answer_embedding, caption_embedding).clamp(0.0, 1.0)


class LearnedGate(nn.Module):
    """g = sigmoid(a·cos(e_ans, e_cap) + b); a and b are the trainable "M³FT factor".

    a and b are one-element tensors, not 0-dim ones: FSDP and DeepSpeed ZeRO shard and
    flatten only tensors with a dimension. Adapter files of format 1 stored them 0-dim;
    `with_one_element_gate` reshapes those on load."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([INITIAL_GATE_SCALE]))  # a
        self.shift = nn.Parameter(torch.tensor([INITIAL_GATE_SHIFT]))  # b

    def forward(self, answer_embedding: torch.Tensor, caption_embedding: torch.Tensor) -> torch.Tensor:
        cosine = answer_caption_cosine(answer_embedding, caption_embedding)
        return torch.sigmoid(self.scale.float() * cosine + self.shift.float())


def with_one_element_gate(gate_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LearnedGate state dict with 0-dim a and b (adapter format 1) as the current (1,)."""
    return {name: tensor.reshape(1) if tensor.ndim == 0 else tensor for name, tensor in gate_state.items()}


def compute_gate(
    gate_mode: str,
    *,
    answer_embedding: torch.Tensor,
    caption_embedding: torch.Tensor,
    has_answer: torch.Tensor,
    has_image: torch.Tensor,
    learned_gate: LearnedGate,
    fixed_value: float,
) -> torch.Tensor:
    """Per-sample gate g, shape (B,), float32.

    g = 1 (pure h_l read-out) wherever a sample has no image, since there is no f_img to
    read. The cosine modes also give g = 1 where a sample has no answer, since
    cos(e_ans, e_cap) is undefined there; `fixed` mode is the user's explicit choice and
    applies to every sample that has an image.
    """
    check_gate_mode(gate_mode)
    device = caption_embedding.device
    has_answer = has_answer.to(device=device, dtype=torch.bool)
    has_image = has_image.to(device=device, dtype=torch.bool)
    if gate_mode == "paper":
        gate = paper_gate(answer_embedding, caption_embedding)
        text_only = ~has_image | ~has_answer
    elif gate_mode == "learned":
        gate = learned_gate(answer_embedding, caption_embedding)
        text_only = ~has_image | ~has_answer
    else:
        check_gate_value(fixed_value)
        gate = torch.full(has_image.shape, float(fixed_value), device=device)
        text_only = ~has_image
    return torch.where(text_only, torch.ones_like(gate), gate)
