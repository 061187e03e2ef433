"""M³FT losses against hand computation (Eq. 2, 5, 6, 7)."""

import math

import pytest
import torch

from m2chat_core.losses import alignment_loss, diffusion_loss, stage1_loss, stage2_loss, text_loss


def test_alignment_loss_is_pooled_mse_plus_mean_token_mse():
    predicted_context = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])  # (1, 3 tokens, 2)
    target_context = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [3.0, 0.0]]])
    predicted_pooled = torch.tensor([[2.0, 0.0]])
    target_pooled = torch.tensor([[0.0, 0.0]])
    # pooled: (4 + 0) / 2 = 2; tokens: (0+4)/2 = 2, (1+1)/2 = 1, (0+9)/2 = 4.5, mean = 7.5 / 3 = 2.5
    loss = alignment_loss(predicted_context, predicted_pooled, target_context, target_pooled)
    assert loss.item() == pytest.approx(4.5)


def test_alignment_loss_refuses_broadcasting():
    context = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="same shape"):
        alignment_loss(context, torch.zeros(2, 5), context, torch.zeros(2, 1, 5))


def test_diffusion_loss_is_noise_mse():
    predicted = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    noise = torch.tensor([[0.0, 1.0], [0.5, 2.0]])
    assert diffusion_loss(predicted, noise).item() == pytest.approx((1 + 4 + 0 + 4) / 4)


def test_diffusion_loss_is_float32_for_half_inputs():
    loss = diffusion_loss(torch.ones(2, 2, dtype=torch.bfloat16), torch.zeros(2, 2, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32


def _cross_entropy(logit_row, label):
    return -(logit_row[label] - torch.logsumexp(logit_row, dim=0)).item()


def test_text_loss_shifts_and_skips_ignored_labels():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[-100, 3, -100, 1]])  # positions 1 and 3 count
    expected = (_cross_entropy(logits[0, 0], 3) + _cross_entropy(logits[0, 2], 1)) / 2
    assert text_loss(logits, labels).item() == pytest.approx(expected, abs=1e-5)


def test_text_loss_mask_restricts_to_answer_and_caption_tokens():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4)
    labels = torch.tensor([[0, 1, 2], [3, 0, 1]])
    mask = torch.tensor([[False, False, True], [False, True, False]])
    expected = (_cross_entropy(logits[0, 1], 2) + _cross_entropy(logits[1, 0], 0)) / 2
    assert text_loss(logits, labels, mask).item() == pytest.approx(expected, abs=1e-5)


def test_text_loss_token_weights_scale_each_target_ids_term():
    torch.manual_seed(2)
    logits = torch.randn(1, 4, 6)  # token_weights shorter than the vocabulary: ids 4 and 5 weigh 1
    labels = torch.tensor([[-100, 3, 5, 3]])
    terms = [_cross_entropy(logits[0, 0], 3), _cross_entropy(logits[0, 1], 5), _cross_entropy(logits[0, 2], 3)]
    weights = torch.tensor([1.0, 1.0, 1.0, 4.0])
    expected = (4 * terms[0] + terms[1] + 4 * terms[2]) / 3
    assert text_loss(logits, labels, token_weights=weights).item() == pytest.approx(expected, abs=1e-5)
    assert text_loss(logits, labels, token_weights=torch.ones(4)).item() == pytest.approx(sum(terms) / 3, abs=1e-5)


def test_text_loss_without_counted_tokens_is_zero_and_differentiable():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    loss = text_loss(logits, torch.full((1, 3), -100))
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_stage_losses_weight_terms_and_report_them():
    ddpm, align, text = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)
    stage1 = stage1_loss(ddpm, align)
    assert stage1.total.item() == 3.0
    assert stage1_loss(ddpm, align, phi=0.5).total.item() == 2.0
    assert set(stage1.terms) == {"ddpm", "align"}
    stage2 = stage2_loss(ddpm, align, text, phi=0.5, lambda_text=0.25)
    assert stage2.total.item() == 1.0 + 1.0 + 1.0
    assert stage2_loss(ddpm, align, text).total.item() == 7.0
    assert stage1_loss(ddpm, align, ddpm_weight=0.0).total.item() == 2.0  # the L_align-only ablation
    assert stage2_loss(ddpm, align, text, ddpm_weight=0.0).total.item() == 6.0
    terms = {name: value.item() for name, value in stage2.terms.items()}
    assert terms == {"ddpm": 1.0, "align": 2.0, "text": 4.0}


def test_stage_loss_total_backpropagates_and_terms_are_detached():
    prediction = torch.tensor([1.0, 2.0], requires_grad=True)
    ddpm = diffusion_loss(prediction, torch.zeros(2))
    breakdown = stage1_loss(ddpm, ddpm * 2)
    assert not breakdown.terms["ddpm"].requires_grad
    breakdown.total.backward()
    # d/dx of 3 * mean(x^2) = 3 * x
    assert torch.allclose(prediction.grad, torch.tensor([3.0, 6.0]))
