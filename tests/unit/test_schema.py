"""Unit tests of outpost/schema.py: strict loading of plain data into declared Structs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from msgspec import Meta

from outpost import schema
from outpost.schema import INT64_MAX, SchemaError, Struct


class Leaf(Struct, frozen=True):
    c: Annotated[int, Meta(ge=0, le=10, description="a bounded integer")]
    label: Annotated[str, Meta(max_length=5, description="a short label")] = ""


class Middle(Struct, frozen=True):
    b: Annotated[Leaf, Meta(description="the leaf table")]
    ratio: Annotated[float, Meta(ge=0.0, le=1.0, description="a bounded number")] = 0.5


class Root(Struct, frozen=True):
    a: Annotated[Middle, Meta(description="the middle table")]
    name: Annotated[str, Meta(max_length=8, description="a required name")]
    enabled: Annotated[bool, Meta(description="a flag")] = False
    mode: Annotated[Literal["fast", "slow"], Meta(description="a choice")] = "fast"
    limit: Annotated[int, Meta(ge=1, le=5, description="an optional bounded integer")] | None = None
    tags: Annotated[list[str], Meta(max_length=3, description="a short list")] = []
    labels: Annotated[
        dict[Annotated[str, Meta(max_length=128)], str],
        Meta(max_length=4, description="string labels"),
    ] = {}


def valid() -> dict[str, Any]:
    return {
        "a": {"b": {"c": 3, "label": "abc"}, "ratio": 0.25},
        "name": "root",
        "enabled": True,
        "mode": "slow",
        "limit": 2,
        "tags": ["x", "y"],
        "labels": {"site": "n1"},
    }


def refusal(data: Any, where: str = "cfg") -> SchemaError:
    with pytest.raises(SchemaError) as info:
        schema.load(Root, data, where)
    return info.value


def with_change(path: str, value: Any) -> dict[str, Any]:
    """Return valid() with the dotted `path` set to `value`."""
    data = valid()
    *parents, last = path.split(".")
    table = data
    for key in parents:
        table = table[key]
    table[last] = value
    return data


def without(path: str) -> dict[str, Any]:
    data = valid()
    *parents, last = path.split(".")
    table = data
    for key in parents:
        table = table[key]
    del table[last]
    return data


# ---------------------------------------------------------------------------- accepted


def test_load_accepts_valid_nested_data() -> None:
    root = schema.load(Root, valid(), "cfg")
    assert root == Root(
        a=Middle(b=Leaf(c=3, label="abc"), ratio=0.25),
        name="root",
        enabled=True,
        mode="slow",
        limit=2,
        tags=["x", "y"],
        labels={"site": "n1"},
    )
    assert isinstance(root.a, Middle)
    assert isinstance(root.a.b, Leaf)


def test_load_fills_defaults_for_optional_keys() -> None:
    root = schema.load(Root, {"a": {"b": {"c": 0}}, "name": "n"}, "cfg")
    assert root.enabled is False
    assert root.mode == "fast"
    assert root.limit is None
    assert root.tags == []
    assert root.labels == {}
    assert root.a.ratio == 0.5
    assert root.a.b.label == ""


def test_list_defaults_are_not_shared_between_loads() -> None:
    first = schema.load(Root, {"a": {"b": {"c": 0}}, "name": "n"}, "cfg")
    second = schema.load(Root, {"a": {"b": {"c": 0}}, "name": "n"}, "cfg")
    first.tags.append("x")
    assert second.tags == []


def test_int_is_accepted_as_float_and_converted() -> None:
    root = schema.load(Root, with_change("a.ratio", 1), "cfg")
    assert root.a.ratio == 1.0
    assert type(root.a.ratio) is float


def test_optional_accepts_none() -> None:
    assert schema.load(Root, with_change("limit", None), "cfg").limit is None


def test_bounds_are_inclusive() -> None:
    assert schema.load(Root, with_change("a.b.c", 0), "cfg").a.b.c == 0
    assert schema.load(Root, with_change("a.b.c", 10), "cfg").a.b.c == 10
    assert schema.load(Root, with_change("a.ratio", 1.0), "cfg").a.ratio == 1.0


def test_max_len_is_inclusive() -> None:
    assert schema.load(Root, with_change("name", "x" * 8), "cfg").name == "x" * 8
    assert schema.load(Root, with_change("tags", ["a", "b", "c"]), "cfg").tags == ["a", "b", "c"]


def test_empty_where_gives_bare_key_paths() -> None:
    error = refusal(with_change("a.b.c", "3"), where="")
    assert error.path == "a.b.c"


def test_dump_is_the_inverse_of_load() -> None:
    root = schema.load(Root, valid(), "cfg")
    assert schema.dump(root) == valid()


# ---------------------------------------------------------------------------- refused


def test_unknown_top_level_key_is_refused_with_its_path() -> None:
    data = valid()
    data["colour"] = "red"
    error = refusal(data)
    assert error.path == "cfg.colour"
    assert "cfg.colour" in str(error)
    assert "unknown key" in str(error)


def test_unknown_nested_key_is_refused_with_its_dotted_path() -> None:
    error = refusal(with_change("a.b.extra", 1))
    assert error.path == "cfg.a.b.extra"
    assert "cfg.a.b.extra" in str(error)


def test_unknown_key_message_lists_known_keys() -> None:
    error = refusal(with_change("a.b.extra", 1))
    assert "c" in error.message
    assert "label" in error.message


@pytest.mark.parametrize("path", ["name", "a", "a.b", "a.b.c"])
def test_missing_required_key_is_refused(path: str) -> None:
    error = refusal(without(path))
    assert error.path == f"cfg.{path}"
    assert "missing" in str(error)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("a.b.c", True),  # bool is not an int
        ("a.b.c", False),
        ("a.b.c", 3.0),  # a float is not an int
        ("a.b.c", "3"),  # a string is not an int
        ("a.b.c", None),  # None only where Optional
        ("a.ratio", True),  # bool is not a number either
        ("a.ratio", "0.5"),
        ("name", 5),
        ("name", b"root"),
        ("name", None),
        ("enabled", 1),
        ("enabled", "true"),
        ("limit", "2"),
        ("limit", 2.0),
        ("tags", "x"),
        ("tags", [1]),
        ("labels", ["site", "n1"]),
        ("a", "table"),
        ("a.b", 3),
    ],
)
def test_wrong_type_is_refused_with_its_path(path: str, value: Any) -> None:
    error = refusal(with_change(path, value))
    assert error.path.startswith(f"cfg.{path}")
    assert str(error).startswith(f"cfg.{path}")


def test_wrong_type_message_names_the_type() -> None:
    error = refusal(with_change("a.b.c", "3"))
    assert "str" in error.message
    assert "integer" in error.message


def test_list_item_of_wrong_type_names_its_index() -> None:
    error = refusal(with_change("tags", ["ok", 7]))
    assert error.path == "cfg.tags[1]"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("a.b.c", -1),
        ("a.b.c", 11),
        ("a.ratio", -0.001),
        ("a.ratio", 1.5),
        ("a.ratio", float("nan")),
        ("a.ratio", float("inf")),
        ("limit", 0),
        ("limit", 6),
    ],
)
def test_out_of_bounds_is_refused(path: str, value: Any) -> None:
    error = refusal(with_change(path, value))
    assert error.path == f"cfg.{path}"


def test_bound_message_names_the_bound() -> None:
    assert "at most 10" in refusal(with_change("a.b.c", 11)).message
    assert "at least 0" in refusal(with_change("a.b.c", -1)).message


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("name", "x" * 9, "longer than 8"),
        ("a.b.label", "abcdef", "longer than 5"),
        ("tags", ["a", "b", "c", "d"], "longer than 3"),
        # max_len bounds a dict's entries (issue 15: a heartbeat's `counters`, declared
        # with at most 64, took 30,000 entries when it bounded their values).
        ("labels", {f"k{i}": "v" for i in range(5)}, "more than 4 entries"),
    ],
)
def test_max_len_is_enforced(path: str, value: Any, message: str) -> None:
    error = refusal(with_change(path, value))
    assert error.path == f"cfg.{path}"
    assert error.message == message
    assert schema.load(Root, with_change(path, value[:-1] if not isinstance(value, dict)
                       else dict(list(value.items())[:-1])), "cfg")  # fmt: skip


@pytest.mark.parametrize("value", ["medium", "FAST", "", None, 1])
def test_literal_refuses_other_choices(value: Any) -> None:
    error = refusal(with_change("mode", value))
    assert error.path == "cfg.mode"
    assert "'fast'" in error.message
    assert "'slow'" in error.message


def test_literal_accepts_each_choice() -> None:
    for choice in ("fast", "slow"):
        assert schema.load(Root, with_change("mode", choice), "cfg").mode == choice


def test_dict_values_must_be_strings() -> None:
    error = refusal(with_change("labels", {"site": 1}))
    # msgspec names a map's entry by position only; the entry's key is found afterwards.
    assert error.path == "cfg.labels.site"


def test_dict_keys_must_be_strings() -> None:
    error = refusal(with_change("labels", {1: "x"}))
    assert error.path.startswith("cfg.labels")


def test_top_level_must_be_a_table() -> None:
    not_tables: list[Any] = [None, [], "x", 3]
    for data in not_tables:
        error = refusal(data)
        assert error.path == "cfg"
        assert "table" in error.message


def test_schema_error_is_a_value_error() -> None:
    assert issubclass(SchemaError, ValueError)
    error = SchemaError("x.y", "bad")
    assert error.path == "x.y"
    assert error.message == "bad"
    assert str(error) == "x.y: bad"


def test_load_refuses_a_class_that_is_not_a_declaration() -> None:
    class NotAStruct:
        pass

    with pytest.raises(TypeError, match="not a declaration"):
        schema.load(NotAStruct, {}, "cfg")


# ---------------------------------------------------------------------------- describe


def test_describe_flattens_nested_tables() -> None:
    rows = schema.describe(Root)
    keys = [key for key, _type, _default, _help in rows]
    assert keys == [
        "a.b.c",
        "a.b.label",
        "a.ratio",
        "name",
        "enabled",
        "mode",
        "limit",
        "tags",
        "labels",
    ]


def test_describe_reports_type_default_and_help() -> None:
    rows = {key: (tp, default, help_text) for key, tp, default, help_text in schema.describe(Root)}
    assert rows["a.ratio"] == ("float", 0.5, "a bounded number")
    assert rows["enabled"] == ("bool", False, "a flag")
    assert rows["name"] == ("str", schema.REQUIRED, "a required name")
    assert rows["tags"][1] == []
    assert rows["labels"][1] == {}
    assert "fast" in rows["mode"][0]
    assert "slow" in rows["mode"][0]


def test_describe_with_prefix() -> None:
    keys = [row[0] for row in schema.describe(Leaf, "x.y")]
    assert keys == ["x.y.c", "x.y.label"]


# ---------------------------------------------------------------------------- hostile values
# Issue 15: values from another machine reach these messages. A list nested 1,000 deep
# made `{value!r}` raise RecursionError (which ended the hub); a 200 KB string made a
# 200 KB error message.


def deep(levels: int) -> Any:
    value: Any = None
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("mode", deep(1000)),
        ("mode", "x" * 200_000),
        ("mode", b"x" * 200_000),
        ("mode", {f"k{i}": deep(50) for i in range(1000)}),
        ("labels", {"k" * 200_000: "v"}),
        ("labels", {b"k" * 200_000: "v"}),
        ("labels", {("k" * 200_000,): "v"}),
    ],
)
def test_errors_quote_a_bounded_excerpt_of_the_value(path: str, value: Any) -> None:
    error = refusal(with_change(path, value))
    assert error.path.startswith(f"cfg.{path}")
    assert len(str(error)) < 300, str(error)


def test_unknown_key_of_any_size_or_type_is_named_briefly() -> None:
    for key in ("k" * 200_000, b"k" * 200_000, 7):
        error = refusal({**valid(), key: 1})
        # A key that is not even a string is refused as such, before its name is read.
        assert error.message.startswith("unknown key" if isinstance(key, str) else "key:")
        assert len(error.path) < 120, error.path


def test_quote_is_bounded_and_never_fails() -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    for value in (deep(5000), "é" * 10**6, b"\xff" * 10**6, {"k": deep(5000)}, Hostile()):
        text = schema.quote(value)
        assert 0 < len(text) <= schema.QUOTE_LIMIT
    assert schema.quote("fast") == "'fast'"
    assert schema.quote(Hostile()).startswith("<Hostile")
    assert schema.quote("x" * 500, limit=20) == "'" + "x" * 18 + "…"


def test_error_paths_still_name_the_item_and_the_entry() -> None:
    assert refusal(with_change("labels", {"a": "x", "b": 2})).path == "cfg.labels.b"
    assert refusal(with_change("tags", ["a", "b", 3])).path == "cfg.tags[2]"


# ---------------------------------------------------------------------------- check


class Counted(Struct, frozen=True):
    """Counts its constructions."""

    built = 0
    n: Annotated[int, Meta(ge=0, le=INT64_MAX, description="a number")]
    items: Annotated[list[Leaf], Meta(max_length=2, description="leaves")] = []

    def __post_init__(self) -> None:
        type(self).built += 1


BAD_ROOTS = [
    with_change("a.b.c", 11),
    with_change("name", "x" * 9),
    with_change("mode", "medium"),
    with_change("tags", ["a", 1]),
    with_change("labels", {"k": 1}),
    with_change("labels", {f"k{i}": "v" for i in range(5)}),
    with_change("enabled", "yes"),
    with_change("limit", 0),
    without("name"),
    {**valid(), "extra": 1},
    None,
]


@pytest.mark.parametrize("data", BAD_ROOTS)
def test_check_refuses_what_load_refuses_with_the_same_error(data: Any) -> None:
    with pytest.raises(SchemaError) as loading:
        schema.load(Root, data, "cfg")
    with pytest.raises(SchemaError) as checking:
        schema.check(Root, data, "cfg")
    assert (checking.value.path, checking.value.message) == (
        loading.value.path,
        loading.value.message,
    )


def test_check_accepts_valid_data_and_runs_the_declarations_own_checks() -> None:
    schema.check(Root, valid(), "cfg")
    before = Counted.built
    schema.check(Counted, {"n": 1, "items": [{"c": 1}, {"c": 2}]}, "x")
    assert Counted.built == before + 1  # msgspec checks by building: __post_init__ runs
    with pytest.raises(SchemaError, match=r"x\.items\[1\]\.c"):
        schema.check(Counted, {"n": 1, "items": [{"c": 1}, {"c": -1}]}, "x")


def test_max_len_reads_the_declaration() -> None:
    assert schema.max_len(Root, "name") == 8
    with pytest.raises(TypeError):
        schema.max_len(Root, "enabled")


def test_json_schema_bounds_dict_entries() -> None:
    labels = schema.json_schema(Root)["properties"]["labels"]
    assert labels["maxProperties"] == 4
    assert labels["additionalProperties"] == {"type": "string"}
