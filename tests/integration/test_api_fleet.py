"""Fleet routes: filters, stable cursor pagination, labels, errors in the JSON shape."""

from __future__ import annotations

import time

import pytest

from hub.app import Hub
from hub.store import HeartbeatSeen, HelloSeen
from tests.api_client import ApiClient
from tests.databases import hub_backend  # noqa: F401 - each test on SQLite and PostgreSQL
from tests.support import add_device


async def _collect(api: ApiClient, token: str, limit: int, **query: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": str(limit), **query, **({"cursor": cursor} if cursor else {})}
        reply = await api.call("GET", "/api/v1/devices", token=token, params=params)
        assert reply.status == 200, reply.body
        assert len(reply.body["items"]) <= limit
        ids += [d["id"] for d in reply.body["items"]]
        cursor = reply.body["next_cursor"]
        if cursor is None:
            return ids


async def test_pagination_is_stable_while_devices_are_added(hub: Hub, api: ApiClient) -> None:
    token = await api.token("viewer")
    originals = [f"dev-page{n:04d}" for n in range(0, 20, 2)]
    for device_id in originals:
        await add_device(hub, device_id)

    first = await api.call("GET", "/api/v1/devices", token=token, params={"limit": "3"})
    seen = [d["id"] for d in first.body["items"]]
    # Devices enroll between pages, before and after the cursor.
    await add_device(hub, "dev-page0001")
    await add_device(hub, "dev-page0015")
    rest = await _collect_from(api, token, first.body["next_cursor"])

    everything = seen + rest
    assert len(everything) == len(set(everything)), "a device appeared twice"
    assert set(originals) <= set(everything), "a device was skipped"
    assert everything == sorted(everything)
    assert "dev-page0015" in rest  # after the cursor: seen; before it: rightly not revisited


async def _collect_from(api: ApiClient, token: str, cursor: str) -> list[str]:
    ids: list[str] = []
    while cursor:
        reply = await api.call(
            "GET", "/api/v1/devices", token=token, params={"limit": "3", "cursor": cursor}
        )
        ids += [d["id"] for d in reply.body["items"]]
        cursor = reply.body["next_cursor"]
    return ids


async def test_filters_by_online_label_and_profile(hub: Hub, api: ApiClient) -> None:
    token = await api.token("viewer")
    await add_device(hub, "dev-north001", profile="raspberry-pi-4", labels={"site": "north"})
    await add_device(
        hub, "dev-north002", profile="x86-gateway", labels={"site": "north", "line": "2"}
    )
    await add_device(hub, "dev-south001", profile="raspberry-pi-4", labels={"site": "south"})
    await hub.parts.store.record_presence(
        [
            HelloSeen(
                device_id="dev-north002",
                conn="c",
                now=time.time(),
                profile="x86-gateway",
                agent_version="t",
                heartbeat_interval=10,
                capabilities={},
            )
        ]
    )

    assert await _collect(api, token, 50, label="site=north") == ["dev-north001", "dev-north002"]
    assert await _collect(api, token, 1, profile="raspberry-pi-4") == [
        "dev-north001",
        "dev-south001",
    ]
    assert await _collect(api, token, 50, online="true") == ["dev-north002"]
    reply = await api.call(
        "GET", "/api/v1/devices", token=token, params=[("label", "site=north"), ("label", "line=2")]
    )
    assert [d["id"] for d in reply.body["items"]] == ["dev-north002"]


async def test_bad_query_parameters_name_the_parameter(api: ApiClient) -> None:
    token = await api.token("viewer")
    for params, field in [
        ({"limit": "0"}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
        ({"limit": "501"}, "query.limit"),
        ({"online": "yes"}, "query.online"),
        ({"cursor": "garbage!"}, "query.cursor"),
        ({"label": "no-equals"}, "query.label"),
        ({"label": "bad key!=x"}, "query.label"),
    ]:
        reply = await api.call("GET", "/api/v1/devices", token=token, params=params)
        assert reply.status == 400, (params, reply.body)
        assert reply.error["details"]["field"] == field, (params, reply.body)
    # Terms are ANDed: a key twice with two values would match nothing, not the last.
    both = [("label", "site=north"), ("label", "site=south")]
    reply = await api.call("GET", "/api/v1/devices", token=token, params=both)
    assert reply.status == 400, reply.body
    assert "'site' is given twice" in reply.error["message"], reply.body
    again = [("label", "site=north"), ("label", "site=north")]
    assert (await api.call("GET", "/api/v1/devices", token=token, params=again)).status == 200


async def test_read_a_device(hub: Hub, api: ApiClient) -> None:
    token = await api.token("viewer")
    await add_device(hub, "dev-read0001", labels={"site": "north"})

    reply = await api.call("GET", "/api/v1/devices/dev-read0001", token=token)
    missing = await api.call("GET", "/api/v1/devices/dev-nothere01", token=token)

    assert reply.status == 200
    assert reply.body["labels"] == {"site": "north"}
    assert reply.body["certificate"] == {
        "serial": b"dev-read0001".hex(),
        "not_before": 1.0,
        "not_after": 2.0,
    }
    assert missing.status == 404
    assert missing.error["code"] == "not_found"


async def test_patch_merges_labels_and_is_audited(hub: Hub, api: ApiClient) -> None:
    admin = await api.token("admin", subject="alice")
    await add_device(hub, "dev-label001", labels={"site": "north", "old": "x"})

    reply = await api.call(
        "PATCH",
        "/api/v1/devices/dev-label001",
        token=admin,
        body={"labels": {"group": "pumps", "old": None}},
    )
    audit = await api.call("GET", "/api/v1/audit", token=admin)

    assert reply.status == 200
    assert reply.body["labels"] == {"site": "north", "group": "pumps"}
    entry = audit.body["items"][0]
    assert entry["subject"] == "alice"
    assert entry["role"] == "admin"
    assert entry["action"] == "device.update"
    assert entry["status"] == 200
    assert entry["detail"] == {"device": "dev-label001", "labels": {"group": "pumps", "old": None}}


async def test_patch_refuses_bad_bodies_and_changes_nothing(hub: Hub, api: ApiClient) -> None:
    admin = await api.token("admin")
    await add_device(hub, "dev-label002", labels={"site": "north"})
    cases = [
        ({"labels": {"site": 3}}, "body.labels.site"),
        ({"labels": {"site": "x"}, "colour": "red"}, "body.colour"),
        ({"labels": {"bad key": "x"}}, "body.labels"),
        ({"tags": {}}, "body.tags"),
        ([1, 2], "body"),
    ]
    for body, field in cases:
        reply = await api.call("PATCH", "/api/v1/devices/dev-label002", token=admin, body=body)
        assert reply.status == 400, body
        assert reply.error["details"]["field"] == field, reply.body
    not_json = await api.call(
        "PATCH", "/api/v1/devices/dev-label002", token=admin, raw=b"{not json"
    )
    too_big = await api.call(
        "PATCH",
        "/api/v1/devices/dev-label002",
        token=admin,
        raw=b'{"labels": {"a": "' + b"x" * 70_000 + b'"}}',
    )
    missing = await api.call(
        "PATCH", "/api/v1/devices/dev-nothere01", token=admin, body={"labels": {"a": "b"}}
    )

    assert not_json.status == 400
    assert too_big.status == 413
    assert too_big.error["code"] == "too_large"
    assert missing.status == 404
    device = await hub.parts.store.device("dev-label002")
    assert device is not None
    assert device.labels == {"site": "north"}


async def test_unknown_route_and_method_answer_in_json(api: ApiClient) -> None:
    token = await api.token("viewer")
    nowhere = await api.call("GET", "/api/v1/nowhere", token=token)
    wrong_method = await api.call("DELETE", "/api/v1/devices", token=token)

    assert nowhere.status == 404
    assert nowhere.error["code"] == "not_found"
    assert wrong_method.status == 405


async def test_a_fault_of_the_hub_answers_500_in_json_without_its_details(
    hub: Hub, api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await api.token("viewer")
    await add_device(hub, "dev-fault001")
    assert (await api.call("GET", "/api/v1/devices/dev-fault001", token=token)).status == 200

    async def broken(*args: object) -> None:
        raise RuntimeError("secret-looking detail")

    monkeypatch.setattr(hub.parts.store, "find_device", broken)
    reply = await api.call("GET", "/api/v1/devices/dev-fault001", token=token)

    assert reply.status == 500
    assert reply.error["code"] == "internal"
    assert "secret-looking detail" not in str(reply.body)


async def test_a_revoked_device_reads_as_revoked_and_is_neither_online_nor_offline(
    hub: Hub, api: ApiClient
) -> None:
    viewer = await api.token("viewer")
    await add_device(hub, "dev-revoked01")
    await add_device(hub, "dev-offline01")
    hello = HelloSeen(
        device_id="dev-revoked01",
        conn="c",
        now=time.time(),
        profile="generic",
        agent_version="t",
        heartbeat_interval=10,
        capabilities={},
    )
    await hub.parts.store.record_presence([hello])  # online until revoked

    revoked = await api.call(
        "POST",
        "/api/v1/devices/dev-revoked01/revoke",
        token=await api.token("admin", subject="alice"),
    )
    assert revoked.status == 200, revoked.body
    # A heartbeat that got through before the broker re-read the CRL changes nothing.
    await hub.parts.store.record_presence(
        [
            HeartbeatSeen(
                device_id="dev-revoked01", conn="c", now=time.time(), heartbeat_interval=10, load={}
            )
        ]
    )
    again = await api.call(
        "POST",
        "/api/v1/devices/dev-revoked01/revoke",
        token=await api.token("admin", subject="bob"),
    )
    assert again.status == 200, again.body

    one = await api.call("GET", "/api/v1/devices/dev-revoked01", token=viewer)
    listed = await api.call("GET", "/api/v1/devices", token=viewer)

    fields = ("online", "revoked", "revoked_at", "revoked_by")
    expected = {
        # The first revocation's time and author stay.
        "dev-revoked01": dict(
            zip(fields, (False, True, revoked.body["revoked_at"], "alice"), strict=True)
        ),
        "dev-offline01": dict(zip(fields, (False, False, None, None), strict=True)),
    }
    assert one.status == 200
    assert {k: one.body.get(k, "absent") for k in fields} == expected["dev-revoked01"]
    assert {
        d["id"]: {k: d.get(k, "absent") for k in fields} for d in listed.body["items"]
    } == expected
    # Offline names the enrolled devices that should be connected: not the revoked one.
    assert await _collect(api, viewer, 50, online="false") == ["dev-offline01"]


async def test_the_list_shows_each_device_as_the_device_route_does(
    hub: Hub, api: ApiClient
) -> None:
    """The list splices the JSON columns in as stored (DeviceOut.listed), the device route
    builds them (DeviceOut.of): the answers must not differ, in any state a device has."""
    viewer = await api.token("viewer")
    await add_device(hub, "dev-same0001")  # enrolled, never seen: empty JSON columns
    await add_device(hub, "dev-same0002", labels={"site": "nörd", "line": "2", "q": 'a"b'})
    await add_device(hub, "dev-same0003", labels={"site": "south"})
    now = time.time()
    model = {"name": "m", "version": "1.0.1", "sha256": "ab" * 32, "state": "ready", "error": ""}
    await hub.parts.store.record_presence(
        [
            HelloSeen(
                "dev-same0002", "c", now, "rpi-4", "1.9.0", 10.0,
                {"cores": 4, "memory_bytes": 4 << 30, "arch": "aarch64"}, "litert 1.2",
                [model], 2,
            ),
            HeartbeatSeen(
                "dev-same0002", "c", now + 0.123456789, 10.0,
                {"cpu_percent": 12.5, "temperature_c": None, "rss_bytes": 61_440_000},
                {"streams": {"results": {"records": 3, "fill": 0.25}}, "counters": {}},
                [model],
            ),
            HelloSeen("dev-same0003", "c", now, "generic", "1.9.0", 5.0, {}),
        ]
    )  # fmt: skip
    revoked = await api.call(
        "POST", "/api/v1/devices/dev-same0003/revoke", token=await api.token("admin")
    )
    assert revoked.status == 200, revoked.body

    listed = await api.call("GET", "/api/v1/devices", token=viewer)
    each = {
        d["id"]: (await api.call("GET", f"/api/v1/devices/{d['id']}", token=viewer)).body
        for d in listed.body["items"]
    }

    assert listed.status == 200, listed.body
    assert [d["id"] for d in listed.body["items"]] == sorted(each)
    assert len(each) == 3
    for device in listed.body["items"]:
        assert device == each[device["id"]]
        assert list(device) == list(each[device["id"]])  # the fields in the same order
    assert each["dev-same0002"]["labels"]["site"] == "nörd"
    assert each["dev-same0002"]["store"]["streams"]["results"]["fill"] == 0.25
    assert each["dev-same0003"]["revoked"] is True


async def test_a_device_is_renamed_and_reached_by_its_name(hub: Hub, api: ApiClient) -> None:
    admin = await api.token("admin")
    viewer = await api.token("viewer")
    await add_device(hub, "dev-name0001")
    await add_device(hub, "dev-name0002")

    renamed = await api.call(
        "PATCH", "/api/v1/devices/dev-name0001", token=admin, body={"name": "press-1"}
    )
    taken = await api.call(
        "PATCH", "/api/v1/devices/dev-name0002", token=admin, body={"name": "press-1"}
    )
    bad = [
        await api.call("PATCH", "/api/v1/devices/dev-name0002", token=admin, body={"name": name})
        for name in ("Press 1", "dev-0123456789ab", "")
    ]
    by_name = await api.call("GET", "/api/v1/devices/press-1", token=viewer)
    events = await api.call("GET", "/api/v1/devices/press-1/events?limit=1", token=viewer)
    older = await api.call(
        "GET", f"/api/v1/devices/press-1/events?cursor={events.body['next_cursor']}", token=viewer
    )
    unknown = await api.call("GET", "/api/v1/devices/press-9/events", token=viewer)
    other = await hub.parts.store.device("dev-name0002")

    assert renamed.status == 200, renamed.body
    assert renamed.body["name"] == "press-1"
    assert taken.status == 409
    assert taken.error["code"] == "name_taken"
    assert [r.status for r in bad] == [422, 422, 422]
    assert "lower-case letters" in bad[0].error["message"]
    assert other is not None
    assert other.name == "dev-name0002"  # nothing changed
    assert by_name.status == 200
    assert by_name.body["id"] == "dev-name0001"
    assert [(e["kind"], e["detail"]) for e in events.body["items"]] == [
        ("renamed", "dev-name0001 -> press-1")
    ]
    assert [e["kind"] for e in older.body["items"]] == ["enrolled"]
    assert older.body["next_cursor"] is None
    assert unknown.status == 404
    assert "press-9" in unknown.error["message"]


async def test_labels_are_capped_across_patches(hub: Hub, api: ApiClient) -> None:
    """Each patch was checked alone: two of 32 labels left a device with 64."""
    admin = await api.token("admin")
    await add_device(hub, "dev-label003", labels={})
    path = "/api/v1/devices/dev-label003"
    first = {"labels": {f"a{n}": "x" for n in range(32)}}
    more = {f"b{n}": "x" for n in range(16)}

    assert (await api.call("PATCH", path, token=admin, body=first)).status == 200
    refused = await api.call("PATCH", path, token=admin, body={"labels": more})
    # The same labels, with as many removed, are taken.
    swapped = {"labels": {**more, **{f"a{n}": None for n in range(16)}}}
    taken = await api.call("PATCH", path, token=admin, body=swapped)

    assert refused.status == 400, refused.body
    assert refused.error["details"]["field"] == "body.labels"
    assert "would carry 48 labels, over the 32 allowed" in refused.error["message"]
    assert taken.status == 200, taken.body
    assert len(taken.body["labels"]) == 32
    assert set(more) <= set(taken.body["labels"])
