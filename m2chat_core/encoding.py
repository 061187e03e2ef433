"""What the VLM encoder hands to the M³Adapter (the contract between the two)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VLMFeatures:
    """Features of one encode call, batch-first; B is the number of prompts encoded.

    caption_hidden_states: (B, L, T, H_vlm) hidden states of the L chosen VLM layers at
        the caption and <|img|> token positions, t_{cap,img} in the paper (h_l).
    caption_mask: (B, T) bool, True where caption_hidden_states holds a real token.
    answer_embedding: (B, H_vlm) mean last-layer hidden state over answer tokens (e_ans).
    caption_embedding: (B, H_vlm) mean last-layer hidden state over caption tokens (e_cap).
    has_answer: (B,) bool, False where the turn produced no answer text.
    image_features: (B, P, D_vis) vision-tower patch features of the input images
        (f_img), or None when the turn has no image.
    image_mask: (B, P) bool, or None with image_features.
    """

    caption_hidden_states: torch.Tensor
    caption_mask: torch.Tensor
    answer_embedding: torch.Tensor
    caption_embedding: torch.Tensor
    has_answer: torch.Tensor
    image_features: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None
