"""Load plain data (TOML tables, wire bodies) into declared types, strictly.

Declarations are `Struct`s (msgspec): each field's type carries its bounds and help
text (`Annotated[int, Meta(ge=1, description=...)]`), and msgspec checks them in C as it
decodes. Values are checked where they enter the program: unknown keys, wrong types and
values out of range are refused with the dotted path of the offending key, so a user
reading the error knows exactly what to fix. Inside the program the values are trusted.

Frozen dataclasses declared with `setting()` are still loaded by the older, pure-Python
converters below, until every declaration is a `Struct`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, TypeVar, Union, get_args, get_origin

import msgspec

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


# The largest finite float: the upper bound of a float field with no natural one, so that
# msgspec refuses infinity and NaN there too (it lets them through an unbounded field).
FINITE: Final = sys.float_info.max
# The bounds of an integer a database column holds (SQLite's and PostgreSQL's bigint):
# the bounds of an integer field with no natural ones.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


class Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every declaration: immutable, and unknown keys are refused."""


def is_struct(cls: Any) -> bool:
    """Whether `cls` is a msgspec declaration (else a dataclass declared with `setting`)."""
    return isinstance(cls, type) and issubclass(cls, msgspec.Struct)


def error_of(exc: msgspec.ValidationError, where: str, cls: type[Any] | None = None) -> SchemaError:
    """A msgspec refusal as a `SchemaError` whose path starts at `where` and names the
    offending key (msgspec says "Object missing required field `x` - at `$.a`"). With the
    declaration `cls`, an unknown key's message lists the known ones and a refused choice
    the allowed ones."""
    text = str(exc)
    message, _, at = text.partition(" - at `")
    at = at.removesuffix("`")
    is_key = at.startswith("key` in `")  # a map's key is wrong, not its value
    at = at.removeprefix("key` in `")
    steps = at.removeprefix("$")
    path = (where + steps) if where else steps.removeprefix(".")
    if isinstance(exc.__cause__, SchemaError):  # raised by a declaration's __post_init__
        return SchemaError(_join(path, exc.__cause__.path), exc.__cause__.message)
    if found := _NAMED_FIELD.match(message):
        what = "required key is missing"
        if found["what"] == "contains unknown":
            known = _declared_at(cls, steps)
            what = "unknown key"
            if is_struct(known):
                names = ", ".join(sorted(f.name for f in msgspec.structs.fields(known)))
                what = f"unknown key (known keys: {names})"
        return SchemaError(_join(path, _key_text(found["name"])), what)
    if choices := _choices(_declared_at(cls, steps)):
        allowed = ", ".join(map(repr, choices))
        if found := _ENUM.match(message):
            return SchemaError(path, f"must be one of {allowed}, got {quote(found['value'])}")
        if found := _WRONG_TYPE.match(message):
            return SchemaError(
                path, f"must be one of {allowed}, got {found['got'] or 'another type'}"
            )
    words = _plain_words(message)
    words = f"key: {words}" if is_key else words
    # msgspec quotes some values whole (a refused choice): an error stays short.
    return SchemaError(path, words if len(words) <= 300 else words[:299] + "…")


def _declared_at(cls: type[Any] | None, steps: str) -> Any:
    """The declared type at msgspec path `steps` (".a[0].b") inside `cls`, or None."""
    tp: Any = cls
    for step in re.findall(r"\.(\w+)|\[[^\]]*\]", steps):
        tp = _unwrapped(tp)
        if step and is_struct(tp):
            tp = typing.get_type_hints(tp, include_extras=True).get(step)
        elif not step and get_origin(tp) in (list, tuple, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    return _unwrapped(tp)


def _unwrapped(tp: Any) -> Any:
    """`tp` without `Annotated` and without `| None`."""
    tp, _ = _unannotated(tp)
    if get_origin(tp) in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) == 1:
            tp, _ = _unannotated(options[0])
    return tp


def _choices(tp: Any) -> tuple[Any, ...]:
    return get_args(tp) if get_origin(tp) is Literal else ()


def _plain_words(message: str) -> str:
    """msgspec's "Expected `int` >= 0" in the words the rest of the program uses."""
    if found := _BOUND.match(message):
        if found["limit"].lstrip("-") == repr(FINITE):
            return "must be a finite number"
        return f"{_BOUND_WORDS[found['op']]} {found['limit']}"
    if found := _LENGTH.match(message):
        if found["type"] == "object":
            return f"more than {found['limit']} entries"
        return f"longer than {found['limit']}"
    if found := _WRONG_TYPE.match(message):
        wanted = f"expected {_TYPE_WORDS.get(found['want'], found['want'])}"
        return f"{wanted}, got {found['got']}" if found["got"] else wanted
    if found := _ENUM.match(message):
        return f"not one of the allowed values: {quote(found['value'])}"
    return message


_NAMED_FIELD: Final = re.compile(
    r"^Object (?P<what>contains unknown|missing required) field `(?P<name>.*)`$"
)
_BOUND: Final = re.compile(r"^Expected `\w+` (?P<op>>=|<=|>|<) (?P<limit>\S+)$")
_BOUND_WORDS: Final = {
    ">=": "must be at least",
    "<=": "must be at most",
    ">": "must be more than",
    "<": "must be less than",
}
_LENGTH: Final = re.compile(r"^Expected `(?P<type>\w+)` of length <= (?P<limit>\d+)$")
_WRONG_TYPE: Final = re.compile(r"^Expected `(?P<want>[\w |]+)`(?:, got `(?P<got>\w+)`)?$")
_ENUM: Final = re.compile(r"^Invalid enum value (?P<value>.*)$")
_TYPE_WORDS: Final = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "a list",
}


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
    if is_struct(cls):
        try:
            return msgspec.convert(data, cls, strict=True)
        except msgspec.ValidationError as exc:
            raise error_of(exc, where, cls) from None
    result: T = _compile_class(cls, True)(data, where)
    return result


def check(cls: type[Any], data: Any, where: str) -> None:
    """Refuse `data` as `load` would. A Struct is built to check it (msgspec's checks run
    as it builds); an old-style dataclass is only checked, and its `__post_init__` not
    run."""
    if is_struct(cls):
        load(cls, data, where)
        return
    _compile_class(cls, False)(data, where)


def max_len(cls: type[Any], name: str) -> int:
    """The `max_len` declared for field `name` of `cls` (where free text is clipped)."""
    if is_struct(cls):
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        (field,) = [f for f in info.fields if f.name == name]
        declared = field.type
        if isinstance(declared, msgspec.inspect.Metadata):
            declared = declared.type
        limit = getattr(declared, "max_length", None)
    else:
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
    """Return a declaration as plain dicts and lists (the inverse of `load`)."""
    if isinstance(obj, msgspec.Struct):
        plain: dict[str, Any] = msgspec.to_builtins(obj, builtin_types=(bytes,))
        return plain
    return {
        name: _plain(getattr(obj, name)) if nested else getattr(obj, name)
        for name, nested in _dump_plan(type(obj))
    }


def json_schema(cls: type[Any]) -> dict[str, Any]:
    """Return the JSON Schema that `load` enforces for `cls` (for a Struct, 2020-12 with
    references to `#/components/schemas/...`; else the OpenAPI 3.0 dialect)."""
    if is_struct(cls):
        _, components = json_schemas([cls])
        return components[cls.__name__]
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


def json_schemas(
    classes: list[type[Any]], ref_template: str = "#/components/schemas/{name}"
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The JSON Schema (2020-12, as OpenAPI 3.1 takes it) of each declaration, as a
    reference, and the components those references name (nested declarations included)."""
    refs, components = msgspec.json.schema_components(classes, ref_template=ref_template)
    return list(refs), components


def describe(cls: type[Any], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """List (key, type, default, help) of every setting, nested tables flattened."""
    if is_struct(cls):
        return _describe_struct(cls, prefix)
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


class _Required:
    """The default `describe` shows for a field that has none."""

    def __repr__(self) -> str:
        return "(required)"


REQUIRED: Final = _Required()


def _describe_struct(
    cls: type[Any], prefix: str, defaults: Any = None
) -> list[tuple[str, str, Any, str]]:
    """`describe` of a Struct; `defaults` is the instance a nested table defaults to (a
    table's own default may differ from its fields' defaults: bounds of events vs results)."""
    rows: list[tuple[str, str, Any, str]] = []
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in msgspec.structs.fields(cls):
        key = _join(prefix, f.name)
        tp, help_text = _unannotated(hints[f.name])
        if defaults is not None:
            default: Any = getattr(defaults, f.name)
        elif f.default is not msgspec.NODEFAULT:
            default = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f.default_factory()
        else:
            default = REQUIRED
        if is_struct(tp):
            rows.extend(_describe_struct(tp, key, None if default is REQUIRED else default))
            continue
        rows.append((key, _type_label(tp), default, help_text))
    return rows


def _unannotated(tp: Any) -> tuple[Any, str]:
    """The type under `Annotated` layers, and the description they give it."""
    help_text = ""
    while get_origin(tp) is Annotated:
        for extra in tp.__metadata__:
            if isinstance(extra, msgspec.Meta) and extra.description:
                help_text = extra.description
        tp = get_args(tp)[0]
    return tp, help_text


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
