"""The world's training loop: a config checked before any work, an interrupted run that
resumes to the same weights as an uninterrupted one, and a judge that learns."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from train.config import ConfigError
from train.world.__main__ import main
from train.world.config import JudgeConfig, VaeConfig
from train.world.layout import JUDGE_FILE
from train.world.loop import CHECKPOINT_NAME, CURVE_NAME, ResumeError
from train.world.taesd import DECODER_FILE, ENCODER_FILE, load_taesd
from train.world.training import train_judge, train_vae

TINY_JUDGE = dict(width=16, batch_size=4, steps=4, warmup_steps=1, checkpoint_every=2, evaluate_every=2,
                  eval_images=4)


def _tiny_judge(out: Path, **overrides) -> JudgeConfig:
    return JudgeConfig(out=str(out), **(TINY_JUDGE | overrides))


@pytest.mark.parametrize("flags, field", [
    (["judge", "--steps", "0"], "steps"),
    (["judge", "--width", "12"], "width"),
    (["vae", "--crop", "20"], "crop"),
    (["unet", "--ema-decay", "1"], "ema_decay"),
    (["unet", "--init", "no-such-unet.safetensors"], "init"),
    (["data", "--test-fraction", "2"], "test_fraction"),
    (["judge", "--learning-rate", "many"], "learning_rate"),
    (["vlm", "--weight-decay", "-0.1"], "weight_decay"),
])
def test_a_bad_config_is_refused_before_any_work(tmp_path, capsys, flags, field):
    out = tmp_path / "run"
    assert main([flags[0], "--out", str(out), *flags[1:]]) == 2
    assert field in capsys.readouterr().err
    assert not out.exists()


def test_configs_check_their_fields():
    with pytest.raises(ConfigError, match="batch_size"):
        VaeConfig(out="x", batch_size=0)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    whole = tmp_path / "whole"
    train_judge(_tiny_judge(whole))
    parts = tmp_path / "parts"
    curve = train_judge(_tiny_judge(parts), stop_after=2)
    assert [point["step"] for point in curve] == [2] and not (parts / JUDGE_FILE).exists()
    # a checkpoint write that a kill cut short leaves only a temporary file beside it
    (parts / f".{CHECKPOINT_NAME}.0123.tmp").write_bytes(b"half a checkpoint")
    curve = train_judge(_tiny_judge(parts))
    assert [point["step"] for point in curve] == [2, 4]
    expected, resumed = load_file(whole / JUDGE_FILE), load_file(parts / JUDGE_FILE)
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6)
    assert (parts / CURVE_NAME).read_text().count("\n") == 2


def test_resuming_with_other_settings_is_refused_but_a_longer_run_is_allowed(tmp_path):
    train_judge(_tiny_judge(tmp_path, steps=2, bf16=True))
    with pytest.raises(ResumeError, match=r"settings: learning_rate: 0\.\d+ -> 0\.01\. Only"):
        train_judge(_tiny_judge(tmp_path, steps=2, learning_rate=1e-2))
    # longer, and in float32: a run moved to a CPU without bf16 units continues there
    assert [p["step"] for p in train_judge(_tiny_judge(tmp_path, steps=4, bf16=False))] == [2, 4]


def test_a_run_saved_before_weight_decay_existed_resumes(tmp_path):
    train_judge(_tiny_judge(tmp_path), stop_after=2)
    checkpoint = tmp_path / CHECKPOINT_NAME
    with safe_open(checkpoint, framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 - safe_open has no items()
    config = json.loads(metadata["config"])
    del config["weight_decay"]
    save_file(tensors, checkpoint, metadata | {"config": json.dumps(config)})
    assert [p["step"] for p in train_judge(_tiny_judge(tmp_path))] == [2, 4]
    with pytest.raises(ResumeError, match=r"settings: weight_decay: 0\.0 -> 0\.1\. Only"):
        train_judge(_tiny_judge(tmp_path, steps=6, weight_decay=0.1))


def test_weight_decay_pulls_the_trained_weights_towards_zero(tmp_path):
    def squared_norm(out: Path, weight_decay: float) -> float:
        train_judge(_tiny_judge(out, weight_decay=weight_decay))
        return sum(float(tensor.float().square().sum()) for tensor in load_file(out / JUDGE_FILE).values())

    assert squared_norm(tmp_path / "decayed", 20.0) < 0.9 * squared_norm(tmp_path / "plain", 0.0)


def test_vae_run_writes_taesd_files_that_load_back(tmp_path):
    config = VaeConfig(out=str(tmp_path), steps=2, batch_size=1, crop=32, warmup_steps=1, checkpoint_every=1,
                       evaluate_every=2, eval_images=2)
    curve = train_vae(config)
    assert curve[-1]["step"] == 2 and {"train_psnr", "test_psnr", "test_latent_std"} <= curve[-1].keys()
    assert (tmp_path / ENCODER_FILE).is_file() and (tmp_path / DECODER_FILE).is_file()
    model = load_taesd(tmp_path)
    assert model.decoder(model.encoder(torch.rand(1, 3, 32, 32))).shape == (1, 3, 32, 32)


def test_the_judge_learns_on_a_short_schedule(tmp_path):
    """Untrained, no cell's occupancy is right and the background is at chance (1/3);
    after 30 steps both are well above, which a judge whose learning broke never reaches."""
    config = _tiny_judge(tmp_path, batch_size=16, steps=30, warmup_steps=5, learning_rate=3e-3,
                         checkpoint_every=30, evaluate_every=30, eval_images=64)
    first = train_judge(replace(config, steps=1, out=str(tmp_path / "untrained")))[-1]
    last = train_judge(config)[-1]
    assert first["position"] < 0.05
    assert last["loss"] < 0.75 * first["loss"]
    assert last["position"] >= 0.25 and last["background"] >= 0.55


def test_measure_writes_the_judges_figures_per_split_and_for_each_vae_snapshot(tmp_path):
    train_judge(_tiny_judge(tmp_path / "judge", steps=1, evaluate_every=1))
    vae = tmp_path / "vae"
    train_vae(VaeConfig(out=str(vae), steps=1, batch_size=1, crop=32, warmup_steps=0, evaluate_every=1,
                        eval_images=2))
    out = tmp_path / "figures.json"
    assert main(["measure", "--out", str(out), "--judge", str(tmp_path / "judge" / JUDGE_FILE),
                 "--vae", str(vae), "--images", "2"]) == 0
    figures = json.loads(out.read_text())
    assert set(figures["judge"]) == {"train", "test", "any"}
    assert set(figures["judge"]["test"]) == {"position", "shape", "colour", "size", "background", "colour_and_shape",
                                             "all"}
    assert set(figures["vae_snapshots"]) == {"1"}
    assert set(figures["vae"]["test"]) == {"original", "reconstructed"}
