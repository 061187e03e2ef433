"""python -m train.world {data,judge,vae,unet,vlm,clip,measure,build,diffusers,checkpoint,m3ft,report}
    --out PATH [--field VALUE ...]"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from ..cli import EXIT_CONFIG_ERROR, configure_logging
from ..config import ConfigError
from ..config_loading import coerce
from .comfyui import ComfyUIMissingError
from .config import (
    BuildConfig,
    CheckpointConfig,
    ClipConfig,
    DataConfig,
    DiffusersConfig,
    JudgeConfig,
    M3ftConfig,
    MeasureConfig,
    ReportConfig,
    UnetConfig,
    VaeConfig,
    VlmConfig,
)
from .layout import WeightsLayout
from .loop import ResumeError

COMMANDS = {"data": DataConfig, "judge": JudgeConfig, "vae": VaeConfig, "unet": UnetConfig, "vlm": VlmConfig,
            "clip": ClipConfig, "measure": MeasureConfig, "build": BuildConfig, "diffusers": DiffusersConfig,
            "checkpoint": CheckpointConfig, "m3ft": M3ftConfig, "report": ReportConfig}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.world", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, config_class in COMMANDS.items():
        command = commands.add_parser(name, help=(config_class.__doc__ or "").strip(),
                                      argument_default=argparse.SUPPRESS)
        for item in dataclasses.fields(config_class):
            required = item.default is dataclasses.MISSING
            command.add_argument(f"--{item.name.replace('_', '-')}", dest=item.name, required=required,
                                 help="required" if required else f"default: {item.default!r}")
    return parser


def parse_config(argv: list[str] | None = None):
    """The chosen command's config, built from its flags; ConfigError names a bad field."""
    arguments = vars(build_parser().parse_args(argv))
    config_class = COMMANDS[arguments.pop("command")]
    hints = typing.get_type_hints(config_class)
    values = {name: coerce(name, value, hints[name]) for name, value in arguments.items()}
    return config_class(**values)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        config = parse_config(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        run(config)
    except (ResumeError, ComfyUIMissingError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0


def run(config) -> None:
    if isinstance(config, DataConfig):
        from .dataset import write_data
        write_data(config)
    elif isinstance(config, JudgeConfig):
        from .training import train_judge
        train_judge(config)
    elif isinstance(config, VaeConfig):
        from .training import train_vae
        train_vae(config)
    elif isinstance(config, UnetConfig):
        from .unet_training import train_unet
        train_unet(config)
    elif isinstance(config, BuildConfig):
        from .build import build
        build(config)
    elif isinstance(config, DiffusersConfig):
        from .diffusers_folder import write_diffusers_folder
        write_diffusers_folder(config)
    elif isinstance(config, CheckpointConfig):
        from .checkpoint import write_checkpoint
        write_checkpoint(Path(config.out), WeightsLayout(Path(config.weights)))
    elif isinstance(config, VlmConfig):
        from .vlm_training import train_vlm
        train_vlm(config)
    elif isinstance(config, ClipConfig):
        from .clip import train_clip
        train_clip(config)
    elif isinstance(config, ReportConfig):  # before M3ftConfig, which it extends
        from .report import write_report
        write_report(config)
    elif isinstance(config, M3ftConfig):
        from .m3ft import run_m3ft
        run_m3ft(config)
    else:
        from .measure import measure
        measure(config)


if __name__ == "__main__":
    sys.exit(main())
