"""`outpost-hub broker-config`: the files an external broker needs (hub/broker/brokerconfig.py)."""

from __future__ import annotations

import argparse

from hub.broker import brokerconfig
from hub.cli.datafolder import load_config, open_store
from hub.paths import HubPaths


def broker_config(args: argparse.Namespace) -> int:
    """Write the files an external broker needs into `--out`."""
    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    request = brokerconfig.Request(
        kind=args.kind,
        out=args.out,
        replicas=tuple(dict.fromkeys(args.replica)),
        listen=brokerconfig.Listen.parse(args.listen),
        force=args.force,
    )
    with open_store(paths, config) as store:
        written = brokerconfig.write(paths, config, store, request)
    for path in written:
        print(path)
    print(f"next: read {written[-1]}")
    return 0
