"""Write the settings reference, `docs/settings.md`, and the policy's JSON Schema,
`docs/policy.schema.json`, from the declarations themselves.

`python -m scripts.settings_docs` rewrites both; `--check` only says whether they are
current (tests/unit/test_settings_docs.py fails when they are not, so a setting cannot
change without its documentation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from edge.config import AgentConfig
from edge.profile import DeviceProfile
from hub.config import HubConfig
from hub.sinks.config import SinkConfig
from outpost import schema
from outpost.policy import Policy

DOCS = Path(__file__).resolve().parent.parent / "docs"
DOC = DOCS / "settings.md"
POLICY_SCHEMA = DOCS / "policy.schema.json"

# (heading, where the values go, declaration), in the order the reference shows them.
SECTIONS: list[tuple[str, str, type[Any]]] = [
    ("Hub", "`[hub]` in `hub.toml` in the hub's data folder (or `--config FILE`).", HubConfig),
    (
        "Agent",
        "`[agent]` in `agent.toml` in the device's data folder (or `--config FILE`). The "
        "fields a policy may set too (intervals, log level, `bounds`, `sync.rate_bytes_per_s`, "
        "`sync.windows`, `inference.report`, `inference.confidence_below`) are declared once "
        "for both, in `outpost/tunables.py`.",
        AgentConfig,
    ),
    (
        "Policy",
        "Layers written through `PUT /api/v1/policy/layers/{name}` set any subset of these; "
        "a device runs the merge of its layers over its own settings.",
        Policy,
    ),
    (
        "Sinks",
        "`[[hub.sinks]]` tables in `hub.toml`, one per sink, after the `[hub]` keys "
        "(docs/sinks.md).",
        SinkConfig,
    ),
    (
        "Device profiles",
        "`firmware-configs/NAME.toml`, one per device class; enrollment copies the profile "
        "into the device's data folder.",
        DeviceProfile,
    ),
]


def render() -> str:
    """The whole reference, as Markdown."""
    out = [
        "# Settings reference",
        "",
        "Generated from the declarations by `python -m scripts.settings_docs`; do not edit by",
        "hand. Settings files are TOML; unknown keys and bad values are refused with the key",
        "named. Command-line flags override the file.",
    ]
    for heading, where, cls in SECTIONS:
        out += ["", f"## {heading}", "", where, ""]
        out += ["| key | type | default | what it is for |", "|---|---|---|---|"]
        for key, kind, default, help_text in schema.describe(cls):
            out.append(f"| `{key}` | {_cell(kind)} | {_default(default)} | {_cell(help_text)} |")
    return "\n".join(out) + "\n"


def policy_schema() -> str:
    """The JSON Schema a policy layer's document is checked against (every field has a
    default, so any subset of the fields is a valid layer)."""
    document = msgspec.json.schema(Policy)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def outputs() -> dict[Path, str]:
    """Each generated file and what it must hold."""
    return {DOC: render(), POLICY_SCHEMA: policy_schema()}


def _default(value: Any) -> str:
    """A default as it is written in TOML (JSON's spelling is TOML's for these values)."""
    if value is schema.REQUIRED:
        return "(required)"
    text = f"`{json.dumps(value)}`"
    mib = isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0
    return f"{text} ({value >> 20} MiB)" if mib else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check it is current")
    args = parser.parse_args()
    for path, text in outputs().items():
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
        elif not path.exists() or path.read_text(encoding="utf-8") != text:
            sys.exit(f"{path} is out of date: run python -m scripts.settings_docs")


if __name__ == "__main__":
    main()
