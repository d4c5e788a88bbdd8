"""`outpost-hub init --san` and `enroll-token` as an operator meets them: a name the
server certificate cannot carry, or an address devices cannot reach, is refused with a
usage error naming what was wrong, before anything is written."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import jwt
import pytest
from cryptography import x509

from hub.cli import main
from hub.initialise import initialise
from hub.paths import HubPaths


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("", "argument --san: '': empty"),
        ("a b", "argument --san: 'a b': neither an IP address nor a host name"),
        ("http://x", "argument --san: 'http://x' is a URL: give its host name alone, such as 'x'"),
        ("https://hub.example.org:8443", "such as 'hub.example.org'"),
        ("0.0.0.0", "argument --san: '0.0.0.0' is no address a device can connect to"),
        ("ü..example", "argument --san: 'ü..example' is not a valid DNS name"),
    ],
)
def test_a_san_the_certificate_cannot_carry_is_a_usage_error(
    name: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "hub"
    with pytest.raises(SystemExit) as ended:
        main(["init", "--data", str(folder), "--san", "hub.example.org", "--san", name])
    assert ended.value.code == 2
    assert said in capsys.readouterr().err
    assert not folder.exists()  # nothing written


def test_sans_are_put_in_the_certificate_as_devices_look_them_up(tmp_path: Path) -> None:
    folder = tmp_path / "hub"
    argv = ["init", "--data", str(folder)]
    for name in ("hub.example.org", "ü.example", "*.site.example", "10.1.2.3", "2001:db8::1"):
        argv += ["--san", name]

    assert main(argv) == 0

    cert = x509.load_pem_x509_certificate(HubPaths(folder).server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    assert {"hub.example.org", "xn--tda.example", "*.site.example"} <= set(dns)
    addresses = set(names.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("2001:db8::1")} <= addresses


def test_initialise_refuses_a_bad_name_before_writing(tmp_path: Path) -> None:
    paths = HubPaths(tmp_path / "hub")
    with pytest.raises(ValueError, match="is a URL"):
        initialise(paths, server_names=["https://hub.example.org"])
    assert not paths.root.exists()


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ("web_host = '0.0.0.0'\n", "hub.web_host: '0.0.0.0' (every interface)"),
        ("web_host = ''\n", "hub.web_host: empty (every interface)"),
        ("public_url = 'ftp://x'\n", "hub.public_url: expected https://HOST[:PORT]"),
    ],
)
def test_enroll_token_refuses_to_name_an_address_devices_cannot_reach(
    settings: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    paths.config.write_text(f"[hub]\n{settings}", encoding="utf-8")

    assert main(["enroll-token", "--data", str(paths.root)]) == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert "Traceback" not in err


def test_enroll_token_names_the_public_url_of_a_hub_listening_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=["hub.example.org"])
    paths.config.write_text(
        "[hub]\nweb_host = '0.0.0.0'\npublic_url = 'https://hub.example.org:8443'\n",
        encoding="utf-8",
    )

    assert main(["enroll-token", "--data", str(paths.root)]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["url"] == "https://hub.example.org:8443"
