"""The ComfyUI SDXL conditioning contract built from the adapter's outputs."""

import pytest
import torch

from m2chat_core.conditioning import ConditioningShapeError, sdxl_conditioning, zero_negative

CONTRACT_KEYS = {"pooled_output", "width", "height", "crop_w", "crop_h", "target_width", "target_height"}


@pytest.mark.parametrize("batch_size", [1, 4])
def test_contract_keys_and_shapes(batch_size):
    context = torch.randn(batch_size, 77, 2048)
    pooled = torch.randn(batch_size, 1280)
    conditioning = sdxl_conditioning(context, pooled, width=1024, height=768)
    assert isinstance(conditioning, list) and len(conditioning) == 1
    cond, options = conditioning[0]
    assert cond is context and options["pooled_output"] is pooled
    assert set(options) == CONTRACT_KEYS
    assert (options["width"], options["height"]) == (1024, 768)
    assert (options["target_width"], options["target_height"]) == (1024, 768)
    assert (options["crop_w"], options["crop_h"]) == (0, 0)


def test_target_size_can_differ():
    conditioning = sdxl_conditioning(
        torch.zeros(1, 77, 2048),
        torch.zeros(1, 1280),
        width=2048,
        height=2048,
        target_width=1024,
        target_height=512,
    )
    options = conditioning[0][1]
    assert (options["width"], options["target_width"], options["target_height"]) == (2048, 1024, 512)


def test_zero_negative_matches_positive_with_zeros():
    positive = sdxl_conditioning(
        torch.randn(3, 77, 2048, dtype=torch.float16),
        torch.randn(3, 1280, dtype=torch.float16),
        width=832,
        height=1216,
    )
    negative = zero_negative(positive)
    cond, options = negative[0]
    assert set(options) == CONTRACT_KEYS
    assert cond.shape == (3, 77, 2048) and cond.dtype == torch.float16 and not cond.any()
    assert options["pooled_output"].shape == (3, 1280) and not options["pooled_output"].any()
    assert {key: value for key, value in options.items() if key != "pooled_output"} == {
        key: value for key, value in positive[0][1].items() if key != "pooled_output"
    }
    assert positive[0][0].any(), "the positive must not be zeroed in place"


@pytest.mark.parametrize(
    ("context_shape", "pooled_shape", "message"),
    [
        ((1, 77, 768), (1, 1280), "context"),
        ((77, 2048), (1, 1280), "context"),
        ((0, 77, 2048), (0, 1280), "B >= 1"),
        ((2, 77, 2048), (2, 1, 1280), "pooled"),
        ((2, 77, 2048), (3, 1280), "same adapter call"),
    ],
)
def test_bad_shapes_are_refused(context_shape, pooled_shape, message):
    with pytest.raises(ConditioningShapeError, match=message):
        sdxl_conditioning(torch.zeros(context_shape), torch.zeros(pooled_shape), width=1024, height=1024)


def test_bad_sizes_and_bad_positive_are_refused():
    with pytest.raises(ConditioningShapeError, match="height"):
        sdxl_conditioning(torch.zeros(1, 77, 2048), torch.zeros(1, 1280), width=1024, height=0)
    with pytest.raises(ConditioningShapeError, match="sdxl_conditioning"):
        zero_negative([])


def test_batching_captions_of_different_lengths_leaves_each_panels_attention_unchanged():
    from m2chat_core.conditioning import batch_token_sequences

    generator = torch.Generator().manual_seed(0)
    short, long = torch.randn(1, 77, 32, generator=generator), torch.randn(1, 154, 32, generator=generator)
    batched = batch_token_sequences([short, long])
    assert batched.shape == (2, 154, 32) and torch.equal(batched[1:], long)
    queries = torch.randn(1, 5, 32, generator=generator)

    def attend(context):  # what a cross-attention layer of the UNet reads from a panel's tokens
        return torch.nn.functional.scaled_dot_product_attention(queries, context, context)

    torch.testing.assert_close(attend(batched[:1]), attend(short), atol=1e-6, rtol=1e-6)
    zero_padded = torch.nn.functional.pad(short, (0, 0, 0, 77))
    assert not torch.allclose(attend(zero_padded), attend(short), atol=1e-3)  # what padding with zeros did
    assert batch_token_sequences([short, torch.randn(1, 231, 32)]).shape[1] == 231  # lcm(77, 231)
