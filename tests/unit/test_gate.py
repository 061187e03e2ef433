"""The adaptive gate g (Eq. 3) and its modes."""

import math

import pytest
import torch

from m2chat_core.gate import LearnedGate, answer_caption_cosine, compute_gate, paper_gate

ANSWER = torch.tensor([[1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ([0.0, 2.0, 0.0], 0.0),  # orthogonal
        ([3.0, 0.0, 0.0], 1.0),  # parallel, any length
        ([-1.0, 0.0, 0.0], 0.0),  # opposite: cos = -1, clamped to 0
        ([0.5, math.sqrt(3) / 2, 0.0], 0.5),  # 60 degrees
    ],
)
def test_paper_gate_is_clamped_cosine(caption, expected):
    gate = paper_gate(ANSWER, torch.tensor([caption]))
    assert gate.shape == (1,)
    assert gate.item() == pytest.approx(expected, abs=1e-6)


def test_cosine_is_per_sample():
    answers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    cosine = answer_caption_cosine(answers, captions)
    assert torch.allclose(cosine, torch.tensor([1 / math.sqrt(2), -1.0]))


def test_learned_gate_is_sigmoid_of_affine_cosine_and_trains_a_and_b():
    gate_module = LearnedGate()
    with torch.no_grad():
        gate_module.scale.fill_(3.0)
        gate_module.shift.fill_(-1.0)
    caption = torch.tensor([[0.5, math.sqrt(3) / 2, 0.0]])  # cos = 0.5
    gate = gate_module(ANSWER, caption)
    assert gate.item() == pytest.approx(1 / (1 + math.exp(-(3.0 * 0.5 - 1.0))), abs=1e-6)
    gate.sum().backward()
    assert gate_module.scale.grad is not None and gate_module.scale.grad.item() != 0.0
    assert gate_module.shift.grad is not None and gate_module.shift.grad.item() != 0.0


def _gate(mode, has_answer, has_image, fixed_value=0.3):
    answers = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    captions = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # cos = 1/sqrt(2)
    return compute_gate(
        mode,
        answer_embedding=answers,
        caption_embedding=captions,
        has_answer=torch.tensor(has_answer),
        has_image=torch.tensor(has_image),
        learned_gate=LearnedGate(),
        fixed_value=fixed_value,
    )


def test_each_mode_with_answer_and_image():
    cosine = 1 / math.sqrt(2)
    both = ([True, True], [True, True])
    assert torch.allclose(_gate("paper", *both), torch.full((2,), cosine))
    learned = torch.sigmoid(torch.tensor(4.0 * cosine - 2.0))  # initial a = 4, b = -2
    assert torch.allclose(_gate("learned", *both), learned.expand(2))
    assert torch.allclose(_gate("fixed", *both, fixed_value=0.3), torch.full((2,), 0.3))


@pytest.mark.parametrize("mode", ["paper", "learned", "fixed"])
def test_gate_is_one_without_image(mode):
    gate = _gate(mode, [True, True], [False, True])
    assert gate[0].item() == 1.0
    assert gate[1].item() < 1.0


@pytest.mark.parametrize("mode", ["paper", "learned"])
def test_cosine_modes_give_one_without_answer(mode):
    gate = _gate(mode, [False, True], [True, True])
    assert gate[0].item() == 1.0
    assert gate[1].item() < 1.0


def test_fixed_mode_applies_without_answer():
    assert torch.equal(_gate("fixed", [False, False], [True, True], 0.25), torch.full((2,), 0.25))


def test_bad_mode_and_value_are_refused():
    with pytest.raises(ValueError, match="gate_mode"):
        _gate("cosine", [True, True], [True, True])
    with pytest.raises(ValueError, match="gate_value"):
        _gate("fixed", [True, True], [True, True], fixed_value=1.5)
