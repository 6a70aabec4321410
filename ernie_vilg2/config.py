"""Typed, validated configuration.

Every YAML section maps onto a dataclass. Loading rejects unknown keys and wrong
types with a :class:`ConfigError` that names the dotted field (``train.lr``), so a
typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .errors import ErnieViLG2Error


class ConfigError(ErnieViLG2Error, ValueError):
    """A configuration value is missing, unknown, of the wrong type or impossible."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config field '{field}': {message}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):  # Optional[float]: "float or null"
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is not None:  # List[float], not "List"
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp)


def _convert(value: Any, tp, field: str):
    """Check ``value`` against the annotation ``tp`` and return it (converted)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, field)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(field, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, field)
    if origin in (list, tuple, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(field, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{field}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(field, f"expected a mapping, got {value!r}")
        val_tp = args[1] if args else Any
        return {k: _convert(v, val_tp, f"{field}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(field, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(field, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(field, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(field, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: Optional[dict], prefix: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise ConfigError."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(prefix or cls.__name__, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(where, f"unknown key (known keys: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        field = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], field)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # a required field is missing
        raise ConfigError(prefix or cls.__name__, str(exc)) from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def check(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless ``condition`` holds (for __post_init__)."""
    if not condition:
        raise ConfigError(field, message)


def parse_overrides(overrides: List[str]) -> dict:
    """Turn ``["train.lr=1e-4", "model.num_experts=10"]`` into a nested dict (YAML values)."""
    nested: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(item, "override must look like section.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "cannot override inside a non-mapping value")
        node[parts[-1]] = value
    return nested


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "the top level must be a mapping of sections")
    return data
