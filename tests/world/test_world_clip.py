"""The world's CLIP (InterRel's scorer): its config is checked before any work, it learns
the world's captions, and the shipped folder loads through the evaluation code's own loader
and matches held-out pictures to their captions."""

from __future__ import annotations

import math

import pytest
import torch

from train.evaluate.clip_model import image_tensor, load_local_clip
from train.world.__main__ import main
from train.world.clip import heldout_scenes, retrieval, train_clip
from train.world.config import ClipConfig
from train.world.language import caption
from train.world.layout import SHIPPED
from train.world.render import render

TINY_CLIP = dict(width=32, layers=1, image_size=32, batch_size=16, warmup_steps=2, checkpoint_every=100,
                 evaluate_every=100, eval_images=32, learning_rate=3e-3)


@pytest.mark.parametrize("flags, field", [
    (["--width", "48"], "width"),
    (["--patch-size", "7"], "patch_size"),
    (["--layers", "0"], "layers"),
])
def test_a_bad_clip_config_is_refused_before_any_work(tmp_path, capsys, flags, field):
    out = tmp_path / "run"
    assert main(["clip", "--out", str(out), *flags]) == 2
    assert field in capsys.readouterr().err
    assert not out.exists()


def test_the_clip_learns_the_worlds_captions_on_a_short_schedule(tmp_path):
    """CLIP's contrastive loss falls well below its start (ln 16 for a batch of 16) in 100 steps."""
    curve = train_clip(ClipConfig(out=str(tmp_path), steps=100, **TINY_CLIP))
    assert curve[-1]["loss"] < 0.7 * math.log(16)
    clip = load_local_clip(tmp_path / "clip", torch.device("cpu"))
    assert clip.embed_texts(["a small red star at the top left on a grey background"]).shape == (1, 32)


def test_the_shipped_clip_matches_held_out_pictures_to_their_captions():
    clip = load_local_clip(SHIPPED.clip, torch.device("cpu"))
    scenes = heldout_scenes(seed=7, count=64)  # not the training run's evaluation set
    captions = [caption(scene) for scene in scenes]
    scores = retrieval(clip.embed_texts(captions), clip.embed_images([image_tensor(render(s)) for s in scenes]),
                       captions)
    # measured: 0.84 and 0.88 (chance: 1/64); among the 256 of training's evaluation, 0.57 and 0.55
    assert scores["image_to_caption"] >= 0.7 and scores["caption_to_image"] >= 0.7
