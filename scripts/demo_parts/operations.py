"""What an operator does through the hub's API during the demo: tokens for each role,
the policy layers, the task feed and the model roll-out."""

from __future__ import annotations

from pathlib import Path

from hub.paths import HubPaths
from scripts.demo_parts.hubapi import HubApi
from scripts.demo_parts.plan import BIN, POLICY_LAYERS, TYPO_DOCUMENT
from scripts.demo_parts.processes import run, step
from scripts.demo_parts.rollout import DemoRollout
from scripts.demo_site import Background, TaskFeeder


def create_token(hub_dir: Path, role: str, ttl: str, subject: str) -> str:
    """An API token from `outpost-hub token create`."""
    return run(
        str(BIN / "outpost-hub"),
        *("token", "create", "--data", str(hub_dir), "--role", role),
        *("--ttl", ttl, "--subject", subject),
    ).strip()


def start_operations(
    data: Path, hub_dir: Path, web_port: int, background: Background
) -> tuple[HubApi, TaskFeeder, DemoRollout]:
    """Tokens, the policy layers and the task feed; the roll-out, to start later."""
    ca = HubPaths(hub_dir).ca_cert
    token = create_token(hub_dir, "viewer", "12h", "demo")
    token_file = data / "viewer.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    api = HubApi(f"https://127.0.0.1:{web_port}", ca, token)
    operator = create_token(hub_dir, "operator", "12h", "demo-operator")
    admin = create_token(hub_dir, "admin", "1h", "demo-admin")
    for name, layer in POLICY_LAYERS.items():
        api.put(f"/api/v1/policy/layers/{name}", layer, admin)
    step(
        "policy: a fleet layer (inference confidence threshold 0.7, metrics every 10 s) "
        "and a layer for the cameras group (masks the 'source' field: hashed before "
        "upload); each agent verifies the signed policy and reports the version it runs"
    )
    typo = {"scope": "group", "selector": {"group": "pumps"}, "document": TYPO_DOCUMENT}
    answer = api.refusal("/api/v1/policy/layers/pumps", typo, admin)
    step(
        "a layer with a typo is refused, naming the field and the ones it could be (every "
        "field is declared once, with its bounds: docs/settings.md lists them):\n    " + answer
    )
    rollout = DemoRollout(api, admin, background)
    feeder = TaskFeeder(api.url, ca, operator)
    background.spawn(feeder.run())
    step(
        "an operator program submits 20 tasks every 2 s (POST /api/v1/tasks): 16 "
        "vibration windows for any device with the model, 4 images for the cameras (as the "
        "tensor's bytes, input_b64)"
    )
    step(f"a viewer token for the API is in {token_file}; try:")
    print(
        f'    curl --cacert {ca} -H "Authorization: Bearer '
        f'$(cat {token_file})" {api.url}/api/v1/devices'
    )
    step(
        f"the live dashboard: {api.url}/dashboard (trust {ca} in "
        "the browser, or accept its warning for this local demo); sign in with this "
        f"viewer token (12 h):\n    {token}"
    )
    return api, feeder, rollout
