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
    """Parse ``key=value`` strings (command line, query string) into checked labels.

    A key given twice is refused: the selector is an AND of its terms, so `site=north`
    and `site=south` would match nothing, yet kept as a map only the last would count
    (and a roll-out would reach devices nobody asked for)."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{where}: expected KEY=VALUE, got {item!r}")
        if key in labels and labels[key] != value:
            raise ValueError(
                f"{where}: {key!r} is given twice ({labels[key]!r} and {value!r}); a device "
                "has one value per label, so give each key once"
            )
        labels[key] = value
    check(labels, where)
    return labels
