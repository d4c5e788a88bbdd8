"""Device labels (site, group, line, ...): the rules for keys and values, in one place."""

from __future__ import annotations

import re
from collections.abc import Mapping

KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
MAX_VALUE = 128
MAX_LABELS = 32


def check(labels: Mapping[str, str | None], where: str) -> None:
    """Raise ValueError naming `where.key` for a bad key or value."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{where}: at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not KEY.fullmatch(key):
            raise ValueError(
                f"{where}.{key}: a label key is 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if value is not None and (len(value) > MAX_VALUE or not value.isprintable()):
            raise ValueError(
                f"{where}.{key}: a label value is up to {MAX_VALUE} printable characters"
            )


def parse_selector(items: list[str], where: str) -> dict[str, str]:
    """Parse ``key=value`` strings (command line, query string) into checked labels."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{where}: expected KEY=VALUE, got {item!r}")
        labels[key] = value
    check(labels, where)
    return labels
