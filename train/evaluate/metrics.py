"""The paper's metrics (Sec. 4.2), each a function of images, texts or embeddings, on the
scale the paper reports (x100):

CLIP     torchmetrics CLIPScore: mean over pairs of 100·cos(image, caption), floored at 0.
FID      torchmetrics FrechetInceptionDistance with a local feature extractor.
BLEU-n   torchmetrics BLEUScore, corpus-level, uniform weights over 1..n-grams, one
         reference per prediction, lower-cased, whitespace tokens.
ROUGE-L  torchmetrics ROUGEScore, mean LCS F-measure (its normaliser: lower case, letters
         and digits); no stemmer, so nltk is not needed.
InterRel Eq. 8 on unit CLIP embeddings, see `inter_rel`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore
from torchmetrics.text import BLEUScore, ROUGEScore

from .clip_model import LocalCLIP
from .feature_extractors import FrozenFeatureExtractor


def batches(items: Sequence, batch_size: int) -> Iterator[list]:
    """Consecutive lists of up to `batch_size` items, read by index (lazy sequences stay lazy)."""
    for start in range(0, len(items), batch_size):
        yield [items[index] for index in range(start, min(start + batch_size, len(items)))]


def clip_score(clip: LocalCLIP, images: Sequence[torch.Tensor], captions: Sequence[str], batch_size: int = 16) -> float:
    """CLIP score of uint8 (3, H, W) RGB `images` against `captions`, pair by pair."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"clip_score needs as many images as captions (> 0), got {len(images)} and {len(captions)}.")
    metric = CLIPScore(model_name_or_path=lambda: (clip.model, clip.processor))
    with torch.no_grad():
        for image_batch, caption_batch in zip(batches(images, batch_size), batches(captions, batch_size)):
            metric.update([image.to(clip.device) for image in image_batch], caption_batch)
        return float(metric.compute())


def frechet_distances(
    extractor: FrozenFeatureExtractor,
    real: Sequence[torch.Tensor],
    generated: Mapping[str, Sequence[torch.Tensor]],
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """FID of each generated set against `real` (uint8 (3, H, W) RGB images, equal sizes
    within a batch); the real features are computed once."""
    metric = FrechetInceptionDistance(feature=extractor, reset_real_features=False).to(device)
    with torch.no_grad():
        for batch in batches(real, batch_size):
            metric.update(torch.stack(batch).to(device), real=True)
        distances = {}
        for name, images in generated.items():
            metric.reset()
            for batch in batches(images, batch_size):
                metric.update(torch.stack(batch).to(device), real=False)
            distances[name] = float(metric.compute())
    return distances


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU-1, BLEU-2 and ROUGE-L (F) of `predictions` against one reference each, x100."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"text_scores needs as many predictions as references (> 0), got {len(predictions)} and {len(references)}."
        )
    predictions = [text.lower() for text in predictions]
    references = [text.lower() for text in references]
    scores = {
        f"bleu{n}": 100 * float(BLEUScore(n_gram=n)(predictions, [[reference] for reference in references]))
        for n in (1, 2)
    }
    rouge = ROUGEScore(rouge_keys=("rougeL",), use_stemmer=False)(predictions, references)
    scores["rouge_l"] = 100 * float(rouge["rougeL_fmeasure"])
    return scores


Embeddings = Sequence[torch.Tensor | None]


def inter_rel(
    reference_text: Embeddings, reference_images: Embeddings, generated_text: Embeddings, generated_images: Embeddings
) -> float | None:
    """InterRel of one dialogue (Eq. 8): each ground-truth embedding e_i of one modality
    against the generated embeddings ẽ_i and ẽ_{i+1} of the other (text vs image, image
    vs text), all unit-norm CLIP embeddings per turn i (None where a turn has none).

    Eq. 8 sums the dot products; we average them and scale by 100, so the value is on the
    CLIP-score scale and does not grow with the dialogue's length. None: no pair exists.
    """
    turns = len(reference_text)
    if not turns == len(reference_images) == len(generated_text) == len(generated_images):
        raise ValueError("inter_rel needs one (possibly None) embedding per turn in each of its four inputs.")
    products = [
        float(reference @ generated[j])
        for references, generated in ((reference_text, generated_images), (reference_images, generated_text))
        for i, reference in enumerate(references)
        if reference is not None
        for j in (i, i + 1)
        if j < turns and generated[j] is not None
    ]
    return 100 * sum(products) / len(products) if products else None
