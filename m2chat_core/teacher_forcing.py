"""Teacher forcing for M³FT: the VLM features of a KNOWN answer and caption, read in one
forward pass over a padded batch (no generation).

Each sample is the Eq. 1 sequence the encoder builds at inference:

    prompt (Instruction / Input / "Response:") · y_res · <|IC|> · yhat_cap · <|img|>×K

with the same conventions as `encoder.py`, so training and inference read the same
features: the special tokens are fed as embeddings (the adapter's
`special_token_embeddings`, so they receive gradients), h_l is read at the caption and
<|img|> positions from `output_hidden_states` with the same layer indices (-1 is the
last layer after the final norm), e_ans / e_cap are mean last-layer hidden states over
the answer / caption tokens, and f_img are the new turn's image embeddings.

Building the batch (`prepare_batch`) needs only the processor, so DataLoader workers can
do it; `teacher_force` runs the model. Sequences are right-padded and every position is
recorded explicitly, so padding never shifts where a caption starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoding import VLMFeatures
from .losses import IGNORE_INDEX
from .prompt import RESPONSE_LABEL, PromptTooLongError, fit_prompt
from .session import ChatTurn
from .special_tokens import SPECIAL_TOKENS
from .vlm import LoadedVLM

NOT_SPECIAL = -1  # special_index value of an ordinary token
CAPTION_START_ROW, IMAGE_TOKEN_ROW = range(len(SPECIAL_TOKENS))  # rows of special_token_embeddings


class TeacherForcingError(ValueError):
    """A training example that cannot be teacher-forced (no caption, too long...)."""


@dataclass(frozen=True)
class ForcedTurn:
    """One training example: `turn` (its user text, images, task, and the known answer and
    caption) after `history`, with the answer and caption as VLM token ids."""

    turn: ChatTurn
    answer_ids: tuple[int, ...]
    caption_ids: tuple[int, ...]
    history: tuple[ChatTurn, ...] = ()


@dataclass(frozen=True)
class TeacherForcingBatch:
    """Model inputs of a right-padded batch, on the CPU. B samples, S positions, T feature slots.

    special_index: (B, S) row of special_token_embeddings fed at each position, or -1.
    feature_positions / feature_mask: (B, T) the caption then <|img|> positions of each
        sample (h_l is read there), padded with position 0 / False.
    answer_mask / caption_mask: (B, S) bool, the answer (y_res) / caption (yhat_cap) tokens.
    labels: (B, S) token ids of the answer and caption tokens, -100 elsewhere; the special
        tokens' targets are added by `teacher_force`, which knows the vocabulary size.
    processor_inputs: the processor's other outputs (pixel values, image sizes...),
        concatenated over the batch.
    new_image_counts / image_counts: per sample, the new turn's images and all images in
        the prompt (history first, so the new turn's are the last ones).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    special_index: torch.Tensor
    feature_positions: torch.Tensor
    feature_mask: torch.Tensor
    answer_mask: torch.Tensor
    caption_mask: torch.Tensor
    labels: torch.Tensor
    processor_inputs: dict[str, torch.Tensor]
    new_image_counts: tuple[int, ...]
    image_counts: tuple[int, ...]


@dataclass(frozen=True)
class TeacherForcedOutput:
    """features: what the adapter reads. logits (B, S, V + 2) and labels (B, S) for L_text,
    or None when not asked for: the vocabulary's logits plus one score per special token
    (final hidden state · its embedding, as the encoder scores them), so the VLM also
    learns to emit <|IC|> after the answer and <|img|> after the caption."""

    features: VLMFeatures
    logits: torch.Tensor | None
    labels: torch.Tensor | None


def continuation_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` as the VLM writes it after "Response:" (a space-separated word sequence)."""
    text = text.strip()
    if not text:
        return []
    prefix = tokenizer(RESPONSE_LABEL, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{RESPONSE_LABEL} {text}", add_special_tokens=False)["input_ids"]
    if full[: len(prefix)] != prefix:
        raise TeacherForcingError(
            f"The tokenizer merges {RESPONSE_LABEL!r} with the text after it ({text[:40]!r}...), "
            "so the response tokens cannot be isolated."
        )
    return full[len(prefix) :]


def forced_turn(
    tokenizer: Any,
    turn: ChatTurn,
    history: Sequence[ChatTurn] = (),
    *,
    max_answer_tokens: int,
    max_caption_tokens: int,
) -> ForcedTurn:
    """Tokenize `turn.answer` and `turn.caption` (each cut to its maximum) into a ForcedTurn."""
    caption_ids = continuation_token_ids(tokenizer, turn.caption)[:max_caption_tokens]
    if not caption_ids:
        raise TeacherForcingError("The turn has no caption; every training turn must describe its image.")
    answer_ids = continuation_token_ids(tokenizer, turn.answer)[:max_answer_tokens]
    return ForcedTurn(turn=turn, answer_ids=tuple(answer_ids), caption_ids=tuple(caption_ids), history=tuple(history))


def _process_within(
    processor: Any, example: ForcedTurn, response_length: int, max_length: int
) -> tuple[dict[str, torch.Tensor], int]:
    """Processor outputs of the longest recent history (oldest turns dropped first) for
    which prompt + response fits `max_length`, and how many images the prompt has."""
    try:
        fitted = fit_prompt(processor, example.history, example.turn, max_length - response_length)
    except PromptTooLongError as error:
        raise TeacherForcingError(
            f"The turn needs {error.prompt_length} prompt and {response_length} response tokens even "
            f"without history, more than the {max_length} allowed; shorten its text or caption."
        ) from None
    return dict(fitted.inputs), len(fitted.images)


def prepare_batch(
    processor: Any,
    examples: Sequence[ForcedTurn],
    *,
    num_image_tokens: int,
    max_length: int,
    pad_token_id: int,
) -> TeacherForcingBatch:
    """Build the padded Eq. 1 sequences of `examples` (raises TeacherForcingError for one
    that cannot fit `max_length` tokens). Special-token positions hold `pad_token_id`; their
    embeddings are swapped in by `teacher_force`."""
    if not examples:
        raise TeacherForcingError("prepare_batch needs at least one example.")
    rows, processed, prompt_lengths, new_image_counts, image_counts = [], [], [], [], []
    for example in examples:
        response_length = len(example.answer_ids) + 1 + len(example.caption_ids) + num_image_tokens
        inputs, num_images = _process_within(processor, example, response_length, max_length)
        prompt_ids = inputs.pop("input_ids")[0].tolist()
        inputs.pop("attention_mask", None)
        processed.append(inputs)
        prompt_lengths.append(len(prompt_ids))
        image_counts.append(num_images)
        new_image_counts.append(len(example.turn.images))
        rows.append(_sequence(prompt_ids, example, num_image_tokens, pad_token_id))

    length = max(len(row["ids"]) for row in rows)
    slots = max(len(row["feature_positions"]) for row in rows)

    def padded(key: str, width: int, fill: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([row[key] + [fill] * (width - len(row[key])) for row in rows], dtype=dtype)

    return TeacherForcingBatch(
        input_ids=padded("ids", length, pad_token_id, torch.long),
        attention_mask=padded("attention", length, 0, torch.long),
        special_index=padded("special_index", length, NOT_SPECIAL, torch.long),
        feature_positions=padded("feature_positions", slots, 0, torch.long),
        feature_mask=padded("feature_mask", slots, 0, torch.bool),
        answer_mask=padded("answer_mask", length, 0, torch.bool),
        caption_mask=padded("caption_mask", length, 0, torch.bool),
        labels=padded("labels", length, IGNORE_INDEX, torch.long),
        processor_inputs=_merge_processor_inputs(processed, prompt_lengths, length),
        new_image_counts=tuple(new_image_counts),
        image_counts=tuple(image_counts),
    )


def _sequence(prompt_ids: list[int], example: ForcedTurn, num_image_tokens: int, pad_token_id: int) -> dict[str, list]:
    """Ids, masks, labels and feature positions of one unpadded sequence."""
    answer, caption = list(example.answer_ids), list(example.caption_ids)
    ids = prompt_ids + answer + [pad_token_id] + caption + [pad_token_id] * num_image_tokens
    answer_start = len(prompt_ids)
    caption_start_position = answer_start + len(answer)  # <|IC|>
    caption_start = caption_start_position + 1
    image_start = caption_start + len(caption)

    special_index = [NOT_SPECIAL] * len(ids)
    special_index[caption_start_position] = CAPTION_START_ROW
    special_index[image_start:] = [IMAGE_TOKEN_ROW] * num_image_tokens
    answer_mask = [0] * len(ids)
    answer_mask[answer_start:caption_start_position] = [1] * len(answer)
    caption_mask = [0] * len(ids)
    caption_mask[caption_start:image_start] = [1] * len(caption)
    labels = [IGNORE_INDEX] * len(ids)
    labels[answer_start:caption_start_position] = answer
    labels[caption_start:image_start] = caption
    feature_positions = list(range(caption_start, len(ids)))  # t_{cap,img}: caption, then <|img|>×K
    return {
        "ids": ids,
        "attention": [1] * len(ids),
        "special_index": special_index,
        "answer_mask": answer_mask,
        "caption_mask": caption_mask,
        "labels": labels,
        "feature_positions": feature_positions,
        "feature_mask": [1] * len(feature_positions),
    }


def _merge_processor_inputs(
    processed: list[dict[str, torch.Tensor]], prompt_lengths: list[int], padded_length: int
) -> dict[str, torch.Tensor]:
    """Concatenate per-sample processor outputs; per-token ones, (1, prompt length) in every
    sample (e.g. Qwen2-VL's mm_token_type_ids), are zero-extended to the padded length."""
    merged: dict[str, torch.Tensor] = {}
    for key in sorted({key for inputs in processed for key in inputs}):
        values = [inputs[key] for inputs in processed if key in inputs]
        if not all(isinstance(value, torch.Tensor) for value in values):
            continue
        per_token = len(values) == len(processed) and all(
            tuple(value.shape) == (1, length) for value, length in zip(values, prompt_lengths)
        )
        if per_token:
            values = [F.pad(value, (0, padded_length - value.shape[1])) for value in values]
        merged[key] = _concatenate_zero_padded(values)
    return merged


def _concatenate_zero_padded(values: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding the other dims to their largest size, as a
    processor pads one batch (e.g. LLaVA-NeXT's per-image patch counts, which the model
    reads back from image_sizes)."""
    shape = [max(value.shape[dim] for value in values) for dim in range(1, values[0].ndim)]
    padded = []
    for value in values:
        padding = [amount for size, target in zip(reversed(value.shape[1:]), reversed(shape)) for amount in (0, target - size)]
        padded.append(F.pad(value, padding) if any(padding) else value)
    return torch.cat(padded)


@contextmanager
def _special_embeddings_fed(
    embedding: nn.Module,
    special_index: torch.Tensor,
    special_token_embeddings: torch.Tensor,
    zero_anchor: torch.Tensor | None = None,
) -> Iterator[None]:
    """Swap the special tokens' embeddings in at their positions of the embedding output
    (and add `zero_anchor`, a 0 whose backward reaches the blank picture's encoder, where
    a real picture's features enter the language model)."""
    is_special = (special_index != NOT_SPECIAL)[..., None]
    rows = special_index.clamp(min=0)

    def feed(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if output.shape[:-1] != special_index.shape:  # some other lookup, e.g. a single token id
            return None
        specials = special_token_embeddings.to(output.dtype)[rows]
        fed = torch.where(is_special, specials, output)
        return fed if zero_anchor is None else fed + zero_anchor.to(fed.dtype)

    handle = embedding.register_forward_hook(feed)
    try:
        yield
    finally:
        handle.remove()


def teacher_force(
    vlm: LoadedVLM,
    batch: TeacherForcingBatch,
    special_token_embeddings: torch.Tensor,
    chosen_layers: Sequence[int],
    *,
    with_text_logits: bool,
    blank_picture: Mapping[str, Any] | None = None,
) -> TeacherForcedOutput:
    """One forward of the VLM over `batch`; gradients reach `special_token_embeddings` and
    every trainable VLM parameter (the projector through f_img and the placeholders).

    `blank_picture` (`LoadedVLM.blank_picture_inputs()`, for sharded parameters): every
    process runs the same modules in the same order at every step, as the collectives that
    gather sharded parameters need: a batch without pictures encodes the blank one and adds
    it to the language model's input with weight 0, and a batch without new pictures gives
    the adapter masked-out f_img (g = 1 there, so its image branch adds exactly 0)."""
    device = vlm.device
    special_index = batch.special_index.to(device)
    arguments: dict[str, Any] = vlm.forward_inputs(batch.processor_inputs)
    zero_anchor = None
    if "pixel_values" in batch.processor_inputs:
        mm_encoder_outputs, per_image = vlm.encode_images(batch.processor_inputs)
        arguments["mm_encoder_outputs"] = mm_encoder_outputs
    elif blank_picture is not None:
        per_image = vlm.encode_images(blank_picture)[1]
        zero_anchor = sum(features.sum() for features in per_image) * 0.0
    else:
        per_image = []
    arguments.update(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        output_hidden_states=True,
        use_cache=False,
        return_dict=True,
    )
    if not with_text_logits and vlm.accepts_forward_argument("logits_to_keep"):
        arguments["logits_to_keep"] = 1  # the LM head over the whole sequence is not needed
    with _special_embeddings_fed(vlm.input_embeddings, special_index, special_token_embeddings.to(device), zero_anchor):
        outputs = vlm.model(**arguments)

    hidden_states = outputs.hidden_states
    final_hidden = hidden_states[-1]  # the LM head's input, as the encoder reads e_ans / e_cap
    positions = batch.feature_positions.to(device)[..., None].expand(-1, -1, final_hidden.shape[-1])
    caption_hidden_states = torch.stack(
        [hidden_states[layer].gather(1, positions) for layer in chosen_layers], dim=1
    )  # (B, L, T, H): h_l at t_{cap,img}
    answer_mask = batch.answer_mask.to(device)
    image_features, image_mask = _new_image_features(batch, per_image)
    if image_features is None and blank_picture is not None:
        image_features = per_image[0].expand(len(batch.image_counts), -1, -1)
        image_mask = torch.zeros(image_features.shape[:2], dtype=torch.bool, device=image_features.device)
    features = VLMFeatures(
        caption_hidden_states=caption_hidden_states,
        caption_mask=batch.feature_mask.to(device),
        answer_embedding=_masked_mean(final_hidden, answer_mask),  # e_ans
        caption_embedding=_masked_mean(final_hidden, batch.caption_mask.to(device)),  # e_cap
        has_answer=answer_mask.any(dim=1),
        image_features=image_features,  # f_img
        image_mask=image_mask,
    )
    if not with_text_logits:
        return TeacherForcedOutput(features=features, logits=None, labels=None)

    vocabulary_size = outputs.logits.shape[-1]
    special_scores = final_hidden @ special_token_embeddings.to(final_hidden.dtype).T  # (B, S, 2)
    logits = torch.cat([outputs.logits, special_scores.to(outputs.logits.dtype)], dim=-1)
    labels = batch.labels.clone()
    labels[batch.special_index == CAPTION_START_ROW] = vocabulary_size + CAPTION_START_ROW
    is_image = batch.special_index == IMAGE_TOKEN_ROW
    first_image = is_image & ~F.pad(is_image[:, :-1], (1, 0))
    labels[first_image] = vocabulary_size + IMAGE_TOKEN_ROW
    return TeacherForcedOutput(features=features, logits=logits, labels=labels.to(device))


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, H) averaged over the positions where mask (B, S) is True; zeros where none is."""
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def _new_image_features(
    batch: TeacherForcingBatch, per_image: list[torch.Tensor]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """f_img: each sample's new-turn image embeddings concatenated, padded to (B, P, D)."""
    if not any(batch.new_image_counts):
        return None, None
    rows, start = [], 0
    for count, new in zip(batch.image_counts, batch.new_image_counts):
        images = per_image[start + count - new : start + count]
        rows.append(torch.cat(images) if images else per_image[0].new_zeros(0, per_image[0].shape[-1]))
        start += count
    length = max(row.shape[0] for row in rows)
    features = torch.stack([F.pad(row, (0, 0, 0, length - row.shape[0])) for row in rows])
    mask = torch.tensor(
        [[index < row.shape[0] for index in range(length)] for row in rows], dtype=torch.bool, device=features.device
    )
    return features, mask
