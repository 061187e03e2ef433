"""Typed configs: YAML + dotted overrides from one definition, validated before any model loads."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

import train
from train.cli import EXIT_CONFIG_ERROR, build_parser, parse_command_line
from m2chat_core.m3ft_settings import TRAINABLE_GROUPS, AdapterArchitecture
from train.config import AdapterConfig, ConfigError, Stage1Config, Stage2Config
from train.config_loading import apply_overrides, build_config, field_paths, read_yaml

CONFIGS = Path(train.__file__).resolve().parent / "configs"
REPO_CONFIGS = ("paper_stage1", "paper_stage2", "tiny_stage1", "tiny_stage2", "world_stage1")


def test_yaml_then_overrides_build_the_typed_config(runner, tmp_path):
    config = parse_command_line(
        Stage1Config,
        runner.overrides(1, tmp_path)
        + ["--optim.lr", "1e-4", "--adapter.chosen_layers", "[-1, 3]", "--engine.mixed_precision", "no",
           "--model.gradient_checkpointing", "true", "--optim.betas", "0.8,0.9"],
    )
    assert isinstance(config, Stage1Config)
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    assert config.adapter.chosen_layers == (-1, 3)
    assert config.optim.betas == (0.8, 0.9)
    assert config.engine.mixed_precision == "no"  # YAML 1.1 would have read a boolean
    assert config.model.gradient_checkpointing is True
    assert config.optim.batch_size == 2  # from tiny_stage1.yaml
    assert config.groups == ("adapter", "special_tokens")


def test_every_field_has_a_flag_generated_from_the_dataclass():
    for config_class in (Stage1Config, Stage2Config):
        flags = {action.dest for action in build_parser(config_class)._actions}
        assert set(field_paths(config_class)) <= flags
    assert "init_from" in field_paths(Stage2Config) and "init_from" not in field_paths(Stage1Config)
    assert "adapter.width" in field_paths(Stage1Config) and "lora.rank" in field_paths(Stage2Config)


@pytest.mark.parametrize("name", REPO_CONFIGS)
def test_shipped_configs_use_only_known_fields(name, runner):
    config_class = Stage1Config if name.endswith("1") else Stage2Config
    values = read_yaml(CONFIGS / f"{name}.yaml")
    # Paths of the paper setup do not exist here: point them at the tiny assets.
    overrides = {"model.vlm": str(runner.assets / "vlm"), "model.sdxl": str(runner.assets / "sdxl")}
    if config_class is Stage1Config:
        overrides |= {"data.train": [str(runner.assets / "shards")], "data.validation": []}
    else:
        overrides |= {"data.train": [str(runner.assets / "dialogue" / "train.jsonl")], "data.validation": [],
                      "init_from": str(runner.assets / "vlm" / "model.safetensors")}
    config = build_config(config_class, apply_overrides(values, overrides), source=name)
    assert config.stage == (1 if config_class is Stage1Config else 2)
    if name.startswith("paper"):
        assert config.optim.lr == (1e-4 if config.stage == 1 else 1e-5)
        assert config.optim.batch_size == (8 if config.stage == 1 else 1)


@pytest.mark.parametrize(
    ("stage", "extra", "field"),
    [
        (1, ["--optim.lrr", "1"], "--optim.lrr"),
        (1, ["--optim.lr", "-1"], "optim.lr"),
        (1, ["--loss.phi", "0", "--loss.ddpm_weight", "0"], "loss.ddpm_weight and phi are both 0"),
        (2, [], "init_from"),
        (1, ["--data.train", "[/no/such/shards/*.tar]"], "data.train"),
        (1, ["--model.vlm", "/no/such/vlm"], "model.vlm"),
        (1, ["--adapter.width", "66"], "adapter.width"),
        (1, ["--adapter.chosen_layers", "[-1, -1]"], "adapter.chosen_layers lists a layer twice"),
        (1, ["--adapter.chosen_layers", "[-1, 9]"], "adapter.chosen_layers [9] are not hidden-state indices"),
    ],
)
def test_invalid_configs_fail_before_any_model_loads(runner, tmp_path, stage, extra, field):
    result = runner.run(stage, runner.overrides(stage, tmp_path) + extra)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert field in result.stderr
    assert "Loaded VLM" not in result.stderr
    assert not (tmp_path / "config.yaml").exists()  # nothing was started


def test_unknown_yaml_field_and_wrong_types_name_the_field(runner, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("optim:\n  lr: 1.0e-4\n  lr_schedule: cosine\n")
    with pytest.raises(ConfigError, match=r"unknown field optim\.lr_schedule in .*bad\.yaml"):
        parse_command_line(Stage1Config, ["--config", str(bad_yaml)])
    arguments = runner.overrides(1, tmp_path)
    with pytest.raises(ConfigError, match=r"optim\.batch_size must be int, got 'two'"):
        parse_command_line(Stage1Config, arguments + ["--optim.batch_size", "two"])
    with pytest.raises(ConfigError, match=r"groups must list distinct groups"):
        parse_command_line(Stage1Config, arguments + ["--groups", "[adapter, gate]"])
    with pytest.raises(ConfigError, match=r"model\.weight_dtype .* needs engine\.mixed_precision"):
        parse_command_line(Stage1Config, arguments + ["--model.weight_dtype", "bfloat16"])


def test_adapter_settings_are_defined_once_for_training_and_the_adapter_file():
    """train's AdapterConfig and the file's M3AdapterConfig extend the one torch-free
    AdapterArchitecture: training adds only its own knob, nothing is repeated."""
    from m2chat_core.adapter import M3AdapterConfig

    shared = [item.name for item in fields(AdapterArchitecture)]
    assert [item.name for item in fields(AdapterConfig)] == [*shared, "mean_init_samples"]
    assert issubclass(M3AdapterConfig, AdapterArchitecture)
    core = M3AdapterConfig(vlm_hidden_size=8, vision_feature_size=8)
    assert all(getattr(core, name) == getattr(AdapterConfig(), name) for name in shared)
    assert Stage1Config.allowed_groups == TRAINABLE_GROUPS[1] and Stage2Config.allowed_groups == TRAINABLE_GROUPS[2]
