"""M³FT losses as pure functions (Eq. 2, 5, 6, 7), computed in float32."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of tokens the text loss skips (Hugging Face convention)


@dataclass(frozen=True)
class LossBreakdown:
    """total: the scalar to backpropagate; terms: each unweighted term, detached, for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def _check_same_shape(name: str, prediction: torch.Tensor, target: torch.Tensor) -> None:
    # Refuse silent broadcasting, e.g. (B, 1280) against (B, 1, 1280).
    if prediction.shape != target.shape:
        raise ValueError(
            f"{name}: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have "
            "the same shape."
        )


def alignment_loss(
    predicted_context: torch.Tensor,
    predicted_pooled: torch.Tensor,
    target_context: torch.Tensor,
    target_pooled: torch.Tensor,
) -> torch.Tensor:
    """Eq. 2: L_align = MSE(h_palign, e_pclip) + 1/77 sum_k MSE(h_align^(k), e_clip^(k)).

    Contexts are (B, 77, 2048), pooled (B, 1280); the targets come from SDXL's own text
    encoders. Each token's MSE averages its 2048 channels, so the token term equals the
    mean over all elements.
    """
    _check_same_shape("alignment_loss context", predicted_context, target_context)
    _check_same_shape("alignment_loss pooled", predicted_pooled, target_pooled)
    pooled_term = F.mse_loss(predicted_pooled.float(), target_pooled.float())
    per_token = (predicted_context.float() - target_context.float()).pow(2).mean(dim=-1)  # (B, 77)
    return pooled_term + per_token.mean()


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 5: L_ddpm = E||eps - eps_theta(x_t, t, h_align, h_palign)||², the UNet's prediction MSE
    (the target is eps, or v for a v-prediction UNet: train/objective.py's unet_target)."""
    _check_same_shape("diffusion_loss", prediction, target)
    return F.mse_loss(prediction.float(), target.float())


def text_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_text: next-token cross-entropy on the answer and caption tokens only.

    logits (B, S, V) and labels (B, S) are aligned with the input ids as in Hugging Face
    (the one-token shift happens here). A token counts where its label is not -100 and,
    when given, loss_mask (B, S) is True. token_weights (W,), when given, multiplies each
    counted token's cross-entropy by the weight of its target id (ids >= W weigh 1); the sum
    is still divided by the number of counted tokens. Returns 0 (still in the graph) when
    no token counts.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"text_loss expects logits (B, S, V) and labels (B, S), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    counted = labels != IGNORE_INDEX
    if loss_mask is not None:
        if loss_mask.shape != labels.shape:
            raise ValueError(
                f"text_loss: loss_mask {tuple(loss_mask.shape)} must match labels {tuple(labels.shape)}."
            )
        counted = counted & loss_mask.to(torch.bool)
    # Logits at position i predict the token at i + 1.
    predicted = counted[:, 1:]
    if not bool(predicted.any()):
        return logits.sum().float() * 0.0
    targets = labels[:, 1:][predicted]
    if token_weights is None:
        return F.cross_entropy(logits[:, :-1][predicted].float(), targets)
    losses = F.cross_entropy(logits[:, :-1][predicted].float(), targets, reduction="none")
    weights = F.pad(token_weights, (0, logits.shape[-1] - len(token_weights)), value=1.0).to(losses.device)
    return (losses * weights[targets]).mean()


def stage1_loss(ddpm: torch.Tensor, align: torch.Tensor, phi: float = 1.0, ddpm_weight: float = 1.0) -> LossBreakdown:
    """Eq. 6: L = L_ddpm + phi·L_align (ddpm_weight 0: the L_align-only ablation)."""
    return LossBreakdown(
        total=ddpm_weight * ddpm + phi * align,
        terms={"ddpm": ddpm.detach(), "align": align.detach()},
    )


def stage2_loss(
    ddpm: torch.Tensor, align: torch.Tensor, text: torch.Tensor, phi: float = 1.0, lambda_text: float = 1.0,
    ddpm_weight: float = 1.0,
) -> LossBreakdown:
    """Eq. 7: L = L_ddpm + phi·L_align + lambda·L_text (lambda is the config's lambda_text;
    ddpm_weight 0: an ablation without L_ddpm)."""
    return LossBreakdown(
        total=ddpm_weight * ddpm + phi * align + lambda_text * text,
        terms={"ddpm": ddpm.detach(), "align": align.detach(), "text": text.detach()},
    )
