"""Score what a run generated (read back from disk, so a rerun rescoring needs no model
but the scorers): CLIP and FID on caption sets, BLEU/ROUGE-L and InterRel on dialogues."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from .clip_model import LocalCLIP, image_tensor, load_local_clip
from .config import CAPTION_DATASETS, SYSTEMS, EvaluateConfig
from .datasets import EvaluationItem, EvaluationSet
from .feature_extractors import load_feature_extractor
from .store import GenerationStore
from .metrics import batches, clip_score, frechet_distances, inter_rel, text_scores

logger = logging.getLogger(__name__)


class ImageFiles(Sequence[torch.Tensor]):
    """Images read when indexed, as uint8 (3, S, S) RGB: centre-cropped to a square and
    resized to `size` (generated images already are), so large sets never sit in memory."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            square = ImageOps.fit(image.convert("RGB"), (self.size, self.size), Image.Resampling.BICUBIC)
        return image_tensor(square)


@dataclass
class Scores:
    """Metric values per system, and what they were computed from."""

    results: dict[str, dict[str, float | None]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    clip_description: str = ""
    fid_description: str | None = None


def score(config: EvaluateConfig, evaluation_set: EvaluationSet, store: GenerationStore,
          device: torch.device) -> Scores:
    clip = load_local_clip(config.metrics.clip_model, device)
    scores = Scores(clip_description=clip.description)
    systems = [system for system in SYSTEMS if system in config.generation.systems]
    for system in systems:
        if evaluation_set.kind in CAPTION_DATASETS:
            scores.results[system], scores.counts[system] = _caption_scores(clip, evaluation_set, store, system, config)
        else:
            scores.results[system], scores.counts[system] = _dialogue_scores(
                clip, evaluation_set, store, system, config.metrics.batch_size
            )
    _add_fid(scores, config, evaluation_set, store, systems, device)
    return scores


def _generated(store: GenerationStore, system: str, items: Sequence[EvaluationItem]) -> list[EvaluationItem]:
    return [item for item in items if store.image_path(system, item.item_id).is_file()]


def _caption_scores(clip: LocalCLIP, evaluation_set: EvaluationSet, store: GenerationStore, system: str,
                    config: EvaluateConfig) -> tuple[dict[str, float | None], dict[str, int]]:
    items = _generated(store, system, evaluation_set.items)
    if not items:
        logger.warning("%s: no generated images to score.", system)
        return {"clip": None}, {"images": 0}
    images = ImageFiles([store.image_path(system, item.item_id) for item in items], config.generation.resolution)
    value = clip_score(clip, images, [item.turn.caption for item in items], config.metrics.batch_size)
    return {"clip": value}, {"images": len(items)}


def _dialogue_scores(clip: LocalCLIP, evaluation_set: EvaluationSet, store: GenerationStore, system: str,
                     batch_size: int) -> tuple[dict[str, float | None], dict[str, int]]:
    items, texts = evaluation_set.items, store.read_texts(system)
    answered = [item for item in items if item.turn.answer and item.item_id in texts]
    results: dict[str, float | None] = {"bleu1": None, "bleu2": None, "rouge_l": None}
    if answered:
        predictions = [texts[item.item_id].answer for item in answered]
        results.update(text_scores(predictions, [item.turn.answer for item in answered]))

    generated_paths = [store.image_path(system, item.item_id) for item in items]
    embeddings = (  # per item: R_T, R_V, generated text, generated image
        _embed_texts(clip, [item.turn.answer for item in items], batch_size),
        _embed_images(clip, [item.turn.image for item in items], batch_size),
        _embed_texts(clip, [texts[item.item_id].answer if item.item_id in texts else "" for item in items], batch_size),
        _embed_images(clip, [path if path.is_file() else None for path in generated_paths], batch_size),
    )
    dialogues: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        dialogues.setdefault(item.dialogue, []).append(index)
    values = []
    for indices in dialogues.values():
        value = inter_rel(*([column[index] for index in indices] for column in embeddings))  # Eq. 8
        if value is not None:
            values.append(value)
    results["inter_rel"] = sum(values) / len(values) if values else None
    counts = {"answers": len(answered), "images": sum(path.is_file() for path in generated_paths),
              "dialogues_with_inter_rel": len(values)}
    return results, counts


def _embed_texts(clip: LocalCLIP, texts: list[str], batch_size: int) -> list[torch.Tensor | None]:
    """Unit CLIP embedding per text, None for a blank one."""
    present = [index for index, text in enumerate(texts) if text.strip()]
    embedded = [
        row for batch in batches(present, batch_size) for row in clip.embed_texts([texts[index] for index in batch])
    ]
    return _scatter(present, embedded, len(texts))


def _embed_images(clip: LocalCLIP, paths: list[Path | None], batch_size: int) -> list[torch.Tensor | None]:
    """Unit CLIP embedding per image file, None where there is none; read at CLIP's input
    size (its processor resizes and crops them so anyway)."""
    present = [index for index, path in enumerate(paths) if path is not None]
    images = ImageFiles([paths[index] for index in present], int(clip.model.config.vision_config.image_size))
    embedded = [row for batch in batches(images, batch_size) for row in clip.embed_images(batch)]
    return _scatter(present, embedded, len(paths))


def _scatter(indices: list[int], values: list[torch.Tensor], length: int) -> list[torch.Tensor | None]:
    by_index = dict(zip(indices, values))
    return [by_index.get(index) for index in range(length)]


def _add_fid(scores: Scores, config: EvaluateConfig, evaluation_set: EvaluationSet, store: GenerationStore,
             systems: list[str], device: torch.device) -> None:
    if evaluation_set.kind not in CAPTION_DATASETS:
        return
    references = evaluation_set.reference_images
    if not config.metrics.fid_weights or not references:
        logger.info("FID skipped: %s.", "no metrics.fid_weights" if references else "the set has no reference images")
        return
    extractor = load_feature_extractor(config.metrics.fid_architecture, config.metrics.fid_weights)
    scores.fid_description = (
        f"{config.metrics.fid_architecture} from {Path(config.metrics.fid_weights).name} "
        f"({extractor.num_features} features)"
    )
    size, items = config.generation.resolution, evaluation_set.items
    generated = {
        system: ImageFiles([store.image_path(system, item.item_id) for item in _generated(store, system, items)], size)
        for system in systems
    }
    scorable = {system: images for system, images in generated.items() if len(images) >= 2}
    if len(references) < 2 or not scorable:
        logger.warning("FID needs at least 2 reference and 2 generated images; skipped.")
        return
    distances = frechet_distances(extractor, ImageFiles(references, size), scorable, config.metrics.batch_size, device)
    for system in systems:
        scores.results[system]["fid"] = distances.get(system)
        scores.counts[system]["fid_reference_images"] = len(references)

