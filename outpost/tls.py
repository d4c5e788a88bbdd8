"""TLS contexts and certificate fingerprints shared by agent and hub.

Loading keys and certificates reads files, so callers on the event loop run these
functions in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509


class TlsFileError(ssl.SSLError):
    """A CA, certificate or key file that TLS could not load; the message names the file
    and keeps OpenSSL's reason. An `ssl.SSLError` (so an `OSError`), as what it replaces
    was: callers catch it as they did."""


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Return a TLS 1.2+ client context that trusts only `ca` and presents `cert`."""
    # The CA given here, never with the system's: a context made without one would
    # load them (create_default_context), and trust any public CA's certificate.
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    except ssl.SSLError as exc:
        raise _named(exc, f"the CA certificate {ca} (damaged, or not a PEM certificate)") from exc
    except OSError as exc:  # its own words lack the path ("No such file or directory")
        raise _with_path(exc, ca) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _present(context, cert, key)
    return context


def server_context(
    cert: Path, key: Path, *, client_ca: Path | None = None, client_cert_optional: bool = False
) -> ssl.SSLContext:
    """Return a TLS 1.2+ server context; with `client_ca`, client certificates are required
    (or, `client_cert_optional`, verified when presented: a client without one still
    connects, and the routes that need one refuse it)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _present(context, cert, key)
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except ssl.SSLError as exc:
            raise _named(
                exc, f"the CA certificate {client_ca} (damaged, or not a PEM certificate)"
            ) from exc
        except OSError as exc:
            raise _with_path(exc, client_ca) from exc
        context.verify_mode = ssl.CERT_OPTIONAL if client_cert_optional else ssl.CERT_REQUIRED
    return context


def pinned_context(ca_pem: bytes, source: str) -> ssl.SSLContext:
    """Return a TLS 1.2+ client context that trusts only the CA certificate `ca_pem`;
    a TlsFileError naming `source` ("the CA certificate FILE") when it holds none, or
    more than one."""
    # Imported here, as in `fingerprint`: only enrollment and renewal come here.
    from cryptography import x509

    what = f"{source} (damaged, or not a PEM certificate)"
    if not ca_pem.strip():
        # Given no CA, create_default_context would trust the system's: any public CA.
        raise _named("it is empty", what)
    try:
        context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    # UnicodeDecodeError: PEM is ASCII, so these bytes are something else. SSLError:
    # OpenSSL's "no start line: cadata does not contain a certificate".
    except (UnicodeDecodeError, ssl.SSLError) as exc:
        raise _named(exc, what) from exc
    # The pin (a fingerprint) names one certificate, and `fingerprint` hashes the first
    # alone, while OpenSSL trusts every one it loaded: a second CA appended by someone in
    # between would pass the pin and vouch for his server. Both counts: cryptography's
    # of the PEM, and OpenSSL's of what it actually trusts.
    try:
        certificates = len(x509.load_pem_x509_certificates(ca_pem))
    except ValueError as exc:  # a damaged block beside one OpenSSL took
        raise _named(str(exc), what) from exc
    trusted = context.cert_store_stats()["x509"]
    if certificates != 1 or trusted != 1:
        raise _named(
            f"it holds {max(certificates, trusted)} certificates, and only the one CA "
            "certificate the fleet is pinned to may be trusted",
            source,
        )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _present(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        # OpenSSL's reason does not say which of the two files it is ("PEM lib"): the
        # certificate is read on its own to tell.
        if not _holds_certificate(cert):
            raise _named(
                exc, f"the certificate {cert} (damaged, or not a PEM certificate)"
            ) from exc
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise _named(
                exc, f"the key {key}: it does not belong to the certificate {cert}"
            ) from exc
        raise _named(exc, f"the private key {key} (damaged, or not a PEM key)") from exc
    except OSError as exc:
        unread = cert if not os.access(cert, os.R_OK) else key
        raise _with_path(exc, unread) from exc


def _holds_certificate(path: Path) -> bool:
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(path))
    except OSError:  # ssl.SSLError too
        return False
    return True


def _named(exc: ssl.SSLError | UnicodeDecodeError | str, what: str) -> TlsFileError:
    """`exc` (or a reason of ours) as a TlsFileError that says which file could not be
    loaded."""
    named = TlsFileError(getattr(exc, "errno", None), f"cannot load {what}: {exc}")
    # OpenSSL's reason, for callers that tell errors apart by it; what never reached
    # OpenSSL has none.
    if isinstance(exc, ssl.SSLError):
        named.library, named.reason = exc.library, exc.reason
    else:
        named.library, named.reason = "", ""
    return named


def _with_path(exc: OSError, path: Path) -> OSError:
    """`exc` naming `path`, of its own type (callers may catch FileNotFoundError)."""
    if exc.errno is None:  # none seen: every failure to open a file has its errno
        return OSError(f"{path}: {exc}")
    return type(exc)(exc.errno, exc.strerror, str(path))


def fingerprint(cert_pem: bytes) -> str:
    """Return ``sha256:<hex>`` of a PEM certificate's DER encoding."""
    # Imported here: the running agent never needs certificate parsing in memory.
    from cryptography import x509

    return fingerprint_of(x509.load_pem_x509_certificate(cert_pem))


def fingerprint_of(cert: x509.Certificate) -> str:
    """Return ``sha256:<hex>`` of a loaded certificate's DER encoding."""
    from cryptography.hazmat.primitives import serialization

    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()
