"""FID feature extractors built here and loaded from local .safetensors files, never
downloaded: torchmetrics' FrechetInceptionDistance takes them as `feature=`.

fid_inception_v3  Inception-v3 as the FID reference network (the TensorFlow 2015-12-05
                  graph, in pytorch-fid's port): 2048 pool3 features. Weights: pytorch-fid's
                  state dict (torchvision Inception3 names, 1008 classes) as safetensors;
                  the classifier (fc.*) is not used.
tiny_conv         two seeded convolutions (16 features), for tests on CPU.

Both take uint8 (B, 3, H, W) RGB images, as FrechetInceptionDistance passes them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torchvision.models import inception

logger = logging.getLogger(__name__)

FID_INPUT_SIZE = 299


class FeatureExtractorError(ValueError):
    """The weights file does not hold the named feature extractor."""


class FrozenFeatureExtractor(nn.Module):
    """Always in eval mode: a Metric's .train() must not switch BatchNorm to batch statistics."""

    num_features: int

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:
        return super().train(False)


# Inception-v3 of the FID graph differs from torchvision's only in its pooling branches:
# average pools that leave padding out of the mean, and a max pool in the last block.
# Each block reuses torchvision's branches and recomputes the pooling branch (a 1x1
# convolution, a few percent of the network's work).


class _FIDPoolingBranch:
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = super()._forward(x)
        outputs[-1] = self.branch_pool(self.fid_pool(x))
        return outputs

    @staticmethod
    def fid_pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _FIDInceptionA(_FIDPoolingBranch, inception.InceptionA):
    pass


class _FIDInceptionC(_FIDPoolingBranch, inception.InceptionC):
    pass


class _FIDInceptionE(_FIDPoolingBranch, inception.InceptionE):
    pass


class _FIDInceptionEMaxPool(_FIDPoolingBranch, inception.InceptionE):
    @staticmethod
    def fid_pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class FIDInceptionV3(FrozenFeatureExtractor):
    """Images resized to 299² (bilinear) and scaled to [-1, 1]; the 2048 features after
    the last average pool. Module names follow torchvision's Inception3."""

    num_features = 2048

    def __init__(self) -> None:
        super().__init__()
        conv = inception.BasicConv2d
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = _FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = _FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = _FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = inception.InceptionB(288)
        self.Mixed_6b = _FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = _FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = _FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = inception.InceptionD(768)
        self.Mixed_7b = _FIDInceptionE(1280)
        self.Mixed_7c = _FIDInceptionEMaxPool(2048)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class TinyConvFeatures(FrozenFeatureExtractor):
    """Two strided convolutions and a global average pool: 16 features (tests only)."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(8, self.num_features, kernel_size=3, stride=2),
        )
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1
        return F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1)


ARCHITECTURES: dict[str, type[FrozenFeatureExtractor]] = {
    "fid_inception_v3": FIDInceptionV3,
    "tiny_conv": TinyConvFeatures,
}
# Entries a weights file may hold that the extractor does not use.
_UNUSED_PREFIXES = ("fc.", "AuxLogits.")
_UNUSED_SUFFIXES = (".num_batches_tracked",)


def load_feature_extractor(architecture: str, weights: str | Path) -> FrozenFeatureExtractor:
    """The `architecture` extractor with the weights in the .safetensors file `weights`."""
    weights = Path(weights)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as error:
        raise FeatureExtractorError(f"{weights} is not a readable .safetensors file ({error}).") from None
    state = {
        name: tensor for name, tensor in state.items()
        if not name.startswith(_UNUSED_PREFIXES) and not name.endswith(_UNUSED_SUFFIXES)
    }
    extractor = ARCHITECTURES[architecture]()
    expected = {name for name in extractor.state_dict() if not name.endswith(_UNUSED_SUFFIXES)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise FeatureExtractorError(
            f"{weights} does not hold {architecture} weights: {len(missing)} tensors missing "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}). For fid_inception_v3 give "
            "pytorch-fid's FID Inception state dict saved as safetensors."
        )
    try:
        extractor.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise FeatureExtractorError(f"{weights} has tensors of the wrong shape for {architecture}: {error}") from None
    logger.info("Loaded FID feature extractor %s (%d features) from %s", architecture, extractor.num_features, weights)
    return extractor.eval()
