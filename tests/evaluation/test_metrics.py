"""The paper's metrics against hand-computed values on tiny inputs."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from scipy.optimize import linear_sum_assignment
from torchvision.models.inception import Inception3

from train.evaluate.clip_model import image_tensor, load_local_clip
from train.evaluate.feature_extractors import (
    FeatureExtractorError,
    _FIDInceptionA,
    _FIDInceptionEMaxPool,
    load_feature_extractor,
)
from train.evaluate.metrics import clip_score, frechet_distances, inter_rel, text_scores
from train.evaluate.tiny_assets import build_tiny_clip, build_tiny_fid_weights
from train.tiny_assets import caption


# --- BLEU-1, BLEU-2, ROUGE-L ----------------------------------------------------------------


def test_identical_text_scores_100_and_disjoint_text_0():
    texts = ["a red fox sleeps in the forest", "The cat reads a book"]
    assert text_scores(texts, texts) == pytest.approx({"bleu1": 100.0, "bleu2": 100.0, "rouge_l": 100.0})
    disjoint = text_scores(["green whale swims", "owl flies"], ["a red fox sleeps", "the cat reads"])
    assert disjoint == pytest.approx({"bleu1": 0.0, "bleu2": 0.0, "rouge_l": 0.0})


def test_partial_match_equals_hand_computed_values():
    # "the cat sat" vs "the cat sat down": 1- and 2-gram precisions 1, brevity penalty
    # exp(1 - 4/3); LCS 3, precision 1, recall 3/4, F1 = 6/7. Case is ignored.
    scores = text_scores(["The cat sat"], ["the cat sat down"])
    brevity = math.exp(1 - 4 / 3)
    assert scores["bleu1"] == pytest.approx(100 * brevity, abs=1e-3)
    assert scores["bleu2"] == pytest.approx(100 * brevity, abs=1e-3)
    assert scores["rouge_l"] == pytest.approx(100 * 6 / 7, abs=1e-3)


# --- InterRel (Eq. 8) -------------------------------------------------------------------------


def _unit(degrees: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])


def test_inter_rel_averages_cross_modal_products_at_turns_i_and_i_plus_1():
    reference_text = [_unit(0), _unit(90)]
    reference_images = [_unit(0), _unit(60)]
    generated_text = [_unit(90), _unit(0)]
    generated_images = [_unit(60), _unit(180)]
    # text -> image: e0·ẽ0 = cos 60, e0·ẽ1 = cos 180, e1·ẽ1 = cos 90
    # image -> text: e0·ẽ0 = cos 90, e0·ẽ1 = cos 0,   e1·ẽ1 = cos 60
    expected = 100 * (0.5 - 1 + 0 + 0 + 1 + 0.5) / 6
    value = inter_rel(reference_text, reference_images, generated_text, generated_images)
    assert value == pytest.approx(expected, abs=1e-5)


def test_inter_rel_skips_turns_without_an_embedding():
    # Only reference text 0 and generated image 1 exist: one product, at i, i+1 = 0, 1.
    value = inter_rel([_unit(0), None], [None, None], [None, None], [None, _unit(60)])
    assert value == pytest.approx(50.0, abs=1e-5)
    assert inter_rel([_unit(0)], [None], [None], [None]) is None
    with pytest.raises(ValueError, match="one"):
        inter_rel([_unit(0)], [None, None], [None], [None])


# --- FID --------------------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(tmp_path):
    extractor = load_feature_extractor("tiny_conv", build_tiny_fid_weights(tmp_path / "fid.safetensors", seed=0))
    generator = torch.Generator().manual_seed(0)
    real = [torch.randint(0, 160, (3, 32, 32), generator=generator, dtype=torch.uint8) for _ in range(24)]
    shifted = [image + 90 for image in real]
    distances = frechet_distances(extractor, real, {"same": real, "shifted": shifted}, batch_size=5)
    assert abs(distances["same"]) < 1e-3
    assert distances["shifted"] > 0.05 and distances["shifted"] > 100 * abs(distances["same"])


def test_fid_extractor_stays_in_eval_mode_and_refuses_other_weights(tmp_path):
    weights = build_tiny_fid_weights(tmp_path / "fid.safetensors")
    extractor = load_feature_extractor("tiny_conv", weights)
    extractor.train()
    assert not extractor.training
    with pytest.raises(FeatureExtractorError, match="fid.safetensors.*fid_inception_v3"):
        load_feature_extractor("fid_inception_v3", weights)
    not_safetensors = tmp_path / "weights.safetensors"
    not_safetensors.write_bytes(b"PK\x03\x04 a pickled checkpoint")
    with pytest.raises(FeatureExtractorError, match="weights.safetensors"):
        load_feature_extractor("tiny_conv", not_safetensors)


def test_fid_inception_loads_pytorch_fid_layout_and_gives_2048_features(tmp_path):
    # pytorch-fid's weights are torchvision's Inception3 state dict with 1008 classes, no aux head.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    path = tmp_path / "pt_inception.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in reference.state_dict().items()}, path)
    extractor = load_feature_extractor("fid_inception_v3", path)
    features = extractor(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert features.shape == (1, 2048) and torch.isfinite(features).all()
    assert torch.equal(extractor.Mixed_7c.branch_pool.conv.weight, reference.Mixed_7c.branch_pool.conv.weight)


def test_fid_inception_blocks_pool_as_the_tensorflow_graph():
    x = torch.randn(1, 16, 5, 5)
    block_a = _FIDInceptionA(16, pool_features=8).eval()
    pool_branch = block_a(x)[:, -8:]
    assert torch.allclose(pool_branch, block_a.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)))
    assert not torch.allclose(pool_branch, block_a.branch_pool(F.avg_pool2d(x, 3, 1, 1)))  # padding left out
    block_e = _FIDInceptionEMaxPool(16).eval()
    assert torch.allclose(block_e(x)[:, -192:], block_e.branch_pool(F.max_pool2d(x, 3, 1, 1)))


# --- CLIP score -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return load_local_clip(build_tiny_clip(tmp_path_factory.mktemp("clip"), seed=0), torch.device("cpu"))


def _images() -> list[Image.Image]:
    images = []
    for index, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 50, 210), (230, 210, 30)]):
        image = Image.new("RGB", (48, 40), colour)
        ImageDraw.Draw(image).ellipse((4 * index, 5, 20 + 4 * index, 30), fill=(255 - colour[0], 90, colour[1]))
        images.append(image)
    return images


def _direct_cosines(clip, images: list[Image.Image], captions: list[str]) -> torch.Tensor:
    """(images, captions) cosines straight from the model and processor on PIL images."""
    with torch.no_grad():
        pixel_values = clip.processor(images=images, return_tensors="pt")["pixel_values"]
        image_features = clip.model.get_image_features(pixel_values)
        tokens = clip.processor(text=captions, return_tensors="pt", padding=True)
        text_features = clip.model.get_text_features(tokens["input_ids"], tokens["attention_mask"])
    return F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


def test_image_tensor_is_rgb_channel_first():
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    tensor = image_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.uint8
    assert tensor[:, 0, 0].tolist() == [10, 20, 30]


def test_clip_score_equals_hand_computed_and_prefers_image_derived_captions(clip):
    images = _images()
    rng = random.Random(0)
    candidates = sorted({caption(rng) for _ in range(40)})
    cosines = _direct_cosines(clip, images, candidates)
    # Image-derived captions: the distinct captions that fit the images best as a whole.
    _, columns = linear_sum_assignment(cosines.numpy(), maximize=True)
    derived = [candidates[column] for column in columns]
    shuffled = derived[1:] + derived[:1]

    tensors = [image_tensor(image) for image in images]
    matched_score = clip_score(clip, tensors, derived, batch_size=3)
    shuffled_score = clip_score(clip, tensors, shuffled, batch_size=3)
    expected = max(100 * float(_direct_cosines(clip, images, derived).diagonal().mean()), 0.0)
    assert matched_score == pytest.approx(expected, abs=1e-3)
    assert matched_score > shuffled_score
    bgr_score = clip_score(clip, [tensor.flip(0) for tensor in tensors], derived, batch_size=3)
    assert bgr_score != pytest.approx(matched_score, abs=1e-3)  # channel order reaches the model
