"""The roles an API token grants: what a command line can offer without loading the
token machinery (apitokens.py).

viewer, operator and admin form a ladder, each holding what the one below holds. A
courier stands beside it: it may import courier bundles (the person who carries the
stick between a site and the hub) and nothing else; an admin may do that too.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Role = Literal["viewer", "operator", "admin", "courier"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
LADDER: Final[tuple[Role, ...]] = ("viewer", "operator", "admin")
RANK: Final[dict[str, int]] = {role: rank for rank, role in enumerate(LADDER)}


def grants(held: Role, needed: Role) -> bool:
    """Whether a token of role `held` may do what needs `needed`."""
    if held == "courier" or needed == "courier":
        return held == needed or held == "admin"
    return RANK[held] >= RANK[needed]
