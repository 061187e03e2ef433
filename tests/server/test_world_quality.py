"""The shipped world models follow prompts, measured as a user runs them: native graphs
queued on ComfyUI's HTTP server, 32 held-out (colour, shape) prompts (and 32 held-out
edits for the adapter; 16 of each for the rows at chance), the pictures read by the shipped judge.

Issue 15's object targets (TARGETS in scripts/world_graphs.py: colour and shape >= 0.90,
position >= 0.80) are not reached yet, and bench/bench_world.py reports them as missed
(README, "Shapes world"). These tests guard what the shipped UNet does follow: the
caption's background always, and its objects far above chance, from the caption or from
the world VLM's caption of the request (floors well under the
bench's 64-prompt figures, so a seed's luck cannot fail them); a graph that lost the
caption's conditioning (zero conditioning) falls to chance, which they tell apart.

The KSampler runs 10 steps here, not the tables' 20 (half of this file's drawing time);
the bench's figures quoted below say at how many steps they were drawn
(`bench/bench_world.py --steps 10` or `--steps 20`, 64 cases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from world_graphs import (Sampling, dialogue_cases, dialogue_inter_rel, edit_cases, graph_for, measure,
                          prompt_cases, run_graphs, saved)

from train.evaluate.clip_model import load_local_clip
from train.world.layout import SHIPPED
from train.world.training import load_judge

PROMPTS, DIALOGUES = 32, 8
SAMPLING = Sampling(steps=10)  # the tables' protocol at half the steps
# The rows expected at chance (zero conditioning, the gate fixed at 0) on the first 16: their
# ceilings (at most 0.7 background, 0.25 colour and shape) are far above chance (1/3, 1/48)
# and far below a row that follows the prompts, at 16 cases as at 32.
AT_CHANCE = 16


@pytest.fixture(scope="module")
def figures(comfy_server):
    judge, prompts = load_judge(SHIPPED.judge), prompt_cases(PROMPTS)
    followed = {row: measure(comfy_server, judge, row, prompts, sampling=SAMPLING)
                for row in ("caption", "fallback", "m2chat")}
    return {**followed, "zero": measure(comfy_server, judge, "zero", prompts[:AT_CHANCE], sampling=SAMPLING)}


@pytest.fixture(scope="module")
def edit_figures(comfy_server):
    judge, edits = load_judge(SHIPPED.judge), edit_cases(PROMPTS)
    return {"m2chat": measure(comfy_server, judge, "m2chat", edits, sampling=SAMPLING),
            "m2chat_gate0": measure(comfy_server, judge, "m2chat_gate0", edits[:AT_CHANCE], sampling=SAMPLING)}


def test_pictures_follow_the_captions_background(figures):
    assert figures["caption"]["background"] >= 0.9, figures


def test_pictures_follow_the_captions_objects(figures):
    # Bench, 64 prompts at 20 steps: colour and shape 0.86, position 0.94, shape 0.92; zero conditioning
    # 0.01, 0.08, 0.03 (these 32 prompts at 10 steps, through the UNet shipped before: 0.58, 0.84, 0.80).
    assert figures["caption"]["colour_and_shape"] >= 0.45, figures
    assert figures["caption"]["position"] >= 0.65, figures
    assert figures["caption"]["shape"] >= 0.75, figures


def test_the_vlms_caption_of_the_request_is_followed_too(figures):
    """The CLIP fallback (M2ChatEncode: the world VLM answers the request, its caption goes
    through the world's text encoders). Bench: the VLM copies the request's attributes into its
    caption, so this row equals the caption row (64 prompts at 20 steps: 0.86, 0.94)."""
    assert figures["fallback"]["colour_and_shape"] >= 0.45, figures
    assert figures["fallback"]["position"] >= 0.65, figures


def test_zero_conditioning_draws_no_particular_background_or_object(figures):
    assert figures["zero"]["background"] <= 0.7, figures  # chance: 1/3
    assert figures["zero"]["colour_and_shape"] <= 0.25, figures


def test_the_shipped_adapter_follows_requests(figures):
    """M²Chat (issue 16's row (e)): M2ChatEncode with the shipped M³Adapter, the VLM's hidden
    states as the conditioning. Bench, 64 prompts at 20 steps (the report's protocol): colour
    and shape 0.85, position 0.91, all 0.69 (the ground-truth caption's all: 0.75); these 32
    prompts at 10 steps: 0.75, 0.88, 0.56."""
    assert figures["m2chat"]["colour_and_shape"] >= 0.4, figures
    assert figures["m2chat"]["position"] >= 0.55, figures
    assert figures["m2chat"]["all"] >= 0.25, figures


def test_the_shipped_adapter_edits_a_picture_through_its_gate(edit_figures):
    """Editing (a picture and an instruction): the adapter keeps the picture's background
    and places the object far above chance (bench, these 32 edits at 10 steps: background
    1.00, position 0.91; 64 edits at 20 steps: 1.00, 0.77); with the gate fixed at 0 (image
    features alone) the pictures fall to chance, so the gate's VLM side is what carries the edit."""
    assert edit_figures["m2chat"]["background"] >= 0.9, edit_figures
    assert edit_figures["m2chat"]["position"] >= 0.5, edit_figures
    assert edit_figures["m2chat_gate0"]["background"] <= 0.7, edit_figures  # chance: 1/3


def test_interrel_scores_each_dialogue_against_its_own_conversation(comfy_server):
    """InterRel (Eq. 8) with the shipped world CLIP, on every turn's caption and picture of
    M²Chat's dialogues: against the scenes of the conversation that was held it is higher
    than against another conversation's (the references shifted by one dialogue)."""
    clip, dialogues = load_local_clip(SHIPPED.clip, torch.device("cpu")), dialogue_cases(DIALOGUES)
    drawn = run_graphs(comfy_server, [SAMPLING.applied(graph_for("m2chat", case, seed, None))
                                      for seed, case in enumerate(dialogues)])
    own = dialogue_inter_rel(comfy_server, clip, dialogues, drawn)
    other = dialogue_inter_rel(comfy_server, clip, dialogues[1:] + dialogues[:1], drawn)
    # Bench, 64 dialogues at 20 steps: 0.82; the references against each other: 0.02.
    assert own > other + 0.3, (own, other)


def test_a_common_negative_replaces_each_rows_own(comfy_server):
    """bench_world's --negative: the caption row drawn against the empty caption is the
    row as it is (that is its own negative: the same pixels), against the all-zero negative
    (the M2Chat rows' own) it draws other pictures; an M2Chat row against the empty caption
    draws other pictures than against its own all-zero negative. --cfg: another guidance
    draws other pictures (in a dialogue, at every turn's KSampler)."""
    cases = prompt_cases(2)

    def pictures(row: str, negative: str, cfg: float = Sampling.cfg) -> np.ndarray:
        sampling = Sampling(steps=2, negative=negative, cfg=cfg)
        drawn = run_graphs(comfy_server, [sampling.applied(graph_for(row, case, seed, None))
                                          for seed, case in enumerate(cases)])
        return np.stack([np.asarray(Image.open(saved(comfy_server, outputs)[0]).convert("RGB")) for outputs in drawn])

    def differ(one: np.ndarray, other: np.ndarray) -> list[bool]:
        return [bool((a != b).any()) for a, b in zip(one, other, strict=True)]

    caption = pictures("caption", "row")
    assert differ(pictures("caption", "empty"), caption) == [False, False]
    assert differ(pictures("caption", "zero"), caption) == [True, True]
    assert differ(pictures("m2chat", "empty"), pictures("m2chat", "row")) == [True, True]
    assert differ(pictures("caption", "row", cfg=Sampling.cfg / 2), caption) == [True, True]
    dialogue = Sampling(cfg=Sampling.cfg / 2).applied(graph_for("m2chat", dialogue_cases(1)[0], 0, None))
    samplers = [node["inputs"] for node in dialogue.values() if node["class_type"] == "KSampler"]
    assert len(samplers) == 3 and all(inputs["cfg"] == Sampling.cfg / 2 for inputs in samplers)
