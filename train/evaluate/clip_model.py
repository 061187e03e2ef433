"""The CLIP that scores CLIP and InterRel, from a local folder (never a hub name).

transformers 5's `get_image_features` / `get_text_features` return model outputs where
torchmetrics' CLIPScore expects the projected embeddings; `PooledCLIPModel` returns those.
Images go in as RGB, channel-first uint8 tensors (the authors' script fed BGR, HWC).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

logger = logging.getLogger(__name__)


class CLIPLoadError(FileNotFoundError):
    """The CLIP folder cannot be loaded offline."""


class PooledCLIPModel(CLIPModel):
    """CLIPModel whose feature methods return the projected (B, D) embeddings."""

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return super().get_image_features(pixel_values=pixel_values, **kwargs).pooler_output

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **kwargs) -> torch.Tensor:
        return super().get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs).pooler_output


@dataclass
class LocalCLIP:
    """A CLIP model and its processor; `description` names the backbone in reports."""

    model: PooledCLIPModel
    processor: CLIPProcessor
    description: str

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit-norm text embeddings; texts past CLIP's context are truncated."""
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        input_ids, attention_mask = inputs["input_ids"].to(self.device), inputs["attention_mask"].to(self.device)
        features = self.model.get_text_features(input_ids, attention_mask)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def embed_images(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, D) unit-norm image embeddings of uint8 (3, H, W) RGB images."""
        inputs = self.processor(images=[image.cpu() for image in images], return_tensors="pt")
        features = self.model.get_image_features(inputs["pixel_values"].to(self.device, self.model.dtype))
        return torch.nn.functional.normalize(features.float(), dim=-1)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a uint8 (3, H, W) RGB tensor."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_local_clip(folder: str | Path, device: torch.device) -> LocalCLIP:
    folder = Path(folder)
    try:
        model = PooledCLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise CLIPLoadError(
            f"Cannot load CLIP from {folder} offline ({error}); expected a CLIPModel + CLIPProcessor "
            "save_pretrained folder (config.json, model.safetensors, preprocessor_config.json, tokenizer files)."
        ) from error
    vision, text = model.config.vision_config, model.config.text_config
    description = (
        f"{folder.name} (CLIP ViT, {vision.image_size} px input, patch {vision.patch_size}, "
        f"vision width {vision.hidden_size} x {vision.num_hidden_layers} layers, text width {text.hidden_size}, "
        f"embedding {model.config.projection_dim})"
    )
    logger.info("Scoring with CLIP %s", description)
    return LocalCLIP(model.eval().to(device), processor, description)
