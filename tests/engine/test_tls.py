"""Engine <-> agent over TLS with client certificates, and host enrolment, on libvirt's test driver.

The agent app is served by uvicorn in a thread with the same TLS settings as
`multiconsole agent --pki-dir` (agent.server.tls_options); the engine is served the same
way over HTTP, so that `agent enroll` reaches it as it would a real one.
"""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from multiconsole import pki
from multiconsole.agent.enroll import EnrollError, enroll
from multiconsole.agent.server import TlsSetupError, tls_options
from multiconsole.agent.server import make_app as agent_app
from multiconsole.agent.vms import VmManager
from multiconsole.engine.app import Settings, make_app
from multiconsole.engine.broker import AgentClient, CertificateMismatch
from tests.conftest import TEST_DRIVER_XML
from tests.engine.conftest import ADMIN, error, ok
from tests.support.servers import ThreadServer, free_port

VM = {"name": "tls1", "cluster": "prod", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}
MISMATCH = "presented a certificate that is not the one it enrolled with"


def write_identity(directory: Path, ca: pki.CertificateAuthority, cert: bytes, key: bytes) -> Path:
    """A PKI directory as `agent enroll` leaves it."""
    directory.mkdir(parents=True, exist_ok=True)
    pki.write_public(directory / "agent-cert.pem", cert)
    pki.write_private(directory / "agent-key.pem", key)
    pki.write_public(directory / "ca-cert.pem", ca.cert_pem)
    return directory


class TlsHost:
    """An agent app on its own test-driver host, served over TLS in a thread from a PKI directory."""

    def __init__(self, tmp_path: Path, pki_dir: Path, port: int | None = None):
        node = tmp_path / f"host-{uuid.uuid4().hex[:8]}.xml"
        node.write_text(TEST_DRIVER_XML)
        self.manager = VmManager(f"test://{node}")
        self.port = port or free_port()
        self.server = None
        self.requests: list[str] = []  # the paths of the HTTP requests that reached the app
        inner = agent_app(self.manager)

        async def app(scope, receive, send):
            if scope["type"] == "http":
                self.requests.append(scope["path"])
            await inner(scope, receive, send)

        self.app = app
        self.serve(pki_dir)

    def serve(self, pki_dir: Path) -> TlsHost:
        """(Re)start serving, with the certificates in `pki_dir`."""
        if self.server is not None:
            self.server.stop()
        self.server = ThreadServer(self.app, port=self.port, **tls_options(pki_dir)).start()
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.manager.conn.close()


def client_context(ca: pki.CertificateAuthority | None, tmp: Path, cert: bytes | None = None, key=None):
    """A TLS client context trusting `ca` (the agent's), presenting `cert` if given."""
    context = ssl.create_default_context(cadata=ca.cert_pem.decode() if ca else None)
    context.check_hostname = False
    if cert is not None:
        name = uuid.uuid4().hex
        pki.write_public(tmp / f"{name}.pem", cert)
        pki.write_private(tmp / f"{name}.key", key)
        context.load_cert_chain(tmp / f"{name}.pem", tmp / f"{name}.key")
    return context


def attempt(port: int, context: ssl.SSLContext) -> str:
    """GET /health over TLS with `context`: the status line, or the TLS error that ended it.
    (With TLS 1.3 the server's refusal of a client certificate arrives after the client's
    handshake is done: on the first read.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
                data = tls.recv(4096)
                return data.split(b"\r\n", 1)[0].decode() if data else "closed"
        except (ssl.SSLError, ConnectionError) as err:
            return f"refused: {err}"


def refused(result: str) -> bool:
    """The agent answered nothing: it ended the handshake (with an alert, or by closing;
    asyncio's TLS does not always send the alert)."""
    return result == "closed" or result.startswith("refused")


# --- the agent refuses clients ----------------------------------------------------------------


@pytest.fixture
def agent_ca(tmp_path):
    return pki.CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def tls_host(tmp_path, agent_ca):
    cert, key = agent_ca.issue("node1", ["127.0.0.1"], usage="server")
    host = TlsHost(tmp_path, write_identity(tmp_path / "agent-pki", agent_ca, cert, key))
    yield host
    host.stop()


def test_agent_accepts_the_engines_certificate(tmp_path, agent_ca, tls_host):
    cert, key = agent_ca.issue(pki.ENGINE_CN, usage="client")
    assert attempt(tls_host.port, client_context(agent_ca, tmp_path, cert, key)) == "HTTP/1.1 200 OK"
    with httpx.Client(verify=client_context(agent_ca, tmp_path, cert, key)) as http:
        assert http.get(f"{tls_host.url}/health").json() == {"status": "ok"}


def test_agent_refuses_a_client_without_certificate(tmp_path, agent_ca, tls_host):
    result = attempt(tls_host.port, client_context(agent_ca, tmp_path))
    assert refused(result), result
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{tls_host.url}/health", verify=client_context(agent_ca, tmp_path))


def test_agent_refuses_a_certificate_from_another_ca(tmp_path, agent_ca, tls_host):
    other = pki.CertificateAuthority.create(name="someone else's CA")
    cert, key = other.issue(pki.ENGINE_CN, usage="client")
    result = attempt(tls_host.port, client_context(agent_ca, tmp_path, cert, key))
    assert refused(result), result
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{tls_host.url}/health", verify=client_context(agent_ca, tmp_path, cert, key))


def test_agent_refuses_an_expired_certificate(tmp_path, agent_ca, tls_host):
    ended = datetime.now(UTC) - timedelta(days=1)
    cert, key = agent_ca.issue(
        pki.ENGINE_CN, usage="client", not_before=ended - timedelta(days=30), not_after=ended
    )
    result = attempt(tls_host.port, client_context(agent_ca, tmp_path, cert, key))
    assert refused(result), result


def test_agent_refuses_a_certificate_not_yet_valid(tmp_path, agent_ca, tls_host):
    start = datetime.now(UTC) + timedelta(days=1)
    cert, key = agent_ca.issue(pki.ENGINE_CN, usage="client", not_before=start, days=30)
    result = attempt(tls_host.port, client_context(agent_ca, tmp_path, cert, key))
    assert refused(result), result


def test_agent_refuses_another_hosts_certificate_as_a_client(tmp_path, agent_ca, tls_host):
    """Hosts' certificates are for serving only: a host cannot drive another host."""
    cert, key = agent_ca.issue("node2", ["127.0.0.2"], usage="server")
    result = attempt(tls_host.port, client_context(agent_ca, tmp_path, cert, key))
    assert refused(result), result


def test_agent_refuses_plain_http(tls_host):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_host.port}/health", timeout=5)


def test_agent_will_not_start_on_missing_mismatched_or_expired_files(tmp_path, agent_ca):
    with pytest.raises(TlsSetupError, match="missing"):
        tls_options(tmp_path / "nothing")
    ended = datetime.now(UTC) - timedelta(days=1)
    cert, key = agent_ca.issue("node1", not_before=ended - timedelta(days=30), not_after=ended)
    with pytest.raises(TlsSetupError, match="expired"):
        tls_options(write_identity(tmp_path / "old", agent_ca, cert, key))
    cert, _ = agent_ca.issue("node1")
    _, other_key = agent_ca.issue("node1")
    with pytest.raises(TlsSetupError, match="not the key"):
        tls_options(write_identity(tmp_path / "mixed", agent_ca, cert, other_key))
    cert, key = pki.CertificateAuthority.create().issue("node1")
    with pytest.raises(TlsSetupError, match="not signed"):
        tls_options(write_identity(tmp_path / "foreign", agent_ca, cert, key))


def test_engine_client_refuses_an_agent_from_another_ca(tmp_path, agent_ca):
    other = pki.CertificateAuthority.create()
    cert, key = other.issue("node1", ["127.0.0.1"])
    host = TlsHost(tmp_path, write_identity(tmp_path / "p", other, cert, key))
    try:
        engine_cert, engine_key = agent_ca.issue(pki.ENGINE_CN, usage="client")
        context = client_context(agent_ca, tmp_path, engine_cert, engine_key)
        with AgentClient(host.url, ssl_context=context) as client, pytest.raises(httpx.ConnectError):
            client.call("Host.getCapabilities")
    finally:
        host.stop()


def test_pinned_client_checks_before_sending(tmp_path, agent_ca, tls_host):
    engine_cert, engine_key = agent_ca.issue(pki.ENGINE_CN, usage="client")
    context = client_context(agent_ca, tmp_path, engine_cert, engine_key)
    served = pki.fingerprint((tmp_path / "agent-pki" / "agent-cert.pem").read_bytes())
    with AgentClient(tls_host.url, ssl_context=context, pin=served, name="node1") as client:
        assert client.call("Host.getCapabilities")["clusterLevels"]
    assert tls_host.requests == ["/jsonrpc"]
    wrong = pki.fingerprint(agent_ca.issue("node1")[0])
    with AgentClient(tls_host.url, ssl_context=context, pin=wrong, name="node1") as client:
        for _ in range(2):
            with pytest.raises(CertificateMismatch, match=f"host node1 {MISMATCH}"):
                client.call("VM.setTicket", vmID="x", password="secret", ttl=10)
    time.sleep(0.2)
    assert tls_host.requests == ["/jsonrpc"]  # the request (and its password) never left


# --- the engine: enrolment, host add over TLS, refusing the wrong agent ------------------------


class Engine:
    """The engine app served over HTTP in a thread, its PKI in a temporary directory."""

    def __init__(self, tmp_path: Path, db_url: str | None = None, **settings):
        settings.setdefault("monitor", False)
        self.pki_dir = tmp_path / "engine-pki"
        self.app = make_app(
            Settings(
                db_url=db_url or f"sqlite:///{tmp_path / 'engine.db'}",
                admin_password=ADMIN[1],
                proxy_port=None,
                proxy_key_file=str(tmp_path / "proxy.key"),
                pki_dir=str(self.pki_dir),
                **settings,
            )
        )
        self.server = ThreadServer(self.app).start()
        self.url = self.server.url
        self.api = httpx.Client(base_url=self.url, auth=ADMIN, timeout=30)
        self.ca = pki.CertificateAuthority.load(self.pki_dir)

    def token(self, host: str, **extra) -> dict:
        return ok(self.api.post("/api/v1/hosts/enrollment-tokens", json={"host": host, **extra}), 201)

    def add_host(self, name: str, port: int, **extra) -> httpx.Response:
        body = {"name": name, "address": "127.0.0.1", "port": port, "cluster": "prod", **extra}
        return self.api.post("/api/v1/hosts", json=body)

    def stop(self) -> None:
        self.api.close()
        self.server.stop()
        self.app.state.db_engine.dispose()


@pytest.fixture
def engine(tmp_path):
    e = Engine(tmp_path)
    ok(e.api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    yield e
    e.stop()


@pytest.fixture
def any_db_engine(tmp_path, db_url):
    """The engine on SQLite and on PostgreSQL."""
    e = Engine(tmp_path, db_url)
    ok(e.api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    yield e
    e.stop()


def enrolled_host(tmp_path: Path, engine: Engine, name: str = "node1") -> tuple[TlsHost, Path]:
    t = engine.token(name)
    pki_dir = tmp_path / f"pki-{name}"
    enroll(engine.url, t["token"], pki_dir, ["127.0.0.1"], ca_fingerprint=t["ca_fingerprint"])
    return TlsHost(tmp_path, pki_dir), pki_dir


def test_engine_makes_its_ca_and_client_certificate_on_first_start(tmp_path, engine):
    d = engine.pki_dir
    for name, mode in (("ca-key.pem", 0o600), ("engine-key.pem", 0o600), ("ca-cert.pem", 0o644)):
        assert (d / name).stat().st_mode & 0o777 == mode, name
    assert engine.ca.issued((d / "engine-cert.pem").read_bytes())
    # The CA is public, for hosts to check against the fingerprint they were given.
    reply = httpx.get(f"{engine.url}/api/v1/pki/ca.pem")
    assert reply.status_code == 200 and pki.fingerprint(reply.content) == engine.ca.fingerprint
    # A second start keeps it.
    (tmp_path / "again").mkdir()
    again = Engine(tmp_path / "again")
    try:
        assert again.ca.fingerprint != engine.ca.fingerprint  # another data directory, another CA
    finally:
        again.stop()
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'engine.db'}",
            admin_password=ADMIN[1],
            monitor=False,
            proxy_port=None,
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(d),
        )
    )
    assert app.state.ca.fingerprint == engine.ca.fingerprint
    app.state.db_engine.dispose()


def test_enrol_add_and_run_a_vm_over_tls(tmp_path, any_db_engine):
    engine = any_db_engine
    t = engine.token("node1")
    assert t["host"] == "node1" and t["ca_fingerprint"] == engine.ca.fingerprint
    assert datetime.fromisoformat(t["expires"]) - datetime.now(UTC) <= timedelta(hours=1)
    pki_dir = tmp_path / "node1-pki"
    done = enroll(engine.url, t["token"], pki_dir, ["127.0.0.1"], ca_fingerprint=t["ca_fingerprint"])
    assert done.host == "node1" and done.names == ["node1.host.multiconsole.invalid"]  # not the asked-for
    assert any("plain HTTP" in w for w in done.warnings)
    assert (pki_dir / "agent-key.pem").stat().st_mode & 0o777 == 0o600
    assert (pki_dir / "ca-cert.pem").read_bytes() == engine.ca.cert_pem
    cert = (pki_dir / "agent-cert.pem").read_bytes()
    assert engine.ca.issued(cert) and pki.common_name(pki.load_cert(cert)) == "node1"
    # The token was for one use.
    with pytest.raises(EnrollError, match="unknown, used or expired"):
        enroll(engine.url, t["token"], tmp_path / "again", ["127.0.0.1"])
    assert not (tmp_path / "again").exists()

    host = TlsHost(tmp_path, pki_dir)
    try:
        h = ok(engine.add_host("node1", host.port), 201)
        assert h["status"] == "Up" and h["cert_fingerprint"] == pki.fingerprint(cert)
        assert h["cert_expires"] and h["capabilities"]["graphicsDevices"] is True
        ok(engine.api.post("/api/v1/vms", json=VM), 201)
        vm = ok(engine.api.post("/api/v1/vms/tls1/start"))
        assert vm["status"] == "Up" and vm["host"] == "node1"
        params = host.manager.conn.get().lookupByUUIDString(vm["id"]).XMLDesc(0)
        assert '"device": "spice"' in params and '"device": "vnc"' in params
        # The monitor reaches it over TLS too.
        monitor = engine.app.state.monitor
        assert monitor.cycle() == 1
        assert ok(engine.api.get("/api/v1/hosts/node1"))["status"] == "Up"
        assert ok(engine.api.get("/api/v1/vms/tls1"))["status"] == "Up"
        assert monitor.agents.for_host(engine_host(engine, "node1")).url.startswith("https://")
        ok(engine.api.post("/api/v1/vms/tls1/stop"))
    finally:
        host.stop()


def engine_host(engine: Engine, name: str):
    from sqlalchemy import select

    from multiconsole.engine.db import Host

    with engine.app.state.sessions() as session:
        return session.scalar(select(Host).where(Host.name == name))


def test_engine_refuses_an_agent_with_another_certificate_of_its_ca(tmp_path, engine):
    """Enrolled as node1, but serving a certificate the engine's CA issued for something else."""
    t = engine.token("node1")
    pki_dir = tmp_path / "node1-pki"
    enroll(engine.url, t["token"], pki_dir, ["127.0.0.1"])
    impostor_cert, impostor_key = engine.ca.issue("node1", ["127.0.0.1"], usage="server")
    impostor = write_identity(tmp_path / "impostor", engine.ca, impostor_cert, impostor_key)
    host = TlsHost(tmp_path, impostor)
    try:
        body = error(engine.add_host("node1", host.port), 422, "address")
        assert f"host node1 {MISMATCH}" in body["reason"], body
        assert ok(engine.api.get("/api/v1/hosts")) == []
        # An agent of another CA altogether: refused too.
        other = pki.CertificateAuthority.create()
        c, k = other.issue("node1", ["127.0.0.1"])
        host.serve(write_identity(tmp_path / "other", other, c, k))
        body = error(engine.add_host("node1", host.port), 422, "address")
        assert (
            "no agent answers at https://" in body["reason"] and "certificate verify failed" in body["reason"]
        )
        # The enrolled certificate: accepted.
        host.serve(pki_dir)
        ok(engine.add_host("node1", host.port), 201)
    finally:
        host.stop()


def test_an_added_host_that_changes_certificate_goes_non_responsive(tmp_path, engine):
    host, pki_dir = enrolled_host(tmp_path, engine)
    try:
        ok(engine.add_host("node1", host.port), 201)
        ok(engine.api.post("/api/v1/vms", json=VM), 201)
        ok(engine.api.post("/api/v1/vms/tls1/start"))
        cert, key = engine.ca.issue("node1", ["127.0.0.1"], usage="server")
        host.serve(write_identity(tmp_path / "swapped", engine.ca, cert, key))
        monitor = engine.app.state.monitor
        for _ in range(monitor.max_failures):
            monitor.cycle()
        assert ok(engine.api.get("/api/v1/hosts/node1"))["status"] == "NonResponsive"
        assert ok(engine.api.get("/api/v1/vms/tls1"))["status"] == "Unknown"
        # A NonResponsive host is not called at all: 503 at once (the monitor logged why).
        body = error(engine.api.post("/api/v1/vms/tls1/stop"), 503, "host")
        assert body["reason"] == "host node1 is not responding (its last polls failed)", body
        # Back with its own certificate: Up again.
        host.serve(pki_dir)
        monitor.cycle()
        assert ok(engine.api.get("/api/v1/hosts/node1"))["status"] == "Up"
    finally:
        host.stop()


def test_renewal_by_enrolling_again(tmp_path, engine):
    host, pki_dir = enrolled_host(tmp_path, engine)
    try:
        old = ok(engine.add_host("node1", host.port), 201)["cert_fingerprint"]
        t = engine.token("node1")
        done = enroll(engine.url, t["token"], pki_dir, ["127.0.0.1"], ca_fingerprint=t["ca_fingerprint"])
        assert done.fingerprint != old
        assert ok(engine.api.get("/api/v1/hosts/node1"))["cert_fingerprint"] == done.fingerprint
        host.serve(pki_dir)  # the agent restarts with its new certificate
        monitor = engine.app.state.monitor
        monitor.cycle()
        assert ok(engine.api.get("/api/v1/hosts/node1"))["status"] == "Up"
        ok(engine.api.post("/api/v1/vms", json=VM), 201)
        ok(engine.api.post("/api/v1/vms/tls1/start"))
        ok(engine.api.post("/api/v1/vms/tls1/stop"))
    finally:
        host.stop()


def test_host_add_needs_an_enrolment_or_insecure(tmp_path, engine):
    body = error(engine.add_host("node9", 1), 422, "name")
    assert "has not enrolled" in body["reason"] and "multiconsole host token node9" in body["reason"]
    # A TLS agent added as insecure: the engine speaks HTTP to it and gets nowhere.
    host, _ = enrolled_host(tmp_path, engine, "node2")
    try:
        body = error(engine.add_host("node3", host.port, insecure=True), 422, "address")
        assert "no agent answers at http://" in body["reason"]
    finally:
        host.stop()


def test_tokens_are_for_admins_single_use_and_expire(tmp_path, any_db_engine):
    engine = any_db_engine
    error(engine.api.post("/api/v1/hosts/enrollment-tokens", json={"host": "n"}, auth=None), 401)
    error(engine.api.post("/api/v1/hosts/enrollment-tokens", json={"host": "bad name"}), 422, "host")
    error(engine.api.post("/api/v1/hosts/enrollment-tokens", json={"host": "n", "ttl": 7200}), 422, "ttl")
    csr, _ = pki.make_csr("n", ["127.0.0.1"])
    enrol = f"{engine.url}/api/v1/hosts/enroll"
    error(httpx.post(enrol, json={"token": "guess", "csr": csr.decode()}), 403, "token")
    t = engine.token("n")
    # A bad request does not spend the token.
    error(httpx.post(enrol, json={"token": t["token"], "csr": "junk"}), 422, "csr")
    reply = ok(httpx.post(enrol, json={"token": t["token"], "csr": csr.decode()}))
    assert reply["host"] == "n" and pki.fingerprint(reply["certificate"]) == reply["fingerprint"]
    assert reply["ca_fingerprint"] == engine.ca.fingerprint
    error(httpx.post(enrol, json={"token": t["token"], "csr": csr.decode()}), 403, "token")
    # Spent once, however many ask at the same time.
    from concurrent.futures import ThreadPoolExecutor

    t = engine.token("race")
    with ThreadPoolExecutor(6) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    httpx.post(enrol, json={"token": t["token"], "csr": csr.decode()}, timeout=30).status_code
                ),
                range(6),
            )
        )
    assert sorted(codes) == [200, 403, 403, 403, 403, 403], codes
    # An expired token.
    from multiconsole.engine.db import EnrollmentToken

    t = engine.token("m", ttl=60)
    with engine.app.state.sessions() as session:
        for row in session.query(EnrollmentToken).filter(EnrollmentToken.host_name == "m"):
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()
    error(httpx.post(enrol, json={"token": t["token"], "csr": csr.decode()}), 403, "token")
    # Only the hash is kept.
    with engine.app.state.sessions() as session:
        hashes = [r.token_hash for r in session.query(EnrollmentToken)]
    assert t["token"] not in hashes and all(len(h) == 64 for h in hashes)


def test_enrol_checks_the_pinned_ca(tmp_path, engine):
    t = engine.token("node1")
    wrong = pki.CertificateAuthority.create().fingerprint
    with pytest.raises(EnrollError, match="another CA"):
        enroll(engine.url, t["token"], tmp_path / "p", ["127.0.0.1"], ca_fingerprint=wrong)
    assert not (tmp_path / "p").exists()
    with pytest.raises(EnrollError, match="https:// or http://"):
        enroll("ftp://x", t["token"], tmp_path / "p")


def test_enrol_over_https_checks_the_engine_against_the_pinned_ca(tmp_path, engine):
    """An engine whose API is served over TLS with a certificate of its CA (a later step of the
    security work; here a proxy-less second server of the same app)."""
    cert, key = engine.ca.issue("engine", ["127.0.0.1"], usage="server")
    pki.write_public(tmp_path / "api.pem", cert)
    pki.write_private(tmp_path / "api.key", key)
    https = ThreadServer(
        engine.app, ssl_certfile=str(tmp_path / "api.pem"), ssl_keyfile=str(tmp_path / "api.key")
    ).start()
    try:
        t = engine.token("node1")
        wrong = pki.CertificateAuthority.create().fingerprint
        with pytest.raises(EnrollError, match="another CA"):
            enroll(https.url, t["token"], tmp_path / "p", ["127.0.0.1"], ca_fingerprint=wrong)
        with pytest.raises(EnrollError, match="cannot reach"):
            enroll(https.url, t["token"], tmp_path / "p", ["127.0.0.1"])  # not in the system's CAs
        done = enroll(
            https.url, t["token"], tmp_path / "p", ["127.0.0.1"], ca_fingerprint=engine.ca.fingerprint
        )
        assert done.warnings == [] and done.host == "node1"
        t = engine.token("node2")
        pki.write_public(tmp_path / "ca.pem", engine.ca.cert_pem)
        done = enroll(https.url, t["token"], tmp_path / "q", ["127.0.0.1"], ca_file=tmp_path / "ca.pem")
        assert done.host == "node2"
    finally:
        https.stop()


def test_cli_host_token_and_agent_enroll(tmp_path, engine, monkeypatch):
    from multiconsole.cli import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    conn = ["--engine", engine.url, "--user", ADMIN[0], "--password", ADMIN[1]]
    result = runner.invoke(app, ["host", "token", "node1", *conn, "--json"])
    assert result.exit_code == 0, result.output
    import json

    t = json.loads(result.stdout)
    result = runner.invoke(app, ["host", "token", "node1", *conn])
    assert "multiconsole agent enroll --engine" in result.stdout and t["ca_fingerprint"] in result.stdout
    pki_dir = tmp_path / "cli-pki"
    args = ["agent", "enroll", "--engine", engine.url, "--token", t["token"], "--pki-dir", str(pki_dir)]
    result = runner.invoke(app, [*args, "--address", "127.0.0.1", "--ca-fingerprint", t["ca_fingerprint"]])
    assert result.exit_code == 0, result.output
    assert "enrolled as host node1" in result.stdout and "warning" in result.stderr
    assert {p.name for p in pki_dir.iterdir()} == {"agent-cert.pem", "agent-key.pem", "ca-cert.pem"}
    result = runner.invoke(app, [*args, "--address", "127.0.0.1"])  # spent
    assert result.exit_code == 1 and "unknown, used or expired" in result.stderr
    host = TlsHost(tmp_path, pki_dir)
    try:
        result = runner.invoke(
            app, ["host", "add", "node1", f"127.0.0.1:{host.port}", "--cluster", "prod", *conn]
        )
        assert result.exit_code == 0, result.output
        assert pki.fingerprint((pki_dir / "agent-cert.pem").read_bytes()) in result.stdout
    finally:
        host.stop()


def test_agent_events_are_followed_over_tls(tmp_path):
    engine = Engine(tmp_path, monitor=True, monitor_interval=60)
    ok(engine.api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    host, _ = enrolled_host(tmp_path, engine)
    try:
        ok(engine.add_host("node1", host.port), 201)
        ok(engine.api.post("/api/v1/vms", json=VM), 201)
        ok(engine.api.post("/api/v1/vms/tls1/start"))
        engine.app.state.monitor.cycle()  # starts following the host's events
        time.sleep(0.5)
        host.manager.conn.get().lookupByName("tls1").destroy()
        deadline = time.monotonic() + 10
        while ok(engine.api.get("/api/v1/vms/tls1"))["status"] != "Down":
            assert time.monotonic() < deadline, "the lifecycle event did not reach the engine"
            time.sleep(0.1)
    finally:
        host.stop()
        engine.stop()
