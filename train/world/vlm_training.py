"""Pretraining the world's VLM with loop.py: the first `vision_steps` steps pretrain the
vision tower alone (vision_pretraining.py), which then stays frozen; every later step
teacher-forces a batch of world turns through m2chat_core's own Eq. 1 sequences
(prompt · answer · <|IC|> · caption · <|img|>) and learns L_text on the answer and
caption, including when to emit <|IC|> and <|img|>; evaluations generate through the
pack's encoder (vlm_measure.py). At the end the weights are written as a Hugging Face
folder, RUN_FOLDER/m2chat-world-vlm/."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from m2chat_core.atomic_files import atomic_path
from m2chat_core.losses import IGNORE_INDEX, text_loss
from m2chat_core.teacher_forcing import (TeacherForcedOutput, TeacherForcingBatch, forced_turn, prepare_batch,
                                         teacher_force)
from m2chat_core.vlm import LoadedVLM, load_vlm

from .config import VlmConfig
from .layout import VLM_NAME
from .loop import train
from .vision_pretraining import (VisionHeads, grey_draws, patch_features, pictures, projected_features, test_scenes,
                                 training_scenes, vision_accuracy, vision_loss)
from .vlm_data import WorldTurn, training_turn
from .vocabulary import COLOURS, POSITION_WORDS, SHAPES, SIZES
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


def word_tokens(vlm: LoadedVLM, words: tuple[str, ...]) -> torch.Tensor:
    """The token ids of the world's words as they follow a space (one token each, vlm_model.py)."""
    return torch.tensor([token for word in words
                         for token in vlm.tokenizer(" " + word, add_special_tokens=False).input_ids])


class VlmTask:
    def __init__(self, config: VlmConfig) -> None:
        self.config = config
        self.vlm = build_world_vlm(config)
        torch.manual_seed(config.seed)
        self.vision_heads = VisionHeads(config.vision_width, config.cell_identity)  # the vision phase's, not saved
        heads = {"vision_heads": self.vision_heads}
        if config.projector_vision_weight:  # the language phase's read-out of the image tokens, not saved
            self.projector_heads = heads["projector_heads"] = VisionHeads(config.width, config.cell_identity)
        self.model = nn.ModuleDict({"vlm": self.vlm.model, **heads})
        self.measurement = measurement_turns(config.seed, config.eval_images)
        self.vision_measurement = test_scenes(config.seed, config.eval_images)
        self.token_weights = torch.ones(self.vlm.input_embeddings.weight.shape[0])
        self.token_weights[word_tokens(self.vlm, (*SHAPES, *SIZES))] = config.attribute_weight
        self.token_weights[word_tokens(self.vlm, POSITION_WORDS)] = config.position_weight
        self.pair_words = word_tokens(self.vlm, (*COLOURS, *SHAPES))

    def loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if step < self.config.vision_steps:
            scenes = training_scenes(self.config.seed, step, self.config.vision_batch_size)
            grey = grey_draws(self.config.seed, step, len(scenes), self.config.vision_grey)
            features = patch_features(self.vlm, pictures(scenes, grey))
            return vision_loss(self.vision_heads, features, scenes, [w is not None for w in grey]), {}
        self.vlm.model.model.vision_tower.requires_grad_(False)  # frozen, as LLaVA-1.5 keeps CLIP
        text = self._text_loss(step)
        if not self.config.projector_vision_weight:
            return text, {"text_loss": float(text.detach())}
        scenes = training_scenes(self.config.seed, step, self.config.batch_size)
        vision = vision_loss(self.projector_heads, projected_features(self.vlm, scenes), scenes)
        return text + self.config.projector_vision_weight * vision, {"text_loss": float(text.detach()),
                                                                     "projector_vision_loss": float(vision.detach())}

    def _text_loss(self, step: int) -> torch.Tensor:
        """L_text over the batch, fed as LENGTH_GROUPS forwards of turns of similar length
        (less padding; the same loss as one forward)."""
        samples = sorted((training_turn(self.config.seed, step, index) for index in range(self.config.batch_size)),
                         key=_text_length)
        group_size = math.ceil(len(samples) / LENGTH_GROUPS)
        total, counted = 0.0, 0
        for start in range(0, len(samples), group_size):
            output = self._forward(samples[start:start + group_size], step * self.config.batch_size + start)
            tokens = int((output.labels[:, 1:] != IGNORE_INDEX).sum())
            total = total + text_loss(output.logits, output.labels, token_weights=self.token_weights) * tokens
            counted += tokens
        return total / counted

    def _forward(self, samples: list[WorldTurn], draw: int) -> TeacherForcedOutput:
        batch = self._batch(samples)
        if self.config.word_dropout:
            batch = self._drop_pair_words(batch, torch.Generator().manual_seed(self.config.seed * 1_000_003 + draw))
        return teacher_force(self.vlm, batch, marker_rows(self.vlm), (-1,), with_text_logits=True)

    def _batch(self, samples: list[WorldTurn]) -> TeacherForcingBatch:
        tokenizer = self.vlm.tokenizer
        examples = [forced_turn(tokenizer, sample.turn, sample.history, max_answer_tokens=MAX_TEXT_TOKENS,
                                max_caption_tokens=MAX_TEXT_TOKENS) for sample in samples]
        return prepare_batch(self.vlm.processor, examples, num_image_tokens=1, max_length=MAX_CONTEXT,
                             pad_token_id=tokenizer.pad_token_id)

    def _drop_pair_words(self, batch: TeacherForcingBatch, generator: torch.Generator) -> TeacherForcingBatch:
        """The colour and shape words of the answers and captions, each hidden from the input
        (the pad token in its place) with probability word_dropout; the labels keep them."""
        written = batch.answer_mask | batch.caption_mask
        dropped = written & torch.isin(batch.input_ids, self.pair_words) & (
            torch.rand(batch.input_ids.shape, generator=generator) < self.config.word_dropout)
        return dataclasses.replace(batch, input_ids=batch.input_ids.masked_fill(dropped, self.vlm.tokenizer.pad_token_id))

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
