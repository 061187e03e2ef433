"""Generation for an evaluation run, batched and resumable.

Each system conditions SDXL its own way and samples through diffusers'
StableDiffusionXLPipeline with CFG against all-zero negative embeddings:
  m2chat  the VLM (with the adapter's special tokens and stage-2 deltas) encodes the turn,
          the M³Adapter maps its features to prompt_embeds (77x2048) and pooled (1280);
  vlm_sd  the stock VLM's caption through SDXL's own text encoders ("VLM+SD" baseline);
  sdxl    the reference caption through SDXL's own text encoders.
Outputs go to the run's GenerationStore (store.py); an item already there is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from m2chat_core.encoder import AdapterReadout, EncodeResult, TurnOptions, encode, text_marker_embeddings
from m2chat_core.m3ft_settings import FILE_GATE_MODE
from m2chat_core.session import ChatSession, ChatTurn, image_to_png
from m2chat_core.vlm import LoadedVLM

from .config import VLM_SYSTEMS, EvaluateConfig, GenerationConfig
from .datasets import EvaluationItem, EvaluationSet, ReferenceTurn
from .models import EvaluationModels
from .store import GenerationStore, TextRecord

logger = logging.getLogger(__name__)

# The stock-VLM baseline runs before the adapter's stage-2 deltas are merged into the VLM.
GENERATION_ORDER = ("sdxl", "vlm_sd", "m2chat")


@dataclass(frozen=True)
class GenerationCounts:
    generated: int  # images drawn by this run
    skipped: int  # items already on disk
    without_image: int  # items whose turn drew no image (draw_mode "auto")


@dataclass(frozen=True)
class _VLMReader:
    """How a VLM system runs the encoder: the adapter's readout (special-token rows, the
    layers read (h_l), K); without an adapter, as the nodes do: text-marker rows, the last
    layer, K = 1."""

    vlm: LoadedVLM
    readout: AdapterReadout

    def encode(self, item: EvaluationItem, settings: GenerationConfig) -> EncodeResult:
        session = ChatSession(tuple(_chat_turn(turn, item.task) for turn in item.history))
        options = TurnOptions(task=item.task, draw_mode=settings.draw_mode, seed=settings.seed + item.number,
                              max_new_tokens=settings.max_new_tokens)
        return encode(self.vlm, session, item.turn.user_text, _open_images(item.turn.user_images),
                      readout=self.readout, options=options)


def _chat_turn(turn: ReferenceTurn, task: str) -> ChatTurn:
    images = tuple(image_to_png(image) for image in _open_images(turn.user_images))
    return ChatTurn(turn.user_text, images, answer=turn.answer, caption=turn.caption, task=task)


def _open_images(paths: Sequence[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def _vlm_reader(system: str, models: EvaluationModels) -> _VLMReader:
    if system == "m2chat":
        vlm = models.vlm(with_deltas=True)
        adapter_file, adapter = models.adapter()
        return _VLMReader(vlm, AdapterReadout(
            adapter.special_token_embeddings.detach(), tuple(adapter_file.config.chosen_layers),
            adapter_file.config.num_image_tokens,
        ))
    vlm = models.vlm(with_deltas=False)
    return _VLMReader(vlm, AdapterReadout(text_marker_embeddings(vlm), (-1,), 1))


def generate(config: EvaluateConfig, evaluation_set: EvaluationSet, models: EvaluationModels,
             store: GenerationStore) -> dict[str, GenerationCounts]:
    """Generate every missing output of every configured system; counts per system."""
    return {
        system: _generate_system(system, evaluation_set.items, models, store, config.generation)
        for system in GENERATION_ORDER
        if system in config.generation.systems
    }


def _generate_system(system: str, items: Sequence[EvaluationItem], models: EvaluationModels,
                     store: GenerationStore, settings: GenerationConfig) -> GenerationCounts:
    texts = store.read_texts(system)

    def done(item: EvaluationItem) -> bool:
        record = texts.get(item.item_id)
        if system in VLM_SYSTEMS and record is None:
            return False
        return (record is not None and not record.draws_image) or store.image_path(system, item.item_id).is_file()

    pending = [item for item in items if not done(item)]
    skipped = len(items) - len(pending)
    logger.info(
        "%s: %d of %d items already generated (skipped), %d to generate", system, skipped, len(items), len(pending)
    )
    reader = _vlm_reader(system, models) if system in VLM_SYSTEMS and pending else None
    generated = without_image = 0
    with tqdm(total=len(items), initial=skipped, desc=system, unit="item") as progress:
        for start in range(0, len(pending), settings.batch_size):
            batch = pending[start : start + settings.batch_size]
            conditioned = _conditioning(system, batch, reader, models, store, settings)
            if conditioned is not None:
                drawn, prompt_embeds, pooled = conditioned
                seeds = [settings.seed + item.number for item in drawn]
                for item, image in zip(drawn, _render(models, prompt_embeds, pooled, seeds, settings)):
                    store.save_image(system, item.item_id, image_to_png(image))
                generated += len(drawn)
                without_image += len(batch) - len(drawn)
            else:
                without_image += len(batch)
            progress.update(len(batch))
    return GenerationCounts(generated=generated, skipped=skipped, without_image=without_image)


def _conditioning(
    system: str, batch: list[EvaluationItem], reader: _VLMReader | None, models: EvaluationModels,
    store: GenerationStore, settings: GenerationConfig,
) -> tuple[list[EvaluationItem], torch.Tensor, torch.Tensor] | None:
    """The items of `batch` that draw an image, with their prompt_embeds (B, 77, 2048) and
    pooled_prompt_embeds (B, 1280), or None when none does; VLM systems store what they
    said on the way."""
    if system == "sdxl":
        return batch, *_text_conditioning(models, [item.turn.caption for item in batch])
    results = []
    for item in batch:
        result = reader.encode(item, settings)
        store.add_text(system, TextRecord(item.item_id, result.answer, result.caption, result.draws_image))
        if result.draws_image:
            results.append((item, result))
    drawn = [item for item, _ in results]
    if not drawn:
        return None
    if system == "vlm_sd":
        return drawn, *_text_conditioning(models, [result.caption for _, result in results])
    adapter = models.adapter()[1]
    gate_mode = None if settings.gate_mode == FILE_GATE_MODE else settings.gate_mode  # None: the file's own
    with torch.inference_mode():
        outputs = [adapter(result.features, gate_mode=gate_mode) for _, result in results]  # Eq. 3
    return drawn, torch.cat([output.context for output in outputs]), torch.cat([output.pooled for output in outputs])


def _text_conditioning(models: EvaluationModels, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's own conditioning of `captions`: CLIP-L ‖ OpenCLIP-G penultimate hidden
    states and OpenCLIP-G's pooled text embedding."""
    pipeline = models.pipeline()
    with torch.inference_mode():
        prompt_embeds, _, pooled, _ = pipeline.encode_prompt(
            captions, device=models.device, do_classifier_free_guidance=False
        )
    return prompt_embeds, pooled


def _render(models: EvaluationModels, prompt_embeds: torch.Tensor, pooled: torch.Tensor, seeds: list[int],
            settings: GenerationConfig) -> list[Image.Image]:
    """One image per conditioning row (h_align, h_palign of Eq. 4), each from its own seeded
    CPU generator (the same noise whatever the batch and device), CFG against all-zero
    negative embeddings."""
    pipeline = models.pipeline()
    dtype = pipeline.unet.dtype
    prompt_embeds = prompt_embeds.to(models.device, dtype)
    pooled = pooled.to(models.device, dtype)
    with torch.inference_mode():
        return pipeline(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=torch.zeros_like(prompt_embeds),
            negative_pooled_prompt_embeds=torch.zeros_like(pooled),
            guidance_scale=settings.cfg,
            num_inference_steps=settings.steps,
            height=settings.resolution,
            width=settings.resolution,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            output_type="pil",
        ).images
