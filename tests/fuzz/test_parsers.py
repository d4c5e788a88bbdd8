"""Fuzz every parser that reads input from across a trust boundary.

Each property feeds arbitrary and mutated input to one parser and holds it to the same
contract: it accepts, or it raises the module's own error with a message saying why,
within a time bound. Anything else (a `TypeError`, a `KeyError`, a hang) is a bug.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from edge import enroll
from edge.config import SECTION as AGENT_SECTION
from edge.config import AgentConfig
from edge.profile import ProfileError, parse_profile
from hub.access import apitokens
from hub.config import SECTION as HUB_SECTION
from hub.config import HubConfig
from hub.fleet import bootstrap
from outpost import modelbundle, offerseal, policy, release, schema, settings, signing, wire
from outpost.modelbundle import BundleError
from outpost.offerseal import SealError
from outpost.policy import PolicyError
from outpost.release import ReleaseError
from outpost.settings import SettingsError
from outpost.wire import WireError
from tests.fuzz.conftest import count
from tests.support import PROFILES, REPO

# A parse of a few kilobytes that takes longer than this is hanging, not working.
TIME_BOUND_S = 2.0

KEY = ed25519.Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
DEVICE = "dev-fuzz0001"
BUNDLE = REPO / "models" / "vibration-anomaly" / "1.0.0"

# JSON-like values, nested: what a decoded msgpack/JSON/TOML document can hold.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # msgpack's range
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def refuses_only(error: type[Exception], parse: Callable[[], object]) -> Exception | None:
    """Run `parse`; allow success or `error` with a message; bound its time."""
    started = time.monotonic()
    refusal: Exception | None = None
    try:
        parse()
    except error as exc:
        refusal = exc
    assert time.monotonic() - started < TIME_BOUND_S, "parser took too long"
    assert refusal is None or str(refusal).strip(), f"{refusal!r} without a message"
    return refusal


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (op, position, byte) edits: 0 flip, 1 insert, 2 delete, 3 truncate."""
    buffer = bytearray(data)
    for op, position, value in edits:
        if not buffer:
            break
        where = position % len(buffer)
        if op == 0:
            buffer[where] ^= value or 1
        elif op == 1:
            buffer.insert(where, value)
        elif op == 2:
            del buffer[where]
        else:
            del buffer[where:]
    return bytes(buffer)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)

# ---------------------------------------------------------------------------- wire codec

VALID_MESSAGES: list[tuple[str, Any]] = [
    ("status", wire.Status(conn="c-1", online=True)),
    (
        "heartbeat",
        wire.Heartbeat(
            conn="c-1",
            uptime_s=12.5,
            heartbeat_interval=10.0,
            load=wire.Load(
                cpu_percent=12.0,
                memory_percent=40.5,
                disk_percent=3.0,
                rss_bytes=30 << 20,
                temperature_c=55.5,
            ),
        ),
    ),
    (
        "hello",
        wire.Hello(
            conn="c-1",
            agent_version="0.1.0",
            profile="generic",
            heartbeat_interval=10.0,
            capabilities=wire.Capabilities(
                cores=4,
                memory_bytes=4 << 30,
                disk_bytes=32 << 30,
                accelerator="none",
                arch="x86_64",
            ),
        ),
    ),
]
VALID_PAYLOADS = [wire.encode(kind, body) for kind, body in VALID_MESSAGES]
WIRE_REASONS = {"oversized", "malformed", "version", "kind", "schema"}


def decode_only_wire_errors(payload: bytes, expected_kind: str | None = None) -> None:
    for kinds in (wire.UP_KINDS, wire.DOWN_KINDS):

        def parse(kinds: dict[str, type[Any]] = kinds) -> None:
            wire.decode(payload, kinds=kinds, expected_kind=expected_kind)

        exc = refuses_only(WireError, parse)
        if exc is not None:
            assert isinstance(exc, WireError)
            assert exc.reason in WIRE_REASONS


@given(st.binary(max_size=4096))
def test_wire_decode_arbitrary_bytes(payload: bytes) -> None:
    count("wire.decode")
    decode_only_wire_errors(payload)


@given(st.sampled_from(VALID_PAYLOADS), EDITS)
def test_wire_decode_mutated_messages(payload: bytes, edits: list[tuple[int, int, int]]) -> None:
    count("wire.decode")
    decode_only_wire_errors(mutate(payload, edits))


@given(
    st.sampled_from(VALID_MESSAGES),
    st.sampled_from(["v", "kind", "id", "ts", "body", "extra"]),
    VALUES,
    st.text(max_size=8),
)
def test_wire_decode_envelopes_with_wrong_fields(
    message: tuple[str, Any], field: str, value: Any, inner: str
) -> None:
    count("wire.decode")
    kind, body = message
    envelope = msgpack.unpackb(wire.encode(kind, body), raw=False)
    if field == "body" and isinstance(value, dict):
        envelope["body"] = {**envelope["body"], **value}
    elif field == "body" and inner:
        envelope["body"][inner] = value  # one wrong or unknown field of the body
    else:
        envelope[field] = value
    decode_only_wire_errors(msgpack.packb(envelope, use_bin_type=True), expected_kind=kind)


@given(st.sampled_from(VALID_MESSAGES), st.integers(0, 2**63 - 1), st.text(min_size=1, max_size=64))
def test_wire_valid_messages_round_trip(message: tuple[str, Any], ts: int, msg_id: str) -> None:
    count("wire.round-trip")
    kind, body = message
    envelope = wire.decode(wire.encode(kind, body, ts_ms=ts, msg_id=msg_id), kinds=wire.UP_KINDS)
    assert (envelope.kind, envelope.body, envelope.ts, envelope.id) == (kind, body, ts, msg_id)


# ------------------------------------------------------------- signed policy and release

POLICY_BODY = {"device_id": DEVICE, "version": 3, "issued_at": 1.7e9, "policy": {}}


def signed_variants(draw_body: Any, raw: bytes, choice: int) -> signing.Signed:
    """A validly signed body (0), validly signed raw bytes (1), or a bad signature (2)."""
    if choice == 0:
        return signing.sign(KEY, draw_body)
    if choice == 1:
        return signing.Signed(raw, KEY.sign(raw))
    return signing.Signed(signing.canonical(draw_body), raw[:64])


@given(
    st.dictionaries(st.sampled_from([*POLICY_BODY, "other"]), VALUES, min_size=0, max_size=5).map(
        lambda changes: {**POLICY_BODY, **changes}
    ),
    st.binary(max_size=256),
    st.integers(0, 2),
)
def test_policy_verify(body: dict[str, Any], raw: bytes, choice: int) -> None:
    count("policy.verify")
    signed = signed_variants(body, raw, choice)
    refuses_only(PolicyError, lambda: policy.verify(PUBLIC, signed, DEVICE))


@given(
    st.dictionaries(
        st.sampled_from(["sync", "bounds", "tasks", "inference", "masking", "other"]),
        st.dictionaries(st.text(max_size=12), VALUES, max_size=4) | VALUES,
        max_size=4,
    )
)
def test_policy_verify_documents(document: dict[str, Any]) -> None:
    count("policy.verify")
    signed = signing.sign(KEY, {**POLICY_BODY, "policy": document})
    refuses_only(PolicyError, lambda: policy.verify(PUBLIC, signed, DEVICE))


MANIFEST = json.loads((BUNDLE / modelbundle.MANIFEST_FILE).read_text())
SAMPLE = json.loads((BUNDLE / modelbundle.SAMPLE_FILE).read_text())


def _changed(document: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    changed: dict[str, Any] = json.loads(json.dumps(document))
    target = changed
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            break
        target = target[key]
    target[path[-1]] = value
    return changed


MANIFEST_PATHS = st.sampled_from(
    [[key] for key in MANIFEST]
    + [["input", key] for key in MANIFEST["input"]]
    + [["output", key] for key in MANIFEST["output"]]
    + [["other"]]
)


@given(MANIFEST_PATHS, VALUES, st.sampled_from(["manifest", "sample", "issued_at", "other"]))
def test_release_verify(path: list[str], value: Any, part: str) -> None:
    count("release.verify")
    body: dict[str, Any] = {"manifest": MANIFEST, "sample": SAMPLE, "issued_at": 1.7e9}
    if part == "manifest":
        body["manifest"] = _changed(MANIFEST, path, value)
    else:
        body[part] = value
    signed = signing.sign(KEY, body)
    refuses_only(ReleaseError, lambda: release.verify(PUBLIC, signed))


@given(st.binary(max_size=512), st.integers(0, 2))
def test_release_verify_raw_documents(raw: bytes, choice: int) -> None:
    count("release.verify")
    signed = signed_variants({"manifest": MANIFEST}, raw, choice)
    refuses_only(ReleaseError, lambda: release.verify(PUBLIC, signed))


SEAL_BODY = {
    "device_id": DEVICE,
    "seq": 5,
    "issued_at": 1.7e9,
    "releases": offerseal.digests([b"doc"]),
    "shadows": [],
}


@given(
    st.dictionaries(st.sampled_from([*SEAL_BODY, "other"]), VALUES, min_size=0, max_size=5).map(
        lambda changes: {**SEAL_BODY, **changes}
    ),
    st.binary(max_size=256),
    st.integers(0, 2),
)
def test_offerseal_verify(body: dict[str, Any], raw: bytes, choice: int) -> None:
    count("offerseal.verify")
    signed = signed_variants(body, raw, choice)
    refuses_only(SealError, lambda: offerseal.verify(PUBLIC, signed, DEVICE, [b"doc"], []))


@given(
    st.one_of(
        st.binary(max_size=1024),
        st.tuples(MANIFEST_PATHS, JSON_VALUES).map(
            lambda change: json.dumps(_changed(MANIFEST, *change)).encode()
        ),
        st.builds(mutate, st.just(json.dumps(MANIFEST).encode()), EDITS),
    ),
    st.one_of(
        st.none(), st.binary(max_size=256), JSON_VALUES.map(lambda v: json.dumps(v).encode())
    ),
)
def test_model_bundle_loaders(manifest: bytes, sample: bytes | None) -> None:
    count("modelbundle.read_bundle")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / modelbundle.MANIFEST_FILE).write_bytes(manifest)
        if sample is not None:
            (root / modelbundle.SAMPLE_FILE).write_bytes(sample)
        (root / modelbundle.MODEL_FILE).write_bytes(b"\0" * 64)
        refuses_only(BundleError, lambda: modelbundle.read_bundle(root))


# ---------------------------------------------------------------------------- tokens


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT_HEADERS = st.one_of(
    st.fixed_dictionaries(
        {"alg": st.sampled_from(["EdDSA", "none", "None", "HS256", "RS256", "ES256", ""])},
        optional={"typ": st.text(max_size=5), "kid": st.text(max_size=10), "crit": JSON_VALUES},
    ),
    JSON_VALUES,
)
CLAIM_NAMES = [
    "typ",
    "aud",
    "iss",
    "sub",
    "role",
    "kind",
    "jti",
    "iat",
    "exp",
    "nbf",
    "url",
    "caf",
    "labels",
]
CLAIMS = st.dictionaries(
    st.sampled_from(CLAIM_NAMES),
    JSON_VALUES,
    max_size=10,
)


ONE_CLAIM = st.dictionaries(
    st.sampled_from(CLAIM_NAMES), JSON_VALUES | st.binary().map(str), min_size=1, max_size=2
)
NOW = int(time.time())
EDDSA_HEADER = b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
VALID_CLAIMS: dict[str, Any] = {
    "typ": apitokens.TOKEN_TYPE,
    "aud": apitokens.AUDIENCE,
    "sub": "fuzz",
    "role": "admin",
    "kind": "session",
    "jti": "j",
    "iat": NOW - 10,
    "exp": NOW + 86400,
    "url": "https://hub.local:8443",
    "caf": "sha256:00",
}


@st.composite
def token_texts(draw: st.DrawFn) -> str:
    """Strings shaped like JWTs (some signed with the real key), and arbitrary text."""
    shape = draw(st.integers(0, 4))
    if shape == 0:
        return draw(st.text(max_size=200))
    if shape == 1:
        parts = draw(st.lists(st.binary(max_size=60).map(b64), min_size=1, max_size=5))
        return ".".join(parts)
    header = json.dumps(draw(JWT_HEADERS)).encode()
    payload = json.dumps(draw(CLAIMS)).encode()
    if shape == 2:
        signature = b64(draw(st.binary(max_size=64)))
        return f"{b64(header)}.{b64(payload)}.{signature}"
    # Signed by the hub's key: the claims alone must be checked, not trusted. Shape 4
    # changes one claim of an otherwise valid token, to get past the generic checks.
    claims = draw(CLAIMS) if shape == 3 else {**VALID_CLAIMS, **draw(ONE_CLAIM)}
    signed = f"{EDDSA_HEADER}.{b64(json.dumps(claims).encode())}"
    return f"{signed}.{b64(KEY.sign(signed.encode()))}"


@given(token_texts())
def test_api_token_verify(token: str) -> None:
    count("apitokens.verify")
    refuses_only(apitokens.ApiTokenError, lambda: apitokens.verify(token, PUBLIC))


@given(token_texts())
def test_bootstrap_token_verify(token: str) -> None:
    count("bootstrap.verify")
    refuses_only(bootstrap.BootstrapTokenError, lambda: bootstrap.verify(token, PUBLIC))


@given(token_texts())
def test_agent_reads_bootstrap_token(token: str) -> None:
    count("edge.enroll.read_token")
    refuses_only(enroll.EnrollError, lambda: enroll.read_token(token))


# ------------------------------------------------------------------- config and profile

PROFILE_TEXT = (PROFILES / "generic.toml").read_text()
TOML_VALUES = st.sampled_from(
    [
        '""',
        "0",
        "-1",
        "1e999",
        "nan",
        "inf",
        "true",
        "[]",
        "{}",
        '"x"',
        "[1, 2]",
        '"\\u0000"',
        "1979-05-27",
    ]
)


@st.composite
def toml_texts(draw: st.DrawFn, base: str) -> str:
    """The base document with lines dropped, values replaced, keys added; or bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=300))
    lines = base.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        where = draw(st.integers(0, len(lines) - 1))
        op = draw(st.integers(0, 2))
        if op == 0:
            del lines[where]
        elif op == 1 and "=" in lines[where]:
            lines[where] = lines[where].split("=")[0] + "= " + draw(TOML_VALUES)
        else:
            key = draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
            lines.insert(where, f"{key} = {draw(TOML_VALUES)}")
    return "\n".join(lines)


@given(toml_texts(PROFILE_TEXT))
def test_profile_loader(text: str) -> None:
    count("edge.profile.parse_profile")
    refuses_only(ProfileError, lambda: parse_profile(text, "fuzz.toml"))


HUB_TOML = (
    "[hub]\nmqtt_port = 8883\nweb_port = 8443\noffline_after_heartbeats = 3\n"
    'server_names = ["hub.local"]\nlog_level = "info"\n'
)
AGENT_TOML = '[agent]\nheartbeat_interval = 10.0\nlog_level = "info"\n'


@pytest.mark.parametrize(
    ("cls", "section", "base"),
    [(HubConfig, HUB_SECTION, HUB_TOML), (AgentConfig, AGENT_SECTION, AGENT_TOML)],
)
def test_settings_loader(cls: type[Any], section: str, base: str) -> None:
    @given(toml_texts(base) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
    def check(text: str) -> None:
        count("outpost.settings.load_file")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "settings.toml"
            path.write_bytes(text.encode("utf-8", "surrogatepass"))
            refuses_only(SettingsError, lambda: settings.load_file(cls, path, section, {}))

    check()


def test_schema_error_names_the_field() -> None:
    """A rejection names its reason: the schema error carries the field's path."""
    exc = refuses_only(PolicyError, lambda: policy.load({"sync": {"batch_max": "many"}}))
    assert exc is not None
    assert "batch_max" in str(exc) or "sync" in str(exc)
    assert isinstance(schema.SchemaError("a.b", "x"), ValueError)
