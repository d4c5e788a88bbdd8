"""The roles an API token grants, least to most: what a command line can offer without
loading the token machinery (apitokens.py)."""

from __future__ import annotations

from typing import Final, Literal, get_args

Role = Literal["viewer", "operator", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
RANK: Final[dict[str, int]] = {role: rank for rank, role in enumerate(ROLES)}
