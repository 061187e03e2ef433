"""Building a stage config from YAML and dotted overrides, checked against the dataclass
definitions in config.py (the single source of the fields, their types and defaults)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, FieldError, TrainConfig, plain_values


def field_paths(config_class: type) -> dict[str, Any]:
    """Every settable field as {"section.name": type}, in definition order."""
    paths: dict[str, Any] = {}
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        hint = hints[item.name]
        if dataclasses.is_dataclass(hint):
            paths.update({f"{item.name}.{name}": sub for name, sub in field_paths(hint).items()})
        else:
            paths[item.name] = hint
    return paths


def build_config(
    config_class: type[TrainConfig], values: Mapping[str, Any], source: str = "the config"
) -> TrainConfig:
    """Construct `config_class` from nested `values`; any problem raises ConfigError naming the field."""
    return _build(config_class, values, prefix="", source=source)


def _build(config_class: type, values: Any, prefix: str, source: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping of fields, got {values!r} ({source}).")
    hints = typing.get_type_hints(config_class)
    names = [item.name for item in dataclasses.fields(config_class)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown field {prefix}{unknown[0]} in {source}; fields here are: {', '.join(prefix + n for n in names)}."
        )
    arguments = {}
    for name in names:
        if name not in values:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            arguments[name] = _build(hint, values[name], f"{prefix}{name}.", source)
        else:
            arguments[name] = coerce(f"{prefix}{name}", values[name], hint)
    try:
        return config_class(**arguments)
    except FieldError as error:
        field_name = error.name if "." in error.name else f"{prefix}{error.name}"
        raise ConfigError(f"{field_name} {error.message} ({source})") from None


def coerce(name: str, value: Any, hint: Any) -> Any:
    """`value` as type `hint` (bool, int, float, str, or a tuple of those); YAML's strings
    like "1e-4" are accepted for numbers, and "a,b" or a single value for tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        item_types = typing.get_args(hint)
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        if item_types[-1] is Ellipsis:
            item_types = (item_types[0],) * len(value)
        elif len(value) != len(item_types):
            raise ConfigError(f"{name} must have {len(item_types)} items, got {value!r}.")
        return tuple(coerce(name, item, item_type) for item, item_type in zip(value, item_types))
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{name}: union field types are not supported by the config loader.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{name} must be {getattr(hint, '__name__', hint)}, got {value!r}.")


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads only true/false as booleans (as YAML 1.2 does), so that
    `mixed_precision: no` stays the string "no"."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str) -> Any:
    """YAML text as Python values (true/false are the only booleans)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in `path` ({} for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        values = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(values).__name__}.")
    return values


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of nested `values` with {"section.name": value} overrides set."""
    merged = plain_values(values)
    for dotted, value in overrides.items():
        *sections, name = dotted.split(".")
        target = merged
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{section} must be a mapping of fields to override {dotted}.")
        target[name] = value
    return merged
