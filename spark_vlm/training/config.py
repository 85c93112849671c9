"""Validated experiment configs: nested dataclasses <- YAML file <- `key=value` overrides.

A whole experiment is one small YAML file (big_vision style); the command line only overrides keys
(`train.batch_size=64 loss=clip`). Everything is checked before any work starts, and every problem is
reported as one `ConfigError` line naming the offending key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A bad config: unknown key, wrong type or impossible value. The message names the key."""


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where it is lossless (int -> float)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def build(cls, values: dict, prefix: str = "", base=None):
    """Dataclass `cls` from a (possibly partial) dict laid over `base` (default: `cls()`); unknown keys are
    errors. A nested section is laid over the *parent's* default for it, so overriding one key of a section
    keeps that stage's other defaults (stage 2's `train` defaults are not the generic TrainConfig's)."""
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (valid keys: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in values.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[key] = build(type(current), value, prefix=f"{prefix}{key}.", base=current)
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return dataclasses.replace(base, **kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 3e-4). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({e.__class__.__name__})") from None
    if isinstance(value, str) and _looks_numeric(raw):  # YAML reads "1e-3" as a string
        value = float(raw)
    return key.split("."), value


def _looks_numeric(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def _set(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _fix_numeric_strings(tree):
    """YAML 1.1 reads `1e-3` (no dot) as a string; numbers written that way are meant as numbers."""
    if isinstance(tree, dict):
        return {k: _fix_numeric_strings(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_fix_numeric_strings(v) for v in tree]
    if isinstance(tree, str) and _looks_numeric(tree) and any(c in tree for c in "eE") and tree.strip() == tree:
        return float(tree)
    return tree


def load_config(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """defaults of `cls` <- YAML at `path` <- overrides, then `validate()` on every section."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        tree = _fix_numeric_strings(loaded or {})
    for text in overrides:
        key_path, value = parse_override(text)
        _set(tree, key_path, value)
    cfg = build(cls, tree)
    validate_tree(cfg)
    return cfg


def validate_tree(cfg, prefix: str = "") -> None:
    """Call `validate(prefix)` on every dataclass in the tree that defines one (sections check values)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_tree(value, f"{prefix}{f.name}.")
    if hasattr(cfg, "validate"):
        cfg.validate(prefix)


def check(condition: bool, key: str, message: str) -> None:
    """Small helper for `validate` methods: `check(lr > 0, "optim.lr", f"must be > 0, got {lr}")`."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
