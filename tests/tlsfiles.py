"""A private CA with a server certificate for 127.0.0.1 and a client certificate, as PEM
files in a folder: for the throwaway buses' and receivers' TLS listeners. A second CA
signs nothing here, so a peer that trusts only it must refuse the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hub.fleet import pki


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # trusts neither certificate


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = pki.make_ca("outpost test bus CA")
    _, other_ca = pki.make_ca("outpost test stranger CA")

    def leaf(name: str, server_names: list[str] | None) -> tuple[Path, Path]:
        key = pki.new_ec_key()
        issued = pki.issue(
            ca_key,
            ca_cert,
            common_name=name,
            public_key=key.public_key(),
            days=1,
            server_names=server_names,
        )
        cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        cert_path.write_bytes(issued.pem)
        key_path.write_bytes(pki.key_pem(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    server_cert, server_key = leaf("bus", ["127.0.0.1", "localhost"])
    client_cert, client_key = leaf("outpost-hub", None)
    ca_path, other_path = folder / "ca.crt", folder / "other-ca.crt"
    ca_path.write_bytes(pki.cert_pem(ca_cert))
    other_path.write_bytes(pki.cert_pem(other_ca))
    return TlsFiles(ca_path, server_cert, server_key, client_cert, client_key, other_path)
