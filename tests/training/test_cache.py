"""The precompute cache of the frozen parts: faithful values, reuse across runs, new keys
when an input changes, and training with it matches training without it in both stages."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import torch

from m2chat_core.adapter_file import load_adapter_file
from train.cache import CacheSettings, build_target_cache
from train.cli import parse_command_line
from train.config import Stage1Config, Stage2Config
from train.data.samples import SkippedSample, TrainingSample
from train.data.shards import ImageTextShards
from train.sdxl import FrozenEncoders, load_sdxl
from train.tiny_assets import BAD_SAMPLES
from train.trainer import DEFAULT_EXPORT_NAME, Trainer


@pytest.fixture(scope="module")
def frozen(assets):
    return FrozenEncoders(load_sdxl(assets / "sdxl", None, torch.float32, torch.device("cpu")))


def _settings(folder, frozen, **changes):
    values = dict(folder=folder, dtype="float32", resolution=64, crop="center", seed=0, sdxl_identity=frozen.parts.identity)
    return CacheSettings(**(values | changes))


def test_cached_rows_equal_the_frozen_encoders_and_keep_skips(assets, frozen, tmp_path, caplog, capsys, one_thread,
                                                              umask_022):
    shard = tmp_path / "shard.tar"
    shard.write_bytes((assets / "shards" / "train-000000.tar").read_bytes())
    source = ImageTextShards([shard], resolution=64, crop="center", seed=0)
    cache = build_target_cache(source, frozen, _settings(tmp_path / "cache", frozen))
    bar = capsys.readouterr().err  # a progress bar over the samples while it encodes
    assert "M³FT target cache: 100%" in bar and f"| {len(source)}/{len(source)} [" in bar

    rows = [cache.row(index) for index in range(len(source))]
    assert sorted(row.reason for row in rows if isinstance(row, SkippedSample)) == sorted(BAD_SAMPLES)
    sample = source.load(5, decode_target=True)
    assert isinstance(sample, TrainingSample)
    context, pooled = frozen.caption_targets([sample.turn.caption])
    mean, std = frozen.latent_distribution(sample.target.pixels[None])
    torch.testing.assert_close(rows[5].context, context[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows[5].pooled, pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows[5].latent_mean, mean[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows[5].latent_std, std[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(rows[5].time_ids, sample.target.time_ids)

    with caplog.at_level(logging.INFO, logger="train.cache"):
        build_target_cache(source, frozen, _settings(tmp_path / "cache", frozen))
        assert "0 chunks computed, 1 reused" in caplog.text
        assert "target cache" not in capsys.readouterr().err  # nothing to encode: no bar
        caplog.clear()
        build_target_cache(source, frozen, _settings(tmp_path / "cache", frozen, resolution=32))
        assert "1 chunks computed, 0 reused" in caplog.text
        caplog.clear()
        os.utime(shard, ns=(0, 0))  # the data file changed
        build_target_cache(source, frozen, _settings(tmp_path / "cache", frozen))
        assert "1 chunks computed, 0 reused" in caplog.text
    chunks = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(chunks) == 3
    assert {stat.S_IMODE(chunk.stat().st_mode) for chunk in chunks} == {0o644}  # not safetensors' own 0o600
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left


@pytest.mark.parametrize("stage", [1, 2])
def test_training_with_the_cache_matches_training_without(runner, stage1, stage, tmp_path, one_thread):
    config_class, start = ((Stage1Config, []) if stage == 1 else
                           (Stage2Config, [f"--init-from={stage1[0] / DEFAULT_EXPORT_NAME}"]))
    exports = []
    for name, cache_options in (("plain", []), ("cached", ["--cache.enabled=true", "--cache.dtype=float32"])):
        arguments = runner.overrides(stage, tmp_path / name) + start + cache_options + [
            f"--cache.dir={tmp_path / 'cache'}", "--optim.max_steps=3", "--data.validation=[]",
            "--engine.checkpoint_every=0", "--engine.report_to=none",
        ]
        exports.append(load_adapter_file(Trainer(parse_command_line(config_class, arguments)).fit().export_path))
    assert list((tmp_path / "cache").glob("*.safetensors"))  # the cached run read its targets from there
    plain, cached = (export.adapter_state for export in exports)
    # Float-level differences between cached and recomputed encodings reach the weights
    # through Adam (lr 1e-3), which rescales near-zero gradients: up to ~1e-4 per element
    # after 3 steps (1.1e-4 measured with the noise keyed by global batch). A wrong cache
    # row changes the gradients themselves and moves most weights by about lr per step.
    assert max(float((plain[name] - cached[name]).abs().max()) for name in plain) < 2e-4
