"""Load plain data (TOML tables, wire bodies) into frozen dataclasses, strictly.

Values are checked where they enter the program: unknown keys, wrong types and values
out of range are refused with the dotted path of the offending key, so a user reading
the error knows exactly what to fix. Inside the program the dataclasses are trusted.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class SchemaError(ValueError):
    """A value does not match its schema; `path` names the offending key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    max_len: int | None = None,
) -> Any:
    """Declare a field with its help text and bounds (shown in docs, checked on load)."""
    meta = {"help": help, "min": min, "max": max, "max_len": max_len}
    if isinstance(default, (dict, list)):
        factory = default.copy
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load(cls: type[T], data: Any, where: str) -> T:
    """Build `cls` from a mapping, refusing unknown keys, missing keys and bad values."""
    if not isinstance(data, Mapping):
        raise SchemaError(where, f"expected a table, got {_type_name(data)}")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in declared)
    if unknown:
        raise SchemaError(
            _join(where, unknown[0]),
            f"unknown key (known keys: {', '.join(sorted(declared))})",
        )
    kwargs: dict[str, Any] = {}
    for name, f in declared.items():
        path = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(path, "required key is missing")
            continue
        kwargs[name] = _convert(hints[name], data[name], path, f.metadata)
    return cls(**kwargs)


def describe(cls: type[Any], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """List (key, type, default, help) of every setting, nested tables flattened."""
    rows: list[tuple[str, str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name) if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            rows.extend(describe(tp, key))
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append((key, _type_label(tp), default, str(f.metadata.get("help", ""))))
    return rows


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(get_args(tp)):
            return None
        if len(options) != 1:
            raise TypeError(f"unsupported union at {path}: {tp!r}")
        return _convert(options[0], value, path, meta)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise SchemaError(
                path, f"must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return load(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(path, f"expected a list, got {_type_name(value)}")
        (item_tp, *_) = get_args(tp)
        items = [_convert(item_tp, v, f"{path}[{i}]", {}) for i, v in enumerate(value)]
        _check_len(items, path, meta)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if not isinstance(value, Mapping):
            raise SchemaError(path, f"expected a table, got {_type_name(value)}")
        out = {}
        for k, v in value.items():
            _convert(key_tp, k, f"{path} key {k!r}", {"max_len": 128})
            out[k] = _convert(val_tp, v, _join(path, str(k)), {"max_len": meta.get("max_len")})
        return out
    return _convert_scalar(tp, value, path, meta)


def _convert_scalar(tp: Any, value: Any, path: str, meta: Mapping[str, Any]) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, got {_type_name(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected an integer, got {_type_name(value)}")
        _check_range(value, path, meta)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(path, f"expected a number, got {_type_name(value)}")
        if not math.isfinite(value):
            raise SchemaError(path, "expected a finite number")
        _check_range(value, path, meta)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {_type_name(value)}")
        _check_len(value, path, meta)
        return value
    raise TypeError(f"unsupported type at {path}: {tp!r}")


def _check_range(value: float, path: str, meta: Mapping[str, Any]) -> None:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        raise SchemaError(path, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise SchemaError(path, f"must be at most {high}, got {value}")


def _check_len(value: str | list[Any], path: str, meta: Mapping[str, Any]) -> None:
    limit = meta.get("max_len")
    if limit is not None and len(value) > limit:
        raise SchemaError(path, f"longer than {limit}")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _type_label(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(map(str, get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
