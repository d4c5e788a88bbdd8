"""Write the command reference, `docs/cli.md`, from the command-line parsers themselves.

`python -m scripts.cli_docs` rewrites it; `--check` only says whether it is current
(tests/unit/test_cli_docs.py fails when it is not, so a command or flag cannot change
without its reference).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from edge.cli import _parser as agent_parser
from hub.cli.parser import build_parser as hub_parser

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
WIDTH = "100"  # argparse wraps help to $COLUMNS: fixed, so the file is the same everywhere

INTRO = """# Command reference

Generated from the parsers by `python -m scripts.cli_docs`; do not edit by hand. Every
command answers `--help` with the same text.

`outpost-hub` runs and administers a hub. Its first commands (`init`, `run`,
`enroll-token`, `token`, `device revoke`, `db`, `broker-config`, `bundle`,
`agent-releases`) work on the hub's data folder on the hub machine. The rest (`devices`,
`models`, `rollouts`, `tasks`, `policy`, `sinks`, `audit`) talk to a running hub over its
HTTPS API, as any client would:

- where: `--hub https://HOST:PORT` (or `OUTPOST_HUB`), or `--data DIR` on the hub machine;
- trust: `--ca FILE` (or `OUTPOST_CA`; the hub's fleet CA, `pki/ca.crt` in its data folder),
  else the data folder's CA, else the system's;
- who: `--token-file FILE` (or `OUTPOST_TOKEN_FILE`) holding a token from
  `outpost-hub token create`; with `--data` and no token file, a ten-minute admin session
  is minted for `cli:<your user>` and recorded, so the audit log names who acted.

They print tables, or the API's JSON with `--json`; a refusal prints the API's message
and exits 1, as does a hub that cannot be reached; a mistake on the command line (a
malformed `--hub` URL, no hub or token given, a CA or token file that cannot be used)
exits 2. `outpost-agent` runs on a device.
"""


def walk(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[list[str], str]]:
    """Each command's words and help text, depth first in the parser's order."""
    yield path, parser.format_help()
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, [*path, name])


def render() -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        out = [INTRO]
        for parser in (hub_parser(), agent_parser()):
            for path, text in walk(parser, [parser.prog]):
                out += [f"{'#' * min(len(path) + 1, 4)} `{' '.join(path)}`", "", "```text"]
                out += [text.rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check it is current")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            sys.exit(f"{DOC} is out of date: run `python -m scripts.cli_docs`")
        return
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
