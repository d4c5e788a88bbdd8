"""A CA, certificate or key file TLS cannot load is named, with OpenSSL's reason kept (not
a bare "[SSL] PEM lib"), as an `ssl.SSLError` still: the agent's and hub's callers catch
`OSError` and `ssl.SSLError` as before. Real PEM files from a throwaway CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from outpost import tls
from tests.tlsfiles import TlsFiles, make_tls_files


@pytest.fixture
def files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


def _damaged(tmp_path: Path, name: str = "damaged.pem") -> Path:
    path = tmp_path / name
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    return path


def test_a_damaged_ca_is_named(files: TlsFiles, tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate\n")

    with pytest.raises(ssl.SSLError) as client:
        tls.client_context(bad, files.client_cert, files.client_key)
    with pytest.raises(ssl.SSLError) as server:
        tls.server_context(files.server_cert, files.server_key, client_ca=bad)

    # The same calls with whole files: a context that trusts that CA alone, not the
    # system's beside it.
    client_ok = tls.client_context(files.ca, files.client_cert, files.client_key)
    server_ok = tls.server_context(files.server_cert, files.server_key, client_ca=files.ca)
    assert [c["subject"] for c in client_ok.get_ca_certs()] == [
        ((("commonName", "outpost test bus CA"),),)
    ]
    assert server_ok.verify_mode == ssl.CERT_REQUIRED
    for raised in (client.value, server.value):
        assert isinstance(raised, tls.TlsFileError)
        assert str(raised).startswith(f"cannot load the CA certificate {bad} (damaged")
        assert "NO_CERTIFICATE_OR_CRL_FOUND" in str(raised)  # OpenSSL's reason, kept
        assert raised.reason == "NO_CERTIFICATE_OR_CRL_FOUND"


def test_a_damaged_key_is_named_not_pem_lib_alone(files: TlsFiles, tmp_path: Path) -> None:
    bad = _damaged(tmp_path, "device.key")

    with pytest.raises(OSError, match=r"PEM lib") as raised:
        tls.client_context(files.ca, files.client_cert, bad)

    assert isinstance(raised.value, ssl.SSLError)
    assert str(raised.value).startswith(f"cannot load the private key {bad} (damaged")


def test_a_damaged_certificate_is_named_not_its_key(files: TlsFiles, tmp_path: Path) -> None:
    bad = _damaged(tmp_path, "device.crt")

    with pytest.raises(ssl.SSLError) as client:
        tls.client_context(files.ca, bad, files.client_key)
    with pytest.raises(ssl.SSLError) as server:
        tls.server_context(bad, files.server_key)

    assert str(client.value).startswith(f"cannot load the certificate {bad} (damaged")
    assert str(server.value).startswith(f"cannot load the certificate {bad} (damaged")


def test_a_key_of_another_certificate_is_named_with_both(files: TlsFiles) -> None:
    with pytest.raises(ssl.SSLError) as raised:
        tls.client_context(files.ca, files.client_cert, files.server_key)

    assert str(raised.value).startswith(
        f"cannot load the key {files.server_key}: it does not belong to the certificate "
        f"{files.client_cert}"
    )
    assert raised.value.reason == "KEY_VALUES_MISMATCH"


@pytest.mark.parametrize("missing", ["ca", "cert", "key"])
def test_a_missing_file_is_named_and_stays_a_file_not_found(
    files: TlsFiles, tmp_path: Path, missing: str
) -> None:
    gone = tmp_path / "gone.pem"
    given = {"ca": files.ca, "cert": files.client_cert, "key": files.client_key, missing: gone}

    with pytest.raises(FileNotFoundError) as raised:
        tls.client_context(given["ca"], given["cert"], given["key"])

    assert raised.value.filename == str(gone)
    assert str(gone) in str(raised.value)


@pytest.mark.parametrize("pem", [b"garbage", b"\xff\xfe not text", b"", b"\n"])
def test_a_pinned_ca_that_is_none_is_named_by_its_source(pem: bytes) -> None:
    # Empty, it would have trusted the system's CAs instead (create_default_context).
    with pytest.raises(tls.TlsFileError) as raised:
        tls.pinned_context(pem, "the CA certificate /data/identity/ca.crt")

    assert isinstance(raised.value, ssl.SSLError)
    assert str(raised.value).startswith(
        "cannot load the CA certificate /data/identity/ca.crt (damaged, or not a PEM certificate)"
    )


def test_a_pinned_ca_trusts_only_it(files: TlsFiles) -> None:
    context = tls.pinned_context(files.ca.read_bytes(), "the CA certificate")

    assert len(context.get_ca_certs()) == 1
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_a_pinned_ca_with_another_beside_it_is_refused(files: TlsFiles) -> None:
    # The pin (a fingerprint) is of the first certificate alone; the second, trusted
    # too, would vouch for a server of whoever appended it. Renewal reads the CA from
    # identity/ca.crt through here as well.
    both = files.ca.read_bytes() + files.other_ca.read_bytes()

    with pytest.raises(tls.TlsFileError) as raised:
        tls.pinned_context(both, "the CA certificate /data/identity/ca.crt")

    assert str(raised.value) == (
        "cannot load the CA certificate /data/identity/ca.crt: it holds 2 certificates, "
        "and only the one CA certificate the fleet is pinned to may be trusted"
    )
