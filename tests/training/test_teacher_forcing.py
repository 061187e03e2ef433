"""m2chat_core.teacher_forcing: one padded forward gives exactly the encoder's features,
and gradients reach the special-token embeddings and the VLM's trainable parts."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from m2chat_core.encoder import AdapterReadout, TurnOptions, encode
from m2chat_core.losses import IGNORE_INDEX, text_loss
from m2chat_core.session import ChatSession, ChatTurn, image_to_png
from m2chat_core.teacher_forcing import (
    ForcedTurn,
    TeacherForcingError,
    continuation_token_ids,
    forced_turn,
    prepare_batch,
    teacher_force,
)
from m2chat_core.vlm import load_vlm

K = 4
LAYERS = (-1, 2, 0)


@pytest.fixture(scope="module")
def vlm(assets):
    return load_vlm(assets / "vlm")


@pytest.fixture(scope="module")
def special():
    return torch.randn(2, 64, generator=torch.Generator().manual_seed(7)) * 1e-3


@pytest.fixture(scope="module")
def encoded(vlm, special):
    """Encoder results: a text-to-image turn, and an image-editing turn after a turn with an image."""
    options = dict(readout=AdapterReadout(special, tuple(LAYERS), K))
    history = ChatSession((ChatTurn("hello", (image_to_png(Image.new("RGB", (20, 20), (0, 0, 255))),), "hi", "a blue square"),))
    drawing = encode(vlm, ChatSession(), "Draw a fox", None, options=TurnOptions("text_to_image", max_new_tokens=6),
                     **options)
    editing = encode(vlm, history, "Make it red", [Image.new("RGB", (40, 30), (200, 30, 30))],
                     options=TurnOptions("image_editing", max_new_tokens=6), **options)
    return drawing, editing


def _examples(results):
    return [
        ForcedTurn(result.session.turns[-1], result.answer_token_ids, result.caption_token_ids, result.session.turns[:-1])
        for result in results
    ]


def _batch(vlm, examples):
    return prepare_batch(vlm.processor, examples, num_image_tokens=K, max_length=512, pad_token_id=vlm.tokenizer.pad_token_id)


def test_padded_batch_reads_exactly_the_encoders_features(vlm, special, encoded):
    batch = _batch(vlm, _examples(encoded))
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()  # the short sample is right-padded
    with torch.no_grad():
        features = teacher_force(vlm, batch, special, LAYERS, with_text_logits=False).features
    for row, result in enumerate(encoded):
        expected = result.features
        tokens = expected.caption_hidden_states.shape[2]  # caption + K
        assert features.caption_mask[row].sum() == tokens
        torch.testing.assert_close(features.caption_hidden_states[row, :, :tokens], expected.caption_hidden_states[0])
        torch.testing.assert_close(features.caption_embedding[row], expected.caption_embedding[0])
        torch.testing.assert_close(features.answer_embedding[row], expected.answer_embedding[0])
        assert features.has_answer[row] == expected.has_answer[0]
    # f_img: only the new turn's image, not the history's; the text-only sample has none.
    assert features.image_mask.sum(dim=1).tolist() == [0, encoded[1].features.image_features.shape[1]]
    torch.testing.assert_close(features.image_features[1], encoded[1].features.image_features[0])


def test_text_labels_cover_answer_caption_and_the_special_tokens(vlm, special, encoded):
    batch = _batch(vlm, _examples(encoded))
    output = teacher_force(vlm, batch, special, LAYERS, with_text_logits=True)
    vocabulary = vlm.model.get_output_embeddings().weight.shape[0]
    assert output.logits.shape[-1] == vocabulary + 2
    for row, result in enumerate(encoded):
        labels = output.labels[row]
        ordinary = labels[(labels != IGNORE_INDEX) & (labels < vocabulary)].tolist()
        assert ordinary == list(result.answer_token_ids) + list(result.caption_token_ids)
        assert (labels == vocabulary).sum() == 1 and (labels == vocabulary + 1).sum() == 1  # <|IC|>, first <|img|>
        caption_start = int((labels == vocabulary).nonzero())
        assert int(batch.feature_positions[row, 0]) == caption_start + 1  # h_l starts right after <|IC|>
    assert torch.isfinite(text_loss(output.logits, output.labels))


def test_gradients_reach_special_tokens_and_trainable_vlm_parts(vlm, encoded):
    special = torch.randn(2, 64, generator=torch.Generator().manual_seed(3)).mul(0.02).requires_grad_(True)
    projector = vlm.model.model.multi_modal_projector
    vlm.model.requires_grad_(False)
    projector.requires_grad_(True)
    try:
        output = teacher_force(vlm, _batch(vlm, _examples(encoded)), special, LAYERS, with_text_logits=True)
        features = output.features
        loss = features.caption_hidden_states.pow(2).mean() + features.image_features.pow(2).mean()
        (loss + text_loss(output.logits, output.labels)).backward()
        assert special.grad is not None and (special.grad.abs().sum(dim=1) > 0).all()  # both rows
        assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in projector.parameters())
        assert vlm.model.lm_head.weight.grad is None  # frozen stays frozen
    finally:
        projector.requires_grad_(False)
        projector.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def history_picture_only(vlm, special, encoded):
    """A turn without a picture after one with a picture."""
    options = dict(readout=AdapterReadout(special, tuple(LAYERS), K))
    return encode(vlm, encoded[1].session, "Now make it green", None,
                  options=TurnOptions("image_editing", max_new_tokens=6), **options)


@pytest.mark.parametrize("pictures", ["none", "in the history only"])
def test_blank_picture_runs_the_image_path_and_changes_nothing(vlm, special, encoded, history_picture_only, pictures):
    """Sharded parameters (ZeRO-3, FSDP): a batch without pictures encodes the blank one, and one
    without new pictures gives the adapter masked-out f_img, so the projector's forward and
    backward and the adapter's image branch run as for a batch with new pictures, and every
    output the losses read is exactly what it is without."""
    result = encoded[0] if pictures == "none" else history_picture_only
    batch = _batch(vlm, _examples([result]))
    assert ("pixel_values" in batch.processor_inputs) == (pictures != "none")
    projector = vlm.model.model.multi_modal_projector
    projector.requires_grad_(True)
    try:
        plain = teacher_force(vlm, batch, special, LAYERS, with_text_logits=True)
        assert plain.features.image_features is None
        with_blank = teacher_force(vlm, batch, special, LAYERS, with_text_logits=True,
                                   blank_picture=vlm.blank_picture_inputs())
        for name in ("caption_hidden_states", "answer_embedding", "caption_embedding"):
            torch.testing.assert_close(getattr(with_blank.features, name), getattr(plain.features, name), atol=0, rtol=0)
        torch.testing.assert_close(with_blank.logits, plain.logits, atol=0, rtol=0)
        features = with_blank.features
        assert features.image_features.shape[:2] == features.image_mask.shape and not features.image_mask.any()
        text_loss(with_blank.logits, with_blank.labels).backward()  # reaches the projector through the embeddings
        for parameter in projector.parameters():
            assert parameter.grad is not None
            assert parameter.grad.any() == (pictures != "none")  # the blank picture enters with weight 0
    finally:
        projector.requires_grad_(False)
        projector.zero_grad(set_to_none=True)


def test_tokenizing_known_answers_and_captions(vlm):
    ids = continuation_token_ids(vlm.tokenizer, "  A red fox sits in the snow. ")
    assert vlm.tokenizer.decode(ids) == " A red fox sits in the snow."
    turn = ChatTurn("Draw", answer="Sure.", caption="a red fox in the snow and the forest", task="image_editing")
    example = forced_turn(vlm.tokenizer, turn, max_answer_tokens=50, max_caption_tokens=3)
    assert len(example.caption_ids) == 3 and vlm.tokenizer.decode(list(example.answer_ids)) == " Sure."
    with pytest.raises(TeacherForcingError, match="no caption"):
        forced_turn(vlm.tokenizer, ChatTurn("Draw"), max_answer_tokens=50, max_caption_tokens=50)
    with pytest.raises(TeacherForcingError, match="more than the 20 allowed"):
        prepare_batch(vlm.processor, [example], num_image_tokens=K, max_length=20, pad_token_id=3)
