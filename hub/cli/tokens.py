"""`outpost-hub enroll-token` (a device's one-time bootstrap token) and `outpost-hub token`
(API tokens: create, revoke, list)."""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from hub.access import apitokens
from hub.cli import tables
from hub.cli.datafolder import load_config, open_store
from hub.fleet import bootstrap, keyfiles
from hub.fleet.enrollment import load_token_key
from hub.fleet.labels import parse_selector
from hub.paths import HubPaths
from outpost import durations

MAX_ENROLL_TTL_S = 30 * 86400


def enroll_token(args: argparse.Namespace) -> int:
    """Record a one-time bootstrap token and print it."""
    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    labels = parse_selector(args.label, "--label")
    ttl = args.ttl if args.ttl is not None else config.enroll_token_ttl
    if ttl > MAX_ENROLL_TTL_S:  # the bounds of the enroll_token_ttl setting
        raise ValueError(
            f"--ttl {durations.describe(ttl)}: a bootstrap token lives at most 30 days (a "
            "stolen one enrolls a device until it expires); make a new one when it is needed"
        )
    if ttl < 1:  # it would be expired when minted (its times are whole seconds)
        raise ValueError(f"--ttl {durations.describe(ttl)}: a bootstrap token lives 1 s at least")
    token, claims = bootstrap.mint(
        load_token_key(paths),
        hub_url=config.hub_url,
        ca_fingerprint=keyfiles.ca_fingerprint(paths.ca_cert),
        ttl=ttl,
        labels=labels,
    )
    with open_store(paths, config) as store:
        store.add_enroll_token_sync(
            claims.jti, now=time.time(), expires_at=claims.expires_at, labels=labels
        )
    print(token)
    # Beside the token, not in it (stdout holds the token alone, for scripts).
    print(
        f"bootstrap token {claims.jti}, one use until {tables.when(claims.expires_at)}; "
        f"revoke it with: outpost-hub token revoke --data {args.data} {claims.jti}",
        file=sys.stderr,
    )
    return 0


def create_token(args: argparse.Namespace) -> int:
    """Record an API token's grant and print the token."""
    paths = HubPaths(args.data)
    kind: apitokens.Kind = "api-key" if args.api_key else "session"
    default_ttl = apitokens.API_KEY_TTL_DEFAULT if args.api_key else apitokens.SESSION_TTL_DEFAULT
    token, principal = apitokens.mint(
        load_token_key(paths),
        role=args.role,
        subject=getpass.getuser() if args.subject is None else args.subject,
        ttl=args.ttl if args.ttl is not None else default_ttl,
        kind=kind,
    )
    with open_store(paths) as store:
        store.add_api_token_sync(apitokens.grant_record(principal))
    print(token)
    return 0


def revoke_token(args: argparse.Namespace) -> int:
    """Revoke an API token, or a bootstrap token, by its id."""
    what = "API token"
    with open_store(HubPaths(args.data)) as store:
        outcome = store.revoke_api_token_sync(args.jti, now=time.time())
        if outcome == "unknown":
            what = "bootstrap token"
            outcome = store.revoke_enroll_token_sync(args.jti, now=time.time())
    if outcome != "revoked":
        raise ValueError(f"cannot revoke {args.jti!r}: {outcome}")
    print(f"revoked {what} {args.jti}")
    return 0


def list_tokens(args: argparse.Namespace) -> int:
    """Print the issued API tokens (never the tokens themselves)."""
    with open_store(HubPaths(args.data)) as store:
        records = store.api_tokens_sync()
    print(f"{'JTI':<18} {'SUBJECT':<20} {'ROLE':<9} {'KIND':<8} {'EXPIRES':<20} REVOKED")
    for r in records:
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.expires_at))
        print(
            f"{r.jti:<18} {r.subject:<20} {r.role:<9} {r.kind:<8} {expires:<20} "
            f"{'yes' if r.revoked_at else 'no'}"
        )
    return 0
