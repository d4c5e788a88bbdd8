"""`outpost-hub init`: create a hub data folder with the fleet's keys and certificates."""

from __future__ import annotations

import ipaddress
import logging
import shutil
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.config_endpoints import host_problem
from hub.courier.keys import ensure_bundle_key
from hub.fleet import pki
from hub.paths import HUB_CLIENT_CN, HubPaths
from outpost import files

logger = logging.getLogger(__name__)

DEFAULT_SERVER_NAMES = ["localhost", "127.0.0.1", "::1"]
HUB_CLIENT_DAYS = 825


class AlreadyInitialisedError(RuntimeError):
    """The data folder already holds a fleet CA; init never overwrites keys."""


def server_name(text: str) -> str:
    """`text` as the server certificate names it: an IP address, or a DNS name (a
    non-ASCII one in its IDNA form, as Python's TLS sends it), else `ValueError`.
    Checked before init writes anything: a wrong name is only undone by a new CA."""
    if "://" in text:
        host = urlsplit(text).hostname or "HOST"
        raise ValueError(f"{text!r} is a URL: give its host name alone, such as {host!r}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        if address.is_unspecified:  # where to listen, never where to connect
            raise ValueError(f"{text!r} is no address a device can connect to")
        return str(address)
    # A wildcard covers one label, *.example.org; the rest is a name like any other.
    wildcard, name = ("*.", text[2:]) if text.startswith("*.") else ("", text)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{text!r} is not a valid DNS name") from None
    if problem := host_problem(name):
        raise ValueError(f"{text!r}: {problem}")
    return wildcard + name


def initialise(paths: HubPaths, *, server_names: list[str], fleet_name: str = "Outpost") -> None:
    """Create the CA, server and hub-client certificates, and the signing keys: made
    whole in a folder aside and renamed into place, so an init cut short (Ctrl-C, a full
    disk) leaves no half-made `pki/` that a second init would refuse to touch."""
    server_names = [server_name(n) for n in server_names]  # before anything is written
    if paths.root.exists() and not paths.root.is_dir():
        raise AlreadyInitialisedError(
            f"{paths.root} is a file, not a folder: choose another --data"
        )
    if paths.pki.exists():
        raise AlreadyInitialisedError(
            f"{paths.root} is already initialised (found {paths.pki.name}/); "
            "refusing to overwrite its keys"
        )
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = HubPaths(paths.root / ".init.partial")
    shutil.rmtree(staging.root, ignore_errors=True)  # left by an init cut short
    staging.root.mkdir(mode=0o700)
    _make_pki(staging, server_names, fleet_name)
    files.sync_tree(staging.pki)
    staging.pki.rename(paths.pki)
    files.sync_dir(paths.root)
    shutil.rmtree(staging.root, ignore_errors=True)


def _make_pki(paths: HubPaths, server_names: list[str], fleet_name: str) -> None:
    paths.pki.mkdir(mode=0o700)

    ca_key, ca_cert = pki.make_ca(f"{fleet_name} fleet CA")
    files.write_new(paths.ca_key, pki.key_pem(ca_key))
    files.write_new(paths.ca_cert, pki.cert_pem(ca_cert), files.PUBLIC)

    names = list(dict.fromkeys(DEFAULT_SERVER_NAMES + server_names))
    server_key = pki.new_ec_key()
    server = pki.issue(
        ca_key,
        ca_cert,
        common_name=names[0],
        public_key=server_key.public_key(),
        days=pki.SERVER_DAYS,
        server_names=names,
    )
    files.write_new(paths.server_key, pki.key_pem(server_key))
    files.write_new(paths.server_cert, server.pem, files.PUBLIC)

    client_key = pki.new_ec_key()
    client = pki.issue(
        ca_key,
        ca_cert,
        common_name=HUB_CLIENT_CN,
        public_key=client_key.public_key(),
        days=HUB_CLIENT_DAYS,
    )
    files.write_new(paths.client_key, pki.key_pem(client_key))
    files.write_new(paths.client_cert, client.pem, files.PUBLIC)

    for key_path, pub_path in ((paths.signing_key, paths.signing_pub), (paths.token_key, None)):
        key = ed25519.Ed25519PrivateKey.generate()
        files.write_new(key_path, pki.key_pem(key))
        if pub_path is not None:
            pub = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            files.write_new(pub_path, pub, files.PUBLIC)
    ensure_bundle_key(paths, announce=False)
    logger.debug("initialised hub data in %s (server names: %s)", paths.root, ", ".join(names))
