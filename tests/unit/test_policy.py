"""Policy documents: layers, merge order, signatures, and what the agent accepts."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge.policy import PolicyKeeper
from hub.store.policy import Layer, resolve
from outpost import files, policy, wire

HUB_KEY = ed25519.Ed25519PrivateKey.generate()
DEVICE = "dev-000000000001"


def layer(name: str, scope: str, document: dict[str, object], **extra: object) -> Layer:
    fields: dict[str, object] = {
        "selector": {},
        "device_id": None,
        "rank": 0,
        "updated_at": 0.0,
        "updated_by": "t",
        **extra,
    }
    return Layer(name, scope, document=document, **fields)  # type: ignore[arg-type]


def test_layers_resolve_fleet_then_groups_by_rank_then_the_device() -> None:
    everything = [
        layer("zz-late", "group", {"heartbeat_interval": 3.0}, selector={"site": "north"}, rank=5),
        layer("fleet", "fleet", {"heartbeat_interval": 1.0, "log_level": "warning"}),
        layer(
            "aa-early",
            "group",
            {"heartbeat_interval": 2.0, "metrics_interval": 9.0},
            selector={"site": "north"},
        ),
        layer("south", "group", {"heartbeat_interval": 7.0}, selector={"site": "south"}),
        layer("mine", "device", {"metrics_interval": 30.0}, device_id=DEVICE),
        layer("theirs", "device", {"metrics_interval": 99.0}, device_id="dev-other"),
    ]

    chosen = resolve(everything, DEVICE, {"site": "north"})
    merged = policy.load(policy.merge(*(x.document for x in chosen)))

    assert [x.name for x in chosen] == ["fleet", "aa-early", "zz-late", "mine"]
    assert merged.heartbeat_interval == 3.0  # the later group wins
    assert merged.metrics_interval == 30.0  # the device override wins
    assert merged.log_level == "warning"  # from the fleet, untouched since
    assert merged.sync.rate_bytes_per_s == 0  # a default nobody set


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"heartbeat_intervall": 1}, "layer.heartbeat_intervall: unknown key"),
        ({"tasks": {"prefetch": -1}}, "layer.tasks.prefetch: must be at least 0"),
        ({"sync": {"windows": ["25:00-01:00"]}}, "sync.windows"),
        ({"inference": {"report": "some"}}, "layer.inference.report"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_a_bad_layer_is_refused_naming_the_field(document: dict[str, object], words: str) -> None:
    with pytest.raises(policy.PolicyError, match=words.replace(".", r"\.")):
        policy.check_layer(document, "layer")


def signed(
    version: int,
    document: dict[str, object] | None = None,
    *,
    key: ed25519.Ed25519PrivateKey = HUB_KEY,
    device: str = DEVICE,
) -> wire.SignedPolicy:
    s = policy.sign(key, device, version, 1.0, policy.merge(document or {}))
    return wire.SignedPolicy(document=s.document, signature=s.signature)


@pytest.fixture
def keeper(tmp_path: Path) -> tuple[PolicyKeeper, list[policy.Policy]]:
    pub = tmp_path / "hub-signing.pub"
    pub.write_bytes(
        HUB_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    applied: list[policy.Policy] = []
    return PolicyKeeper(
        DEVICE, pub, tmp_path / "policy.signed", lambda p, _: applied.append(p)
    ), applied


def test_the_agent_applies_newer_versions_only_and_reports_refusals(
    keeper: tuple[PolicyKeeper, list[policy.Policy]],
) -> None:
    k, applied = keeper
    assert k.receive(signed(3, {"heartbeat_interval": 2.0}))
    assert not k.receive(signed(3, {"heartbeat_interval": 2.0}))  # the retained copy again
    assert k.report() == wire.PolicyReport(version=3)

    cases = [
        (signed(4, key=ed25519.Ed25519PrivateKey.generate()), "signature does not verify"),
        (signed(2, {"heartbeat_interval": 9.0}), "older than the applied version 3"),
        (signed(3, {"heartbeat_interval": 9.0}), "version 3 is applied with other content"),
        (signed(5, device="dev-other"), "not this device"),
    ]
    for message, words in cases:
        assert not k.receive(message)
        assert words in k.report().reason
    unknown = policy.merge({})
    unknown["colour"] = "red"
    raw = policy.sign(HUB_KEY, DEVICE, 6, 1.0, unknown)
    assert not k.receive(wire.SignedPolicy(document=raw.document, signature=raw.signature))
    assert "colour: unknown key" in k.report().reason
    assert k.report().rejected_version == 6

    assert [p.heartbeat_interval for p in applied] == [2.0]  # the current one kept
    assert k.current is not None
    assert k.current.version == 3


def test_the_applied_policy_survives_a_restart_and_a_tampered_file_does_not(
    keeper: tuple[PolicyKeeper, list[policy.Policy]], tmp_path: Path
) -> None:
    k, _ = keeper
    k.receive(signed(7, {"metrics_interval": 5.0}))
    again: list[policy.Policy] = []
    restarted = PolicyKeeper(
        DEVICE,
        tmp_path / "hub-signing.pub",
        tmp_path / "policy.signed",
        lambda p, _: again.append(p),
    )
    restarted.load()
    assert restarted.current is not None
    assert restarted.current.version == 7
    assert again[0].metrics_interval == 5.0

    kept = msgpack.unpackb((tmp_path / "policy.signed").read_bytes())
    kept["document"] = kept["document"].replace(b"\xcb", b"\xca", 1)  # flip one byte's meaning
    (tmp_path / "policy.signed").write_bytes(msgpack.packb(kept))
    tampered: list[policy.Policy] = []
    third = PolicyKeeper(
        DEVICE,
        tmp_path / "hub-signing.pub",
        tmp_path / "policy.signed",
        lambda p, _: tampered.append(p),
    )
    third.load()
    assert third.current is None
    assert tampered == []


def test_a_policy_that_cannot_be_kept_on_disk_is_refused_then_taken_when_it_comes_again(
    keeper: tuple[PolicyKeeper, list[policy.Policy]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k, applied = keeper
    assert k.receive(signed(1, {"heartbeat_interval": 2.0}))

    def disk_full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(files, "replace", disk_full)
        assert not k.receive(signed(2, {"heartbeat_interval": 9.0}))  # no crash
    assert k.report() == wire.PolicyReport(
        version=1,
        rejected_version=2,
        reason="could not keep it on disk: No space left on device",
    )
    assert [p.heartbeat_interval for p in applied] == [2.0]  # the kept one still rules

    # The retained copy at the next connect, with room on the disk again.
    assert k.receive(signed(2, {"heartbeat_interval": 9.0}))
    assert k.current is not None
    assert k.current.version == 2
    assert msgpack.unpackb((tmp_path / "policy.signed").read_bytes())["document"]


def test_two_policies_handed_over_at_once_are_taken_one_after_the_other(
    keeper: tuple[PolicyKeeper, list[policy.Policy]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MQTT and a courier bundle hand policies over from their own threads: both passed
    the version check, then both were kept and applied, the older one possibly last (and
    kept on disk for the next start)."""
    k, applied = keeper
    assert k.receive(signed(4, {"heartbeat_interval": 4.0}))
    newer_writing, older_writing = threading.Event(), threading.Event()
    real_replace = files.replace

    def replace(path: Path, data: bytes, mode: int = files.PUBLIC) -> None:
        if threading.current_thread().name == "newer":
            newer_writing.set()
            # The fault's timing: the older one is given the time to reach its write
            # too, which it does only if nothing keeps it out meanwhile.
            older_writing.wait(2.0)
        else:
            older_writing.set()
        real_replace(path, data, mode)

    monkeypatch.setattr("edge.policy.files.replace", replace)
    results: dict[int, bool] = {}
    newer = threading.Thread(
        target=lambda: results.__setitem__(6, k.receive(signed(6, {"heartbeat_interval": 6.0}))),
        name="newer",
    )
    newer.start()
    assert newer_writing.wait(30)  # past its version check
    older = threading.Thread(
        target=lambda: results.__setitem__(5, k.receive(signed(5, {"heartbeat_interval": 5.0}))),
        name="older",
    )
    older.start()
    newer.join(30)
    older.join(30)

    assert results == {6: True, 5: False}
    assert [p.heartbeat_interval for p in applied] == [4.0, 6.0]
    kept = k.kept()
    assert kept is not None
    assert kept[0].version == 6


def test_a_layer_is_kept_as_declared_an_integer_in_a_float_field_a_float() -> None:
    # JSON has integers beyond the 64 bits msgpack encodes: stored as given, one could
    # never be signed.
    layer = {"bounds": {"metrics": {"max_age_s": 10**23}}, "sync": {}, "tasks": {"prefetch": 3}}
    checked = policy.check_layer(layer, "body.document")
    assert checked == {
        "bounds": {"metrics": {"max_age_s": 1e23}},
        "sync": {},
        "tasks": {"prefetch": 3},
    }
    assert isinstance(checked["bounds"]["metrics"]["max_age_s"], float)
    policy.digest(checked)  # it encodes


def test_the_size_a_policy_is_measured_at_is_what_a_device_reads() -> None:
    assert policy.MAX_SIGNED_BYTES == 65536  # SignedPolicy.document in outpost/wire/down.py
    key = ed25519.Ed25519PrivateKey.generate()
    document = {"allowed_models": ["vibration-anomaly"], "heartbeat_interval": 5.0}
    measured = policy.signed_size("dev-1", document)
    for version, issued_at in ((1, 0.0), (2**53, 1.8e9), (2**63 - 1, 1.5)):
        signed = policy.sign(key, "dev-1", version, issued_at, document)
        assert len(signed.document) <= measured
    assert len(policy.sign(key, "dev-1", 2**63 - 1, 1.5, document).document) == measured
    assert policy.undeliverable("dev-1", document) == ""
    big = {"allowed_models": ["m" * 70_000]}
    assert policy.undeliverable("dev-1", big).startswith("signed, it is 70")
    assert policy.undeliverable("dev-1", {"x": 10**23}).startswith("cannot be signed")
