"""Load plain data (TOML tables, wire bodies) into frozen dataclasses, strictly.

Values are checked where they enter the program: unknown keys, wrong types and values
out of range are refused with the dotted path of the offending key, so a user reading
the error knows exactly what to fix. Inside the program the dataclasses are trusted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")
R = TypeVar("R")


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
    result: T = _compile_class(cls)(data, where)
    return result


def dump(obj: Any) -> dict[str, Any]:
    """Return a dataclass as plain dicts and lists (the inverse of `load`)."""
    return {
        name: _plain(getattr(obj, name)) if nested else getattr(obj, name)
        for name, nested in _dump_plan(type(obj))
    }


def json_schema(cls: type[Any]) -> dict[str, Any]:
    """Return the JSON Schema (OpenAPI 3.0 dialect) that `load` enforces for `cls`."""
    hints, declared = _plan(cls)
    properties = {
        name: {**_json_type(hints[name], f.metadata), "description": f.metadata.get("help", "")}
        for name, f in declared.items()
    }
    required = [
        name
        for name, f in declared.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    result: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if cls.__doc__:
        result["description"] = cls.__doc__.strip().splitlines()[0]
    if required:
        result["required"] = required
    return result


def _json_type(tp: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    origin = get_origin(tp)
    if tp is Any:
        return {}
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return {**_json_type(inner, meta), "nullable": True}
    if origin is Literal:
        return {"enum": list(get_args(tp))}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return json_schema(tp)
    if origin in (list, tuple):
        out: dict[str, Any] = {"type": "array", "items": _json_type(get_args(tp)[0], {})}
        if meta.get("max_len") is not None:
            out["maxItems"] = meta["max_len"]
        return out
    if origin is dict:
        return {"type": "object", "additionalProperties": _json_type(get_args(tp)[1], meta)}
    if tp is bool:
        return {"type": "boolean"}
    if tp in (int, float):
        out = {"type": "integer" if tp is int else "number"}
        if meta.get("min") is not None:
            out["minimum"] = meta["min"]
        if meta.get("max") is not None:
            out["maximum"] = meta["max"]
        return out
    if tp is str:
        return {"type": "string", **({"maxLength": meta["max_len"]} if meta.get("max_len") else {})}
    if tp is bytes:
        return {"type": "string", "format": "byte"}
    raise TypeError(f"unsupported type in a schema: {tp!r}")


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


# Converters are compiled once per type: each field's checks become one small closure,
# because wire messages are validated on the hub's hot path.
Converter = Callable[[Any, str], Any]
_Meta = tuple[float | None, float | None, int | None]  # min, max, max_len


def _per_class(fn: Callable[[Any], R]) -> Callable[[Any], R]:
    """Memoise `fn` by class (classes are hashable; typeshed's `cache` cannot say so)."""
    return functools.cache(fn)


@_per_class
def _plan(cls: Any) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Resolve a dataclass's type hints and fields once (resolving hints is slow)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _meta(metadata: Mapping[str, Any]) -> _Meta:
    return (metadata.get("min"), metadata.get("max"), metadata.get("max_len"))


@_per_class
def _compile_class(cls: type[Any]) -> Converter:
    hints, declared = _plan(cls)
    plan = [
        (
            name,
            _compile(hints[name], _meta(f.metadata)),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for name, f in declared.items()
    ]
    known = frozenset(declared)
    known_text = ", ".join(sorted(declared))

    def convert(data: Any, where: str) -> Any:
        if not isinstance(data, Mapping):
            raise SchemaError(where, f"expected a table, got {_type_name(data)}")
        if not known.issuperset(data.keys()):
            unknown = sorted(str(k) for k in data if k not in known)
            raise SchemaError(_join(where, unknown[0]), f"unknown key (known keys: {known_text})")
        kwargs: dict[str, Any] = {}
        for name, field_converter, required in plan:
            if name in data:
                kwargs[name] = field_converter(data[name], _join(where, name))
            elif required:
                raise SchemaError(_join(where, name), "required key is missing")
        return cls(**kwargs)

    return convert


@functools.cache
def _compile(tp: Any, meta: _Meta) -> Converter:
    origin = get_origin(tp)
    if tp is Any:
        return lambda value, path: value
    if origin in (Union, types.UnionType):
        return _compile_optional(tp, meta)
    if origin is Literal:
        return _compile_literal(get_args(tp))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _compile_class(tp)
    if origin in (list, tuple):
        return _compile_list(tp, meta)
    if origin is dict:
        return _compile_dict(tp, meta)
    if tp is bool:
        return _compile_bool()
    if tp in (int, float):
        return _compile_number(tp, meta)
    if tp is str:
        return _compile_sized(str, "a string", meta)
    if tp is bytes:
        return _compile_sized(bytes, "bytes", meta)
    raise TypeError(f"unsupported type in a schema: {tp!r}")


def _compile_optional(tp: Any, meta: _Meta) -> Converter:
    options = [a for a in get_args(tp) if a is not type(None)]
    if len(options) != 1:
        raise TypeError(f"unsupported union in a schema: {tp!r}")
    inner = _compile(options[0], meta)
    nullable = len(options) < len(get_args(tp))

    def convert(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        return inner(value, path)

    return convert


def _compile_literal(choices: tuple[Any, ...]) -> Converter:
    text = ", ".join(map(repr, choices))

    def convert(value: Any, path: str) -> Any:
        if value not in choices:
            raise SchemaError(path, f"must be one of {text}, got {value!r}")
        return value

    return convert


def _compile_list(tp: Any, meta: _Meta) -> Converter:
    as_tuple = get_origin(tp) is tuple
    item = _compile(get_args(tp)[0], (None, None, None))
    limit = meta[2]

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(path, f"expected a list, got {_type_name(value)}")
        if limit is not None and len(value) > limit:
            raise SchemaError(path, f"longer than {limit}")
        items = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if as_tuple else items

    return convert


def _compile_dict(tp: Any, meta: _Meta) -> Converter:
    key_tp, value_tp = get_args(tp)
    key = _compile(key_tp, (None, None, 128))
    item = _compile(value_tp, (None, None, meta[2]))

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise SchemaError(path, f"expected a table, got {_type_name(value)}")
        out = {}
        for k, v in value.items():
            key(k, f"{path} key {k!r}")
            out[k] = item(v, _join(path, str(k)))
        return out

    return convert


def _compile_bool() -> Converter:
    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true or false, got {_type_name(value)}")
        return value

    return convert


def _compile_number(tp: type[Any], meta: _Meta) -> Converter:
    low, high, _ = meta
    is_float = tp is float
    accepted = (int, float) if is_float else (int,)
    expected = "a number" if is_float else "an integer"

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, accepted) or isinstance(value, bool):
            raise SchemaError(path, f"expected {expected}, got {_type_name(value)}")
        if is_float:
            if not math.isfinite(value):
                raise SchemaError(path, "expected a finite number")
            value = float(value)
        if low is not None and value < low:
            raise SchemaError(path, f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise SchemaError(path, f"must be at most {high}, got {value}")
        return value

    return convert


def _compile_sized(kind: type[Any], expected: str, meta: _Meta) -> Converter:
    """Strings and byte strings: the type, and at most `max_len` long."""
    limit = meta[2]

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, kind):
            raise SchemaError(path, f"expected {expected}, got {_type_name(value)}")
        if limit is not None and len(value) > limit:
            raise SchemaError(path, f"longer than {limit}")
        return value

    return convert


@_per_class
def _dump_plan(cls: type[Any]) -> list[tuple[str, bool]]:
    hints, declared = _plan(cls)
    return [(name, _holds_dataclass(hints[name])) for name in declared]


def _holds_dataclass(tp: Any) -> bool:
    if dataclasses.is_dataclass(tp):
        return True
    return any(_holds_dataclass(arg) for arg in get_args(tp))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dump(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(value: Any) -> str:
    return type(value).__name__


def _type_label(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(map(str, get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
