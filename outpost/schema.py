"""Load plain data (TOML tables, wire bodies) into frozen dataclasses, strictly.

Values are checked where they enter the program: unknown keys, wrong types and values
out of range are refused with the dotted path of the offending key, so a user reading
the error knows exactly what to fix. Inside the program the dataclasses are trusted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")
R = TypeVar("R")

# Characters of an offending value an error message quotes, at most: the value may come
# from another machine (a 200 KB string, a list nested 1,000 deep), and the message goes
# to logs and to API answers.
QUOTE_LIMIT = 100


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
    result: T = _compile_class(cls, True)(data, where)
    return result


def check(cls: type[Any], data: Any, where: str) -> None:
    """Refuse `data` as `load` would, without building `cls` (cheaper: for a sender
    checking what it is about to send). Checks written in `__post_init__` are not run:
    they ran when the sender built the object that `data` was dumped from."""
    _compile_class(cls, False)(data, where)


def max_len(cls: type[Any], name: str) -> int:
    """The `max_len` declared for field `name` of `cls` (where free text is clipped)."""
    limit = _plan(cls)[1][name].metadata.get("max_len")
    if limit is None:
        raise TypeError(f"{cls.__name__}.{name} declares no max_len")
    return int(limit)


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """A `repr` of `value` for an error message: at most `limit` characters, whatever
    its size or depth (`repr` itself recurses, and fails on deep nesting)."""
    try:
        text = _QUOTER.repr(value)
    except Exception:  # a value whose own repr fails: say what it is
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Quoter(reprlib.Repr):
    """reprlib's bounded repr (it cuts strings before quoting them), bytes cut as well."""

    def repr_bytes(self, value: bytes, level: int) -> str:
        if len(value) <= self.maxstring:
            return repr(value)
        return repr(value[: self.maxstring]) + f"…({len(value)} bytes)"


_QUOTER = _Quoter()
_QUOTER.maxlevel = 3
_QUOTER.maxstring = _QUOTER.maxother = QUOTE_LIMIT
_QUOTER.maxlist = _QUOTER.maxtuple = _QUOTER.maxdict = _QUOTER.maxset = 8


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
        out = {"type": "object", "additionalProperties": _json_type(get_args(tp)[1], {})}
        if meta.get("max_len") is not None:
            out["maxProperties"] = meta["max_len"]
        return out
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
# because wire messages are validated on the hub's hot path (and on every send). Each is
# compiled twice: `build` makes the dataclasses (`load`); without it, it only checks
# (`check`). A converter is given the path of the value it checks; paths of list items
# and dict entries are spelled out only once an item is found wrong (a batch of a
# thousand records would otherwise format three thousand paths that nobody reads).
Converter = Callable[[Any, str], Any]
_Meta = tuple[float | None, float | None, int | None]  # min, max, max_len


def _per_class(fn: Callable[[Any], R]) -> Callable[[Any], R]:
    """Memoise `fn` by class (classes are hashable; typeshed's `cache` cannot say so)."""
    return functools.cache(fn)


def _per_class_and_flag(fn: Callable[[Any, bool], R]) -> Callable[[Any, bool], R]:
    """`_per_class` for a function of a class and a flag."""
    return functools.cache(fn)


@_per_class
def _plan(cls: Any) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Resolve a dataclass's type hints and fields once (resolving hints is slow)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _meta(metadata: Mapping[str, Any]) -> _Meta:
    return (metadata.get("min"), metadata.get("max"), metadata.get("max_len"))


@_per_class_and_flag
def _compile_class(cls: Any, build: bool) -> Converter:
    hints, declared = _plan(cls)
    plan = [
        (
            name,
            _compile(hints[name], _meta(f.metadata), build),
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
            unknown = min(_key_text(k) for k in data if k not in known)
            raise SchemaError(_join(where, unknown), f"unknown key (known keys: {known_text})")
        kwargs: dict[str, Any] = {}
        for name, field_converter, required in plan:
            if name in data:
                kwargs[name] = field_converter(data[name], _join(where, name))
            elif required:
                raise SchemaError(_join(where, name), "required key is missing")
        return cls(**kwargs) if build else data

    return convert


@functools.cache
def _compile(tp: Any, meta: _Meta, build: bool = True) -> Converter:
    origin = get_origin(tp)
    if tp is Any:
        return lambda value, path: value
    if origin in (Union, types.UnionType):
        return _compile_optional(tp, meta, build)
    if origin is Literal:
        return _compile_literal(get_args(tp))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _compile_class(tp, build)
    if origin in (list, tuple):
        return _compile_list(tp, meta, build)
    if origin is dict:
        return _compile_dict(tp, meta, build)
    if tp is bool:
        return _compile_bool()
    if tp in (int, float):
        return _compile_number(tp, meta)
    if tp is str:
        return _compile_sized(str, "a string", meta)
    if tp is bytes:
        return _compile_sized(bytes, "bytes", meta)
    raise TypeError(f"unsupported type in a schema: {tp!r}")


def _compile_optional(tp: Any, meta: _Meta, build: bool) -> Converter:
    options = [a for a in get_args(tp) if a is not type(None)]
    if len(options) != 1:
        raise TypeError(f"unsupported union in a schema: {tp!r}")
    inner = _compile(options[0], meta, build)
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
            raise SchemaError(path, f"must be one of {text}, got {quote(value)}")
        return value

    return convert


def _compile_list(tp: Any, meta: _Meta, build: bool) -> Converter:
    as_tuple = get_origin(tp) is tuple
    item = _compile(get_args(tp)[0], (None, None, None), build)
    limit = meta[2]

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(path, f"expected a list, got {_type_name(value)}")
        if limit is not None and len(value) > limit:
            raise SchemaError(path, f"longer than {limit}")
        try:
            items: list[Any] | None = [item(v, path) for v in value]
        except SchemaError:
            items = None
        if items is None:  # again, spelling out paths, to say which item is wrong
            items = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if not build:
            return value
        return tuple(items) if as_tuple else items

    return convert


def _compile_dict(tp: Any, meta: _Meta, build: bool) -> Converter:
    """A table of any keys: `max_len` bounds its entries (keys are at most 128 long)."""
    key_tp, value_tp = get_args(tp)
    key = _compile(key_tp, (None, None, 128), build)
    item = _compile(value_tp, (None, None, None), build)
    limit = meta[2]

    def entries(value: Mapping[Any, Any], path: str, exact: bool) -> dict[Any, Any]:
        out = {}
        for k, v in value.items():
            try:
                key(k, path)
            except SchemaError as exc:
                raise SchemaError(f"{path} key {quote(k)}", exc.message) from None
            out[k] = item(v, _join(path, str(k)) if exact else path)
        return out

    def convert(value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise SchemaError(path, f"expected a table, got {_type_name(value)}")
        if limit is not None and len(value) > limit:
            raise SchemaError(path, f"more than {limit} entries")
        try:
            out: dict[Any, Any] | None = entries(value, path, exact=False)
        except SchemaError:
            out = None
        if out is None:  # again, spelling out paths, to say which entry is wrong
            out = entries(value, path, exact=True)
        return out if build else value

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


def _key_text(key: Any) -> str:
    """An unknown key as a path step: the text of a string, else its quoted repr."""
    return key if isinstance(key, str) and len(key) <= QUOTE_LIMIT else quote(key)


def _type_label(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(map(str, get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
