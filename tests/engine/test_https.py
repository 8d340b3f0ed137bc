"""The engine over HTTPS: its own certificate from its CA (made, kept, renewed), or the admin's;
the CLI checking it with no flags, refusing another CA, and plain HTTP to the HTTPS port;
the in-engine websocket proxy over wss with the same certificate; `multiconsole engine` itself."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import websockets
from typer.testing import CliRunner

from multiconsole import pki
from multiconsole.cli import app as cli_app
from multiconsole.client import remember_ca
from multiconsole.engine import https
from multiconsole.engine.app import Settings, make_app
from tests.engine.conftest import ADMIN
from tests.support.servers import ThreadServer, free_port

runner = CliRunner()


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """No CLI settings, CA file or MULTICONSOLE_* of the developer's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("MULTICONSOLE_DATA", str(tmp_path / "cli-data"))
    monkeypatch.setenv("COLUMNS", "200")
    for var in ("MULTICONSOLE_URL", "MULTICONSOLE_USER", "MULTICONSOLE_PASSWORD", "MULTICONSOLE_CA"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "config"


@pytest.fixture
def served(tmp_path, isolated):
    """An engine over HTTPS with its own certificate, and its websocket proxy over wss."""
    proxy_port = free_port()
    port = free_port()
    application = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor=False,
            proxy_port=proxy_port,
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(tmp_path / "pki"),
            allowed_origins=[f"https://127.0.0.1:{port}"],
            https=True,
        )
    )
    tls = application.state.tls
    server = ThreadServer(
        application, port=port, ssl_certfile=str(tls.cert_path), ssl_keyfile=str(tls.key_path)
    ).start()
    yield server, application
    server.stop()


def mc(*args: str):
    return runner.invoke(cli_app, list(args))


def test_own_certificate_names_and_chain(served):
    server, application = served
    tls = application.state.tls
    assert tls.ours and {"127.0.0.1", "localhost"} <= set(tls.names)
    assert server.url.startswith("https://")
    ca_file = application.state.ca.cert_path
    # A client with exactly the engine's CA verifies it, host name included.
    reply = httpx.get(
        f"{server.url}/api/v1/me", auth=ADMIN, verify=ssl.create_default_context(cafile=ca_file)
    )
    assert reply.status_code == 200 and reply.json()["name"] == ADMIN[0]
    # The CA is public at the enrolment route.
    ca = httpx.get(f"{server.url}/api/v1/pki/ca.pem", verify=ssl.create_default_context(cafile=ca_file))
    assert ca.content == application.state.ca.cert_pem


def test_cli_trusts_the_ca_the_engine_wrote_with_no_flags(served, monkeypatch):
    server, application = served
    monkeypatch.setenv("MULTICONSOLE_URL", server.url)
    monkeypatch.setenv("MULTICONSOLE_PASSWORD", ADMIN[1])
    # Nothing trusted yet: a clear refusal, no traceback, naming what to do.
    result = mc("cluster", "list", "--json")
    assert result.exit_code == 2, result.output
    assert "certificate does not verify" in result.stderr and "--ca FILE" in result.stderr
    assert "Traceback" not in result.output and ADMIN[1] not in result.output
    # What `multiconsole engine` and the demo do: the CA in ~/.config/multiconsole/ca.pem.
    remember_ca(application.state.ca.cert_pem)
    result = mc("cluster", "list", "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "[]"


def test_cli_finds_a_local_engines_ca_in_its_data_directory(served, monkeypatch, tmp_path):
    server, application = served
    monkeypatch.setenv("MULTICONSOLE_DATA", str(tmp_path))  # where the engine's pki/ is
    result = mc("cluster", "list", "--json", "--engine", server.url, "--password", ADMIN[1])
    assert result.exit_code == 0, result.output


def test_another_ca_is_refused(served, tmp_path):
    server, application = served
    remember_ca(application.state.ca.cert_pem)  # trusted by default, but --ca says: this one only
    other = pki.CertificateAuthority.create("someone else's CA")
    other_file = tmp_path / "other.pem"
    other_file.write_bytes(other.cert_pem)
    result = mc("vm", "list", "--engine", server.url, "--password", ADMIN[1], "--ca", str(other_file))
    assert result.exit_code == 2
    assert f"cannot reach the engine at {server.url}: its certificate does not verify" in result.stderr
    assert f"the CA in {other_file}" in result.stderr and "Traceback" not in result.output
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url, verify=ssl.create_default_context(cafile=other_file))


def test_plain_http_to_the_https_port_fails_cleanly(served):
    server, application = served
    remember_ca(application.state.ca.cert_pem)
    url = server.url.replace("https://", "http://")
    result = mc("vm", "list", "--engine", url, "--password", ADMIN[1])
    assert result.exit_code == 2, result.output
    assert f"cannot reach the engine at {url}" in result.stderr
    assert f"does it serve HTTPS? try {server.url}" in result.stderr and "Traceback" not in result.output
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/api/v1/me", auth=ADMIN, timeout=5)


def test_proxy_speaks_wss_with_the_engine_certificate(served):
    """The proxy ticket names wss://; a TLS websocket trusting the CA reaches the proxy (which
    refuses this ticket-less request with its 403, so TLS and HTTP worked); plain ws:// fails."""
    server, application = served
    proxy = application.state.proxy
    assert proxy.ssl is not None
    context = ssl.create_default_context(cafile=application.state.ca.cert_path)

    async def attempt(url: str, **kw):
        async with websockets.connect(url, open_timeout=5, **kw):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        asyncio.run(attempt(f"wss://127.0.0.1:{proxy.port}/x", ssl=context, origin=server.url))
    assert refused.value.response.status_code == 403
    with pytest.raises((OSError, websockets.exceptions.WebSocketException)):
        asyncio.run(attempt(f"ws://127.0.0.1:{proxy.port}/x", origin=server.url))


def test_certificate_kept_renewed_and_extended(tmp_path):
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "pki")
    first = https.own_certificate(ca, ["127.0.0.1", "localhost"])
    assert https.own_certificate(ca, ["localhost"]).fingerprint == first.fingerprint  # kept
    # A name it lacks: made again, with it.
    wider = https.own_certificate(ca, ["127.0.0.1", "localhost", "engine.example"])
    assert wider.fingerprint != first.fingerprint and "engine.example" in wider.names
    # Ending within 30 days: renewed at start.
    start = datetime.now(UTC) - timedelta(days=380)
    pem, key = ca.issue(https.SERVER_CN, ["127.0.0.1", "localhost"], not_before=start)
    pki.write_public(wider.cert_path, pem)
    pki.write_private(wider.key_path, key)
    renewed = https.own_certificate(ca, ["127.0.0.1", "localhost"])
    assert renewed.fingerprint != pki.fingerprint(pem)
    assert renewed.not_after - datetime.now(UTC) > timedelta(days=390)
    # Issued by another CA (e.g. the data directory restored with another CA): made again.
    other = pki.CertificateAuthority.create()
    pem, key = other.issue(https.SERVER_CN, ["127.0.0.1", "localhost"])
    pki.write_public(wider.cert_path, pem)
    pki.write_private(wider.key_path, key)
    assert ca.issued(https.own_certificate(ca, ["localhost"]).cert_path.read_bytes())


def test_admin_certificate_is_checked_not_renewed(tmp_path):
    other = pki.CertificateAuthority.create("company CA")
    pem, key = other.issue("engine.example", ["engine.example"])
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key)
    tls = https.admin_certificate(cert_file, key_file)
    assert not tls.ours and tls.names == ["engine.example"]
    _, wrong_key = other.issue("x")
    key_file.write_bytes(wrong_key)
    with pytest.raises(https.HttpsSetupError, match="is not the private key of"):
        https.admin_certificate(cert_file, key_file)
    start = datetime.now(UTC) - timedelta(days=10)
    pem, key = other.issue("old", not_before=start, not_after=start + timedelta(days=1))
    cert_file.write_bytes(pem)
    key_file.write_bytes(key)
    with pytest.raises(https.HttpsSetupError, match="expired on"):
        https.admin_certificate(cert_file, key_file)


def test_engine_command_serves_https_and_the_cli_follows(tmp_path):
    """`multiconsole engine` as an admin runs it: HTTPS on its own certificate, the CA written for
    the CLI, which then works with no flags but the URL."""
    port = free_port()
    env = {
        **os.environ,
        "MULTICONSOLE_DATA": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "MULTICONSOLE_ADMIN_PASSWORD": ADMIN[1],
    }
    env.pop("MULTICONSOLE_CA", None)
    log = (tmp_path / "engine.log").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multiconsole.cli",
            "engine",
            "--listen",
            f"127.0.0.1:{port}",
            "--proxy-port",
            "0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        ca_file = tmp_path / "config" / "multiconsole" / "ca.pem"
        while True:
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "engine.log").read_text()
            if ca_file.exists():
                try:
                    httpx.get(
                        f"https://127.0.0.1:{port}/docs", verify=ssl.create_default_context(cafile=ca_file)
                    )
                    break
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        text = (tmp_path / "engine.log").read_text()
        assert f"serving https://127.0.0.1:{port} with its own certificate" in text
        cli = subprocess.run(
            [sys.executable, "-m", "multiconsole.cli", "vm", "list", "--json"],
            env={**env, "MULTICONSOLE_URL": f"https://127.0.0.1:{port}", "MULTICONSOLE_PASSWORD": ADMIN[1]},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == "[]"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
