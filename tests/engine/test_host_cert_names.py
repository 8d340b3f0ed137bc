"""A host's certificates carry the names the engine chooses, never those its request asks for:
a host that asks for the engine's own names (127.0.0.1, localhost) at enrolment, at renewal or
for SPICE gets a certificate that no TLS client accepts for them (issue 11, finding 1).

Each certificate is really served by a TLS server and checked by Python's ssl and by curl,
with the engine's CA, as the CLI, the SDK and browsers would."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from multiconsole import pki
from multiconsole.agent.enroll import enroll
from tests.engine.conftest import ok
from tests.engine.test_tls import Engine, TlsHost

EVIL_CN, EVIL_NAMES = "evil", ["127.0.0.1", "localhost"]


def evil_csr() -> tuple[bytes, bytes]:
    return pki.make_csr(EVIL_CN, EVIL_NAMES)


def serve_once(cert: Path, key: Path) -> int:
    """A TLS server on 127.0.0.1 presenting `cert`, for one handshake: its port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run():
        with listener:
            listener.settimeout(20)
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        request = b""
                        while b"\r\n\r\n" not in request:
                            chunk = tls.recv(4096)
                            if not chunk:
                                return
                            request += chunk
                        tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                except (ssl.SSLError, OSError):
                    pass  # the client refused the certificate

    threading.Thread(target=run, daemon=True).start()
    return port


def python_accepts(cert: Path, key: Path, ca: Path, name: str) -> bool:
    port = serve_once(cert, key)
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return tls.recv(100).startswith(b"HTTP/1.0 200")
        except ssl.SSLCertVerificationError:
            return False


def curl_accepts(cert: Path, key: Path, ca: Path, name: str) -> bool:
    port = serve_once(cert, key)
    run = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "--cacert",
            str(ca),
            "--resolve",
            f"{name}:{port}:127.0.0.1",
        ]
        + [f"https://{name}:{port}/"],
        capture_output=True,
        text=True,
    )
    if run.returncode not in (0, 60):  # 60: the peer's certificate did not verify
        raise AssertionError(f"curl failed otherwise: {run.returncode} {run.stderr}")
    return run.returncode == 0


def accepted_as(tmp: Path, ca: pki.CertificateAuthority, cert_pem: bytes, key_pem: bytes) -> list[str]:
    """The engine's names (127.0.0.1, localhost) under which a client trusting `ca` accepts a
    server presenting `cert_pem`, by Python's ssl and by curl."""
    d = tmp / uuid.uuid4().hex[:8]
    d.mkdir()
    pki.write_public(d / "cert.pem", cert_pem)
    pki.write_private(d / "key.pem", key_pem)
    pki.write_public(d / "ca.pem", ca.cert_pem)
    found = []
    for name in EVIL_NAMES:
        if python_accepts(d / "cert.pem", d / "key.pem", d / "ca.pem", name):
            found.append(f"python:{name}")
        if shutil.which("curl") and curl_accepts(d / "cert.pem", d / "key.pem", d / "ca.pem", name):
            found.append(f"curl:{name}")
    return found


def assert_host_certificate(pem: bytes | str, host: str) -> None:
    cert = pki.load_cert(pem)
    assert pki.subject_string(cert.subject) == f"O=multiconsole,CN={host}"
    assert pki.san_strings(cert) == [f"{host}.host.multiconsole.invalid"]
    assert EVIL_CN not in str(cert.subject)


@pytest.fixture
def engine(tmp_path):
    e = Engine(tmp_path)
    ok(e.api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    yield e
    e.stop()


def test_the_check_itself_accepts_a_certificate_with_the_engine_names(tmp_path):
    """The control: a certificate of the CA that does carry 127.0.0.1 and localhost is accepted,
    so the refusals below are about the names, not the set-up."""
    ca = pki.CertificateAuthority.create()
    cert, key = ca.issue("x", EVIL_NAMES)
    expected = ["python:127.0.0.1", "python:localhost"]
    if shutil.which("curl"):
        expected = ["python:127.0.0.1", "curl:127.0.0.1", "python:localhost", "curl:localhost"]
    assert accepted_as(tmp_path, ca, cert, key) == expected


def test_enrolment_ignores_the_names_the_requests_ask_for(tmp_path, engine):
    t = engine.token("node1")
    csr, key = evil_csr()
    spice_csr, spice_key = evil_csr()
    reply = ok(
        httpx.post(
            f"{engine.url}/api/v1/hosts/enroll",
            json={"token": t["token"], "csr": csr.decode(), "spice_csr": spice_csr.decode()},
        )
    )
    assert_host_certificate(reply["certificate"], "node1")
    assert_host_certificate(reply["spice_certificate"], "node1")
    assert reply["spice_subject"] == "O=multiconsole,CN=node1"
    assert accepted_as(tmp_path, engine.ca, reply["certificate"].encode(), key) == []
    assert accepted_as(tmp_path, engine.ca, reply["spice_certificate"].encode(), spice_key) == []


def test_a_host_named_like_the_engine_gets_no_certificate_for_that_name(tmp_path, engine):
    """Its CN is the name, but with a DNS name present no client falls back to the CN."""
    t = engine.token("localhost")
    csr, key = evil_csr()
    reply = ok(
        httpx.post(f"{engine.url}/api/v1/hosts/enroll", json={"token": t["token"], "csr": csr.decode()})
    )
    assert_host_certificate(reply["certificate"], "localhost")
    assert accepted_as(tmp_path, engine.ca, reply["certificate"].encode(), key) == []


def test_renewal_ignores_the_names_a_compromised_agent_asks_for(tmp_path, engine, monkeypatch):
    t = engine.token("node1")
    pki_dir, spice_dir = tmp_path / "host-pki", tmp_path / "spice"
    enroll(
        engine.url,
        t["token"],
        pki_dir,
        ["127.0.0.1"],
        ca_fingerprint=t["ca_fingerprint"],
        spice_dir=spice_dir,
    )
    host = TlsHost(tmp_path, pki_dir)
    try:
        host.manager.certs.pki_dir, host.manager.certs.spice_dir = pki_dir, spice_dir
        ok(engine.add_host("node1", host.port), 201)
        # The agent now asks for the engine's names in both requests.
        real = pki.make_csr
        monkeypatch.setattr(pki, "make_csr", lambda _cn, _sans=(): real(EVIL_CN, EVIL_NAMES))
        ok(engine.api.post("/api/v1/hosts/node1/certificate"))
        for cert, key in (
            (pki_dir / "agent-cert.pem", pki_dir / "agent-key.pem"),
            (spice_dir / "server-cert.pem", spice_dir / "server-key.pem"),
        ):
            pem = cert.read_bytes()
            assert engine.ca.issued(pem)
            assert_host_certificate(pem, "node1")
            assert accepted_as(tmp_path, engine.ca, pem, key.read_bytes()) == []
    finally:
        host.stop()
