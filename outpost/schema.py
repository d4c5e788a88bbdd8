"""Load plain data (TOML tables, wire bodies) into declared types, strictly.

Declarations are `Struct`s (msgspec): each field's type carries its bounds and help
text (`Annotated[int, Meta(ge=1, description=...)]`), and msgspec checks them in C as it
decodes. Values are checked where they enter the program: unknown keys, wrong types and
values out of range are refused with the dotted path of the offending key, so a user
reading the error knows exactly what to fix. Inside the program the values are trusted.
"""

from __future__ import annotations

import re
import reprlib
import sys
import types
import typing
from typing import Annotated, Any, Final, Literal, TypeVar, Union, get_args, get_origin

import msgspec

T = TypeVar("T")

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
    """Whether `cls` is a declaration (a msgspec Struct)."""
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


def load(cls: type[T], data: Any, where: str) -> T:
    """Build `cls` from a mapping, refusing unknown keys, missing keys and bad values."""
    if not is_struct(cls):  # a bug of the caller, not a refusal of the data
        raise TypeError(f"{cls!r} is not a declaration (a schema.Struct)")
    try:
        return msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError as exc:
        error = error_of(exc, where, cls)
    raise name_entries(error, cls, data, where)


def name_entries(error: SchemaError, cls: type[Any], data: Any, where: str) -> SchemaError:
    """`error` (refusing `data` as `cls`) with each `[...]` msgspec writes for a map's
    entry replaced by that entry's key, found by checking the map's entries one by one:
    only once refused, so good data costs nothing."""
    head, marker, rest = error.path.partition("[...]")
    if not marker:
        return error
    steps = head.removeprefix(where) if where else f".{head}"
    node: Any = data
    for step in re.findall(r"\.([^.\[]+)|\[(\d+)\]", steps):
        name, index = step
        try:
            node = node[int(index)] if index else node[name]
        except (LookupError, TypeError, ValueError):
            return error
    declared = _declared_at(cls, steps + "[...]")
    if not isinstance(node, dict) or declared is None:
        return error
    for key, value in node.items():
        try:
            msgspec.convert(value, declared, strict=True)
        except (msgspec.ValidationError, RecursionError):
            named = SchemaError(f"{head}.{_key_text(key)}{rest}", error.message)
            return name_entries(named, cls, data, where) if "[...]" in rest else named
    return error


def check(cls: type[Any], data: Any, where: str) -> None:
    """Refuse `data` as `load` would (msgspec checks by building, so this builds too)."""
    load(cls, data, where)


def max_len(cls: type[Any], name: str) -> int:
    """The `max_len` declared for field `name` of `cls` (where free text is clipped)."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    (field,) = [f for f in info.fields if f.name == name]
    declared = field.type
    if isinstance(declared, msgspec.inspect.Metadata):
        declared = declared.type
    limit = getattr(declared, "max_length", None)
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


def dump(obj: msgspec.Struct) -> dict[str, Any]:
    """Return a declaration as plain dicts and lists (the inverse of `load`; bytes stay
    bytes)."""
    plain: dict[str, Any] = msgspec.to_builtins(obj, builtin_types=(bytes,))
    return plain


def json_schema(cls: type[Any]) -> dict[str, Any]:
    """Return the JSON Schema (2020-12) that `load` enforces for `cls`, its nested
    declarations referred to as `#/components/schemas/NAME`."""
    _, components = json_schemas([cls])
    return components[cls.__name__]


def json_schemas(
    classes: list[type[Any]], ref_template: str = "#/components/schemas/{name}"
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The JSON Schema (2020-12, as OpenAPI 3.1 takes it) of each declaration, as a
    reference, and the components those references name (nested declarations included)."""
    refs, components = msgspec.json.schema_components(classes, ref_template=ref_template)
    return list(refs), components


def describe(cls: type[Any], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """List (key, type, default, help) of every setting, nested tables flattened; a
    field with no default shows `REQUIRED`."""
    return _describe(cls, prefix, None)


class _Required:
    """The default `describe` shows for a field that has none."""

    def __repr__(self) -> str:
        return "(required)"


REQUIRED: Final = _Required()


def _describe(cls: type[Any], prefix: str, defaults: Any) -> list[tuple[str, str, Any, str]]:
    """`describe`; `defaults` is the instance a nested table defaults to (a table's own
    default may differ from its fields' defaults: the bounds of events and of results)."""
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
            rows.extend(_describe(tp, key, None if default is REQUIRED else default))
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


def _join(where: str, key: str) -> str:
    """`where.key`; either may be empty (a declaration's own check names no key)."""
    return f"{where}.{key}" if where and key else where or key


def _key_text(key: Any) -> str:
    """An unknown key as a path step: the text of a string, else its quoted repr."""
    return key if isinstance(key, str) and len(key) <= QUOTE_LIMIT else quote(key)


def _type_label(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(map(str, get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
