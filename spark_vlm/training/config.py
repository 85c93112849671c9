"""Experiment configs: dataclass defaults <- a YAML file <- `key=value` overrides, merged by OmegaConf.

A whole experiment is one small YAML file that holds only what differs from the defaults (big_vision style);
the command line overrides single keys (`train.batch_size=64 loss=clip`). OmegaConf checks keys and types against
the dataclasses; each section's `validate` then checks values. Every problem, before any work starts, is one
`ConfigError` line naming the key.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException


class ConfigError(ValueError):
    """A bad config: unknown key, wrong type or impossible value. The message names the key."""


def check(condition: bool, key: str, message: str) -> None:
    """For `validate` methods: `check(lr > 0, "optim.lr", f"must be > 0, got {lr}")`."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def load_config(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Defaults of the dataclass `cls` <- YAML at `path` <- overrides, then `validate()` on every section.

    A section given in part keeps the *stage's* defaults for its other keys (OmegaConf merges key by key into
    the default instance, so stage 2's `train` defaults survive an override of `train.output_dir`)."""
    given = OmegaConf.merge(_read_yaml(path) if path is not None else {}, _parse_overrides(overrides))
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), given))
    except OmegaConfBaseException as e:
        raise _named_error(e, cls, given) from None
    _validate_tree(cfg)
    return cfg


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(cfg))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def kwargs_fields(config_cls, skip: tuple[str, ...] = (), optional: bool = False) -> list[tuple]:
    """The keyword arguments of `config_cls.__init__` (a Hugging Face config) as dataclass fields, so that a
    config section *is* those kwargs and their defaults are written once, in the model file. `optional`: every
    field defaults to None (= "not set": use the preset's or the class's value)."""
    hints = typing.get_type_hints(config_cls.__init__)
    fields = []
    for p in inspect.signature(config_cls.__init__).parameters.values():
        if p.name == "self" or p.kind is p.VAR_KEYWORD or p.name in skip:
            continue
        if optional:
            fields.append((p.name, hints[p.name] | None, None))
        else:
            fields.append((p.name, hints[p.name], dataclasses.field(default=p.default)))
    return fields


def _read_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as e:  # syntax errors and duplicate keys
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as e:  # OmegaConf's word for a top-level scalar ("Invalid loaded object type: int"), or unreadable
        raise ConfigError(f"{path}: cannot read it as a config ({e})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _parse_overrides(overrides: list[str]) -> DictConfig:
    parsed = []
    for text in overrides:
        key = text.split("=", 1)[0]
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not of the form key=value")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {text!r} has an empty key")
        try:  # one at a time, so that the error names the token
            parsed.append(OmegaConf.from_dotlist([text]))
        except (OmegaConfBaseException, yaml.YAMLError) as e:  # the value is read as YAML: `[`, control characters
            raise ConfigError(f"cannot parse the override {text!r} ({' '.join(str(e).split())})") from None
    return OmegaConf.merge(*parsed) if parsed else OmegaConf.create({})


def _named_error(e: OmegaConfBaseException, cls, given: DictConfig) -> ConfigError:
    """OmegaConf's multi-line error -> one line in this project's words, naming the key."""
    key = e.full_key or ""
    parent, _, name = key.rpartition(".")
    shown = key if key.isprintable() else repr(key)  # a key with a newline must not break the one line
    if isinstance(e, ConfigKeyError):
        valid = [f.name for f in dataclasses.fields(_field_type(cls, parent))]
        return ConfigError(f"{shown}: unknown key (valid keys: {', '.join(sorted(valid))})")
    if isinstance(e, InterpolationResolutionError):
        return ConfigError(f"{shown}: {str(e).splitlines()[0]}")
    if not key:  # OmegaConf names no key when a value replaces a whole section
        key = _value_for_section(cls, given)
        if key is None:
            return ConfigError(str(e).splitlines()[0])
    try:
        got = OmegaConf.select(given, key, default=None, throw_on_missing=False)
    except OmegaConfBaseException:  # e.g. `loss=${train.batch_size}`: the interpolation resolves only in the merge
        got = None
    return ConfigError(f"{key}: {_expected(_field_type(cls, key))}, got {got!r}")


def _value_for_section(cls, given: DictConfig, prefix: str = "") -> str | None:
    """The first key where `given` has a plain value but `cls` has a section."""
    hints = typing.get_type_hints(cls)
    for key, value in given.items():
        if key in hints and dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, DictConfig):
                return f"{prefix}{key}"
            found = _value_for_section(hints[key], value, f"{prefix}{key}.")
            if found:
                return found
    return None


def _field_type(cls, key: str):
    """The annotated type at a dotted key (`train.batch_size` -> int); the root class for ""."""
    tp = cls
    for part in filter(None, key.split(".")):
        tp = typing.get_type_hints(tp)[part]
    return tp


def _expected(tp) -> str:
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is Literal:
        return "must be one of " + " | ".join(repr(a) for a in args)
    if len(args) == 1 and get_origin(tp) not in (list, tuple):  # Optional[X]
        return _expected(args[0]) + " or null"
    if dataclasses.is_dataclass(tp):
        return "is a section, not a value"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return "expected " + names.get(tp, "a list" if get_origin(tp) in (list, tuple) else str(tp))


def _validate_tree(cfg, prefix: str = "") -> None:
    """Reject inf/nan in any number (`optim.lr=inf` would train NaN weights), then call `validate(prefix)` on every
    section that defines one (sections check values)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{prefix}{f.name}.")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float):
                check(math.isfinite(item), f"{prefix}{f.name}", f"must be a finite number, got {value}")
    if hasattr(cfg, "validate"):
        cfg.validate(prefix)

