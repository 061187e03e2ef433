"""Pretraining the world's VLM with loop.py: the first `vision_steps` steps pretrain the
vision tower alone (vision_pretraining.py), which then stays frozen; every later step
teacher-forces a batch of world turns through m2chat_core's own Eq. 1 sequences
(prompt · answer · <|IC|> · caption · <|img|>) and learns L_text on the answer and
caption, including when to emit <|IC|> and <|img|>; evaluations generate through the
pack's encoder (vlm_measure.py). At the end the weights are written as a Hugging Face
folder, RUN_FOLDER/m2chat-world-vlm/."""

from __future__ import annotations

import copy
import json
import math
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from m2chat_core.losses import IGNORE_INDEX, text_loss
from m2chat_core.teacher_forcing import TeacherForcedOutput, forced_turn, prepare_batch, teacher_force
from m2chat_core.vlm import LoadedVLM, load_vlm

from .config import VlmConfig
from .layout import VLM_NAME
from .files import atomic_path
from .loop import train
from .vision_pretraining import VisionHeads, test_scenes, training_scenes, vision_accuracy, vision_loss
from .vlm_data import WorldTurn, training_turn
from .vlm_measure import measure_vlm, measurement_turns
from .vlm_model import MAX_CONTEXT, build_world_vlm, marker_rows

logger = logging.getLogger(__name__)

FIGURES_FILE = "figures.json"
MAX_TEXT_TOKENS = 64  # an answer or a caption; the world's longest caption has about 30
LENGTH_GROUPS = 2  # forwards per step
SAVED_DTYPE = torch.bfloat16  # half the size of float32; the figures are measured on the saved folder


def _text_length(sample: WorldTurn) -> int:
    """About how long the turn's sequence is: its text, and 9 tokens per picture."""
    turns = (*sample.history, sample.turn)
    return sum(len(t.user_text) + len(t.answer) + len(t.caption) + 40 * len(t.images) for t in turns)


class VlmTask:
    def __init__(self, config: VlmConfig) -> None:
        self.config = config
        self.vlm = build_world_vlm(config)
        torch.manual_seed(config.seed)
        self.vision_heads = VisionHeads(config.vision_width)  # used in the vision phase only, not saved
        self.model = nn.ModuleDict({"vlm": self.vlm.model, "vision_heads": self.vision_heads})
        self.measurement = measurement_turns(config.seed, config.eval_images)
        self.vision_measurement = test_scenes(config.seed, config.eval_images)

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if step < self.config.vision_steps:
            scenes = training_scenes(self.config.seed, step, self.config.vision_batch_size)
            return vision_loss(self.vlm, self.vision_heads, scenes), {}
        self.vlm.model.model.vision_tower.requires_grad_(False)  # frozen, as LLaVA-1.5 keeps CLIP
        return self._text_loss(step)

    def _text_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """L_text over the batch, fed as LENGTH_GROUPS forwards of turns of similar length
        (less padding; the same loss: every counted token weighs the same)."""
        samples = sorted((training_turn(self.config.seed, step, index) for index in range(self.config.batch_size)),
                         key=_text_length)
        group_size = math.ceil(len(samples) / LENGTH_GROUPS)
        total, counted = 0.0, 0
        for start in range(0, len(samples), group_size):
            output = self._forward(samples[start:start + group_size])
            tokens = int((output.labels[:, 1:] != IGNORE_INDEX).sum())
            total = total + text_loss(output.logits, output.labels) * tokens
            counted += tokens
        return total / counted, {}

    def _forward(self, samples: list[WorldTurn]) -> TeacherForcedOutput:
        tokenizer = self.vlm.tokenizer
        examples = [forced_turn(tokenizer, sample.turn, sample.history, max_answer_tokens=MAX_TEXT_TOKENS,
                                max_caption_tokens=MAX_TEXT_TOKENS) for sample in samples]
        batch = prepare_batch(self.vlm.processor, examples, num_image_tokens=1, max_length=MAX_CONTEXT,
                              pad_token_id=tokenizer.pad_token_id)
        return teacher_force(self.vlm, batch, marker_rows(self.vlm), (-1,), with_text_logits=True)

    def evaluate(self) -> dict[str, float]:
        """What the tower reads from held-out pictures' cells, and the VLM's captions."""
        return {**vision_accuracy(self.vlm, self.vision_heads, self.vision_measurement),
                **measure_vlm(self.vlm, self.measurement)}


def train_vlm(config: VlmConfig, stop_after: int | None = None) -> list[dict[str, float]]:
    task = VlmTask(config)
    out = Path(config.out)
    curve = train(task, config.loop_settings(), out, {"model": "vlm", **asdict(config)}, stop_after)
    if curve and curve[-1]["step"] == config.steps:
        folder = save_world_vlm(task.vlm, out / VLM_NAME)
        figures = {"trained": curve[-1], "saved_folder": measure_vlm(load_vlm(folder), task.measurement)}
        with atomic_path(out / FIGURES_FILE) as temporary:
            temporary.write_text(json.dumps(figures, indent=2) + "\n")
        logger.info("The saved VLM, loaded back: %s", figures["saved_folder"])
    return curve


def save_world_vlm(vlm: LoadedVLM, folder: Path) -> Path:
    """The VLM as a Hugging Face folder (safetensors, processor), in SAVED_DTYPE, written atomically."""
    with atomic_path(folder) as temporary:
        copy.deepcopy(vlm.model).to(SAVED_DTYPE).save_pretrained(temporary)
        vlm.processor.save_pretrained(temporary)
    logger.info("Saved the world's VLM to %s", folder)
    return folder
