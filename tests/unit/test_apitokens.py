"""An API token that is not one, or not this hub's, is refused with words a person can act
on (never PyJWT's "Not enough segments"); a lifetime out of bounds names the bounds."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.access import apitokens
from hub.fleet import bootstrap

KEY = ed25519.Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()


@pytest.mark.parametrize(
    "token", ["", "garbage", "a.b.c", "a.b", "eyJ.eyJ.x", "\u00e9.\u00e9.\u00e9"]
)
def test_a_token_that_is_no_token_says_so(token: str) -> None:
    with pytest.raises(apitokens.ApiTokenError) as refused:
        apitokens.verify(token, PUBLIC)

    assert str(refused.value) == apitokens.MALFORMED
    assert "empty or not a token" in str(refused.value)


def test_a_bootstrap_token_is_named_as_one() -> None:
    token, _ = bootstrap.mint(
        KEY, hub_url="https://hub:8443", ca_fingerprint="sha256:00", ttl=60, labels={}
    )

    with pytest.raises(apitokens.ApiTokenError, match="a device's bootstrap token"):
        apitokens.verify(token, PUBLIC)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"aud": "someone-else"}, "not an Outpost API token: Audience doesn't match"),
        ({"jti": None}, 'not an Outpost API token: Token is missing the "jti" claim'),
    ],
)
def test_a_token_for_something_else_is_not_an_api_token(
    change: dict[str, object], words: str
) -> None:
    claims = {
        "typ": apitokens.TOKEN_TYPE,
        "aud": apitokens.AUDIENCE,
        "sub": "alice",
        "role": "viewer",
        "jti": "j1",
        "iat": 1,
        "exp": 2**40,
    }
    claims.update(change)
    token = jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, KEY, algorithm=apitokens.ALGORITHM
    )

    with pytest.raises(apitokens.ApiTokenError) as refused:
        apitokens.verify(token, PUBLIC)
    assert str(refused.value) == words


def test_a_token_signed_another_way_names_the_algorithm() -> None:
    token = jwt.encode({"sub": "x"}, "a shared secret of thirty-two bytes!", algorithm="HS256")

    with pytest.raises(apitokens.ApiTokenError, match="not signed with EdDSA"):
        apitokens.verify(token, PUBLIC)


@pytest.mark.parametrize(
    ("ttl", "kind", "words"),
    [
        (
            400 * 86400.0,
            "session",
            "the ttl of a session must be positive and at most 12h, got 400d "
            "(an api-key may last up to 366d)",
        ),
        (400 * 86400.0, "api-key", "the ttl of an api-key must be positive and at most 366d"),
        (0.0, "session", "got 0s"),
    ],
)
def test_a_lifetime_out_of_bounds_names_the_bounds(
    ttl: float, kind: apitokens.Kind, words: str
) -> None:
    with pytest.raises(ValueError, match="the ttl of") as refused:
        apitokens.check_request("viewer", "alice", ttl, kind)
    assert words in str(refused.value)


def test_a_long_subject_is_not_echoed_whole() -> None:
    with pytest.raises(ValueError, match="subject must be") as refused:
        apitokens.check_request("viewer", "x " * 50_000, 60, "session")
    with pytest.raises(ValueError, match=r"got 'a b'$"):  # a short one is, whole
        apitokens.check_request("viewer", "a b", 60, "session")

    assert "(100,000 characters)" in str(refused.value)
    assert len(str(refused.value)) < 200
