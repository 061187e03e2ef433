"""Command line of the stage entry points: `--config FILE` plus one `--section.field VALUE`
flag per config field, generated from the stage's dataclass (the single source of truth)."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from .config import ConfigError, TrainConfig
from .config_loading import apply_overrides, build_config, field_paths, parse_yaml, read_yaml
from .faults import RunFault

logger = logging.getLogger(__name__)

T = TypeVar("T")

EXIT_CONFIG_ERROR = 2
EXIT_NON_FINITE_LOSS = 3
EXIT_RUN_FAULT = 4  # unreadable data or an output folder that cannot be written


def _defaults(config_class: type) -> dict[str, Any]:
    """Default value of every field path (None where a default needs the other fields)."""
    defaults: dict[str, Any] = {}
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(hints[item.name]):
            nested = _defaults(hints[item.name])
            defaults.update({f"{item.name}.{name}": value for name, value in nested.items()})
        elif item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
    return defaults


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "LIST"
    return getattr(hint, "__name__", str(hint)).upper()


def build_parser(
    config_class: type, prog: str = "", config_help: str = "see train/configs/"
) -> argparse.ArgumentParser:
    """`--config FILE` plus one `--section.field VALUE` flag per field of `config_class`
    (a stage config by default, or any config dataclass, e.g. the evaluation's)."""
    parser = argparse.ArgumentParser(
        prog=prog or f"python -m train.stage{config_class.stage}",
        description=(config_class.__doc__ or "").strip()
        + " Values: YAML defaults < --config file < command-line flags.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help=f"YAML file with the run's settings ({config_help}).")
    defaults = _defaults(config_class)
    for path, hint in field_paths(config_class).items():
        flags = [f"--{path}"]
        if "_" in path:
            flags.append(f"--{path.replace('_', '-')}")  # --init-from as well as --init_from
        parser.add_argument(
            *flags, dest=path, metavar=_type_name(hint), help=f"default: {defaults.get(path)!r}"
        )
    return parser


def _override_value(text: str) -> Any:
    """A flag's text: a YAML list for list fields ("[-1, -8]"), else the text itself."""
    return parse_yaml(text) if text.lstrip().startswith("[") else text


def parse_command_line(config_class: type[T], argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> T:
    """The validated config of a command line (parsed by `parser`, default build_parser's);
    raises ConfigError naming the bad field."""
    arguments = vars((parser or build_parser(config_class)).parse_args(list(argv)))
    config_file = arguments.pop("config", None)
    values = read_yaml(config_file) if config_file else {}
    overrides = {path: _override_value(text) for path, text in arguments.items()}
    sources = " and ".join(filter(None, [config_file, "the command line" if overrides else ""])) or "the defaults"
    return build_config(config_class, apply_overrides(values, overrides), source=sources)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run(config_class: type[TrainConfig], argv: Sequence[str]) -> int:
    """Validate the command line, then train; returns the process exit status."""
    configure_logging()
    # A crash below Python (a C++ abort in a collective, a segfault in a kernel) prints every
    # thread's Python stack and whether the interpreter was finalizing, not a bare signal.
    faulthandler.enable()
    try:
        config = parse_command_line(config_class, argv)
    except ConfigError as error:
        logger.error("Invalid config: %s", error)
        return EXIT_CONFIG_ERROR
    from .checkpoints import CheckpointError
    from .trainer import NonFiniteLossError, Trainer  # heavy imports only once the config is valid

    try:
        Trainer(config).fit()
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return EXIT_NON_FINITE_LOSS
    except RunFault as error:
        logger.error("%s", error)
        return EXIT_RUN_FAULT
    except ConfigError as error:  # a setting that only the loaded models can check
        logger.error("Invalid config: %s", error)
        return EXIT_CONFIG_ERROR
    except CheckpointError as error:  # --resume names a checkpoint this run cannot continue
        logger.error("Cannot resume: %s", error)
        return EXIT_CONFIG_ERROR
    return 0
