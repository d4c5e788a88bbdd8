"""Query parameters of paginated routes: bad ones are a 400 naming the parameter, never a
500 from the parser underneath."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from hub.api import params
from hub.api.errors import ApiError


def _query(**query: str) -> web.Request:
    return make_mocked_request("GET", "/api/v1/devices?" + urlencode(query))


def _field_of(error: ApiError) -> str:
    """The parameter a 400 names."""
    assert error.status == 400
    return str(error.details["field"])


@pytest.mark.parametrize("text", ["9" * 5000, "1" * 4301])
def test_a_limit_with_too_many_digits_is_a_400_naming_it(text: str) -> None:
    """str.isdigit() passed it, then int() refused more than 4,300 digits with a
    ValueError: a 500, and a traceback logged, on every paginated route."""
    with pytest.raises(ApiError) as refused:
        params.limit(_query(limit=text))

    assert _field_of(refused.value) == "query.limit"


def test_a_limit_with_leading_zeros_still_reads() -> None:
    assert params.limit(_query(limit="0050")) == 50


@pytest.mark.parametrize("nesting", [b"[" * 2000, b'{"after": ' + b"[" * 5000])
def test_a_deeply_nested_cursor_is_a_400_naming_it(nesting: bytes) -> None:
    """json.loads raised RecursionError, which no handler caught: a 500."""
    cursor = base64.urlsafe_b64encode(nesting).decode().rstrip("=")

    with pytest.raises(ApiError) as refused:
        params.decode_cursor(_query(cursor=cursor), str)

    assert _field_of(refused.value) == "query.cursor"


def test_a_cursor_this_api_returned_still_reads() -> None:
    cursor = params.encode_cursor("dev-0001")

    assert params.decode_cursor(_query(cursor=cursor), str) == "dev-0001"


def test_a_body_whose_selector_names_a_key_twice_is_refused() -> None:
    """Decoders keep the last of two equal keys: {"site": "north", "site": "south"} would
    select every south device. The same key once, and other bodies, decode as ever."""
    twice = b'{"selector": {"site": "north", "site": "south"}, "mode": "staged"}'
    once = b'{"selector": {"site": "north"}, "mode": "staged"}'

    with pytest.raises(ApiError) as refused:
        params.decode(dict[str, Any], twice)

    assert refused.value.status == 400
    assert "'site' twice" in refused.value.message
    assert params.decode(dict[str, Any], once) == {"selector": {"site": "north"}, "mode": "staged"}
    assert params.decode(dict[str, Any], b'{"a": 1}') == {"a": 1}
