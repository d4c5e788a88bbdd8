"""The OpenAPI document is valid and describes exactly the routes the hub serves."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from hub.app import Hub
from tests.api_client import ApiClient


async def test_openapi_document_is_valid_and_matches_the_routes(hub: Hub, api: ApiClient) -> None:
    reply = await api.call("GET", "/api/v1/openapi.json", token=await api.token("viewer"))
    assert reply.status == 200
    document = reply.body

    validate(document)

    described = {
        (method.upper(), path, op["x-outpost-role"])
        for path, operations in document["paths"].items()
        for method, op in operations.items()
    }
    served = {
        (r.method, r.resource.canonical, "?")
        for r in hub.parts.web.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert {(m, p) for m, p, _ in described} == {(m, p) for m, p, _ in served}
    declared = {(r.method, r.path, r.access) for r in hub.parts.web.routes}
    assert described == declared


async def test_every_protected_operation_declares_bearer_and_its_errors(api: ApiClient) -> None:
    reply = await api.call("GET", "/api/v1/openapi.json", token=await api.token("viewer"))
    for path, operations in reply.body["paths"].items():
        for method, op in operations.items():
            if op["x-outpost-role"] == "device":  # a client certificate, no token
                assert op["security"] == [{"device": []}], (method, path)
                assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
                continue
            if op["x-outpost-role"] in ("public", "bootstrap"):
                assert op["security"] == [], (method, path)
                continue
            assert op["security"] == [{"bearer": []}], (method, path)
            assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
            if "requestBody" in op:
                json_body = "application/json" in op["requestBody"]["content"]
                expected = {"400", "413"} if json_body else {"413", "415"}  # bytes as they are
                assert expected <= set(op["responses"]), (method, path)


async def test_the_document_is_openapi_3_1_with_the_schemas_of_the_declarations(
    api: ApiClient,
) -> None:
    reply = await api.call("GET", "/api/v1/openapi.json", token=await api.token("viewer"))
    document = reply.body

    assert document["openapi"] == "3.1.0"
    assert '"nullable"' not in json.dumps(document)  # 3.1 says null with types
    schemas = document["components"]["schemas"]
    priority = schemas["TaskIn"]["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"], priority["default"]) == (0, 9, 5)
    assert priority["description"] == "0 (lowest) to 9 (highest)"
    assert schemas["TaskIn"]["additionalProperties"] is False
    listed = document["paths"]["/api/v1/tasks"]["get"]["responses"]["200"]["content"]
    assert listed["application/json"]["schema"] == {"$ref": "#/components/schemas/Page_TaskOut_"}
    assert schemas["Page_TaskOut_"]["required"] == ["items", "next_cursor"]
    assert document["components"]["securitySchemes"]["device"]["type"] == "mutualTLS"
