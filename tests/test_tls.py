"""HTTPS served by the edge itself: a CA made at test time, curl and Chromium trusting only it,
HTTP and HTTPS side by side, and a new certificate on SIGHUP while a download goes on."""
from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import http.client
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.config import Settings
from tests.conftest import REPO_ROOT, SAMPLE_SIZE, RunningServer, pattern
from tests.edge_process import EdgeProcess, free_port
from tests.test_ops_browser import CHROMIUM, DRIVER, chromium, play_and_seek
from tests.test_ranges import parse_multipart

BODY = pattern(SAMPLE_SIZE)


@dataclass
class Authority:
    """A certificate authority made for one test, which signs server certificates for 127.0.0.1."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, directory: Path) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgecache test CA")])
        cert = (_builder(name, name, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, key, cert)

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.pem")

    def issue(self, name: str) -> tuple[Path, Path, int]:
        """A server certificate (with the CA's after it: a chain) and its key, as PEM files; its serial."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (_builder(subject, self.cert.subject, key.public_key())
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                              + self.cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_file, key_file, cert.serial_number


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)))


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.make(tmp_path)


@pytest.fixture
def https_edge(settings: Settings, authority: Authority) -> RunningServer:  # type: ignore[misc]
    cert, key, _ = authority.issue("edge")
    with RunningServer(dataclasses.replace(settings, tls_cert=str(cert), tls_key=str(key)), tls=True) as running:
        yield running


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, timeout=30, check=True)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (.ci/run installs it)")
def test_curl_gets_exact_bytes_over_https(https_edge: RunningServer, authority: Authority) -> None:
    url = https_edge.url + "/video/clip.mp4"
    assert curl("--cacert", authority.ca_file, url).stdout == BODY
    assert curl("--cacert", authority.ca_file, "-r", "1000-1999", url).stdout == BODY[1000:2000]
    multipart = curl("--cacert", authority.ca_file, "-r", "0-9,3000000-3000099", "-D", "-", url).stdout
    head, _, body = multipart.partition(b"\r\n\r\n")
    boundary = head.split(b"boundary=")[1].split(b"\r\n")[0].decode()
    assert [data for _, data in parse_multipart(body, boundary)] == [BODY[:10], BODY[3000000:3000100]]
    with pytest.raises(subprocess.CalledProcessError):  # a client that does not know the CA refuses the edge
        curl(url)
    tls12 = curl("--cacert", authority.ca_file, "--tls-max", "1.2", "-r", "0-99", url).stdout
    assert tls12 == BODY[:100]
    with pytest.raises(subprocess.CalledProcessError):  # TLS 1.1 and older are not spoken
        curl("--cacert", authority.ca_file, "--tlsv1.0", "--tls-max", "1.1", url)


def test_https_answers_name_the_scheme(https_edge: RunningServer, authority: Authority) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=authority.ca_file)) as c:
        answer = c.put(https_edge.url + "/films/new.mp4", content=b"x")
    assert answer.status_code == 201
    assert answer.json()["url"] == f"https://127.0.0.1:{https_edge.port}/films/new.mp4"


def _peer_serial(port: int, ca_file: str) -> int:
    context = ssl.create_default_context(cafile=ca_file)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_http_and_https_side_by_side_and_a_new_certificate_on_sighup(tmp_path: Path, authority: Authority) -> None:
    origin = tmp_path / "assets"
    origin.mkdir()
    movie = pattern(48 * 1024 * 1024, 9)
    (origin / "movie.mp4").write_bytes(movie)
    cert, key, first = authority.issue("edge")
    tls_port = free_port()
    env = {"EDGECACHE_TLS_CERT": str(cert), "EDGECACHE_TLS_KEY": str(key), "EDGECACHE_TLS_PORT": str(tls_port)}
    with EdgeProcess(tmp_path, "--origin", str(origin), "--cache-dir", str(tmp_path / "cache"), env=env) as edge:
        assert httpx.get(edge.url + "/movie.mp4").content == movie  # plain HTTP on port
        assert _peer_serial(tls_port, authority.ca_file) == first
        # A download over HTTPS, read slowly, is under way when the certificate changes.
        context = ssl.create_default_context(cafile=authority.ca_file)
        connection = http.client.HTTPSConnection("127.0.0.1", tls_port, context=context)
        connection.request("GET", "/movie.mp4")
        response = connection.getresponse()
        received = [response.read(1024 * 1024)]
        new_cert, new_key, second = authority.issue("edge-renewed")
        shutil.copyfile(new_cert, cert)
        shutil.copyfile(new_key, key)
        edge.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _peer_serial(tls_port, authority.ca_file) != second:
            assert time.monotonic() < deadline, "the new certificate was not served"
            time.sleep(0.1)
        received.append(response.read())
        connection.close()
        assert b"".join(received) == movie  # the download begun before completed, on its old handshake
        # A bad pair (a new certificate with the old key) is refused, and the served one stays.
        shutil.copyfile(authority.issue("edge-bad")[0], cert)
        edge.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "the TLS certificate was not replaced" not in edge.output():
            assert time.monotonic() < deadline, edge.output()
            time.sleep(0.1)
        assert _peer_serial(tls_port, authority.ca_file) == second
        assert edge.stop() == 0
    assert "SIGHUP: TLS certificate loaded again from" in edge.output()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver")
def test_chromium_plays_and_seeks_a_video_over_https(settings: Settings, authority: Authority,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from selenium.webdriver.common.by import By

    cert, key, _ = authority.issue("edge")
    video = (REPO_ROOT / "assets" / "video" / "sample.mp4").read_bytes()
    (Path(settings.origin) / "video" / "sample.mp4").write_bytes(video)
    (Path(settings.origin) / "watch.html").write_text('<video id="player" src="/video/sample.mp4" muted></video>')
    # Chromium trusts exactly this certificate's key, as it would a certificate from a public CA.
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    logged = dataclasses.replace(settings, tls_cert=str(cert), tls_key=str(key), access_log=True,
                                 access_log_format="json")
    with RunningServer(logged, tls=True) as edge, chromium(f"--ignore-certificate-errors-spki-list={pin}") as browser:
        browser.get(edge.url + "/watch.html")
        assert browser.execute_script("return location.protocol") == "https:"
        play_and_seek(browser, browser.find_element(By.ID, "player"))
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    video_gets = [r for r in records if r["path"] == "/video/sample.mp4" and r["method"] == "GET"]
    assert video_gets and all(r["range"] and r["status"] in (200, 206) for r in video_gets), video_gets
