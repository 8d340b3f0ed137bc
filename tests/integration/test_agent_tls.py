"""A real host enrolled and driven over TLS: `multiconsole agent enroll` and `multiconsole agent
--pki-dir` as their own processes on qemu:///system, a running engine adding the host and
starting a VM with SPICE and VNC through mutual TLS."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time

import httpx
import pytest

from multiconsole import pki
from multiconsole.engine.app import Settings, make_app
from tests.engine.conftest import ADMIN, ok
from tests.integration.clients import capture_screen, colours, vnc_capture
from tests.integration.conftest import free_port
from tests.support.servers import ThreadServer

pytestmark = pytest.mark.integration


def mc(*args: str, log=None, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "multiconsole.cli", *args]
    if log is not None:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture
def engine(tmp_path):
    pki_dir = tmp_path / "engine-pki"
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'engine.db'}",
            admin_password=ADMIN[1],
            monitor_interval=1,
            proxy_port=None,
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(pki_dir),
        )
    )
    server = ThreadServer(app).start()
    api = httpx.Client(base_url=server.url, auth=ADMIN, timeout=120)
    yield server, api, pki_dir
    for vm in ok(api.get("/api/v1/vms")):
        if vm["status"] != "Down":
            api.post(f"/api/v1/vms/{vm['id']}/stop")
    api.close()
    server.stop()
    app.state.db_engine.dispose()


def wait_for_tls_agent(port: int, pki_dir, proc: subprocess.Popen, log_path) -> None:
    """Until the agent answers the engine's certificate over TLS."""
    context = ssl.create_default_context(cafile=str(pki_dir / "ca-cert.pem"))
    context.check_hostname = False
    context.load_cert_chain(pki_dir / "engine-cert.pem", pki_dir / "engine-key.pem")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"https://127.0.0.1:{port}/health", verify=context, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the TLS agent did not start: " + log_path.read_text())


def test_enrol_a_real_host_and_start_a_two_console_vm_over_tls(engine, tmp_path, log_dir, system_conn):
    server, api, engine_pki = engine
    ok(api.post("/api/v1/clusters", json={"name": "tls", "compat_level": "4.7"}), 201)
    t = ok(api.post("/api/v1/hosts/enrollment-tokens", json={"host": "tlshost"}), 201)

    # On the host: its key and certificate request, the engine signs.
    host_pki = tmp_path / "host-pki"
    r = mc(
        "agent",
        "enroll",
        "--engine",
        server.url,
        "--token",
        t["token"],
        "--pki-dir",
        str(host_pki),
        "--address",
        "127.0.0.1",
        "--ca-fingerprint",
        t["ca_fingerprint"],
    )
    assert r.returncode == 0, r.stderr
    assert "enrolled as host tlshost" in r.stdout and "plain HTTP" in r.stderr
    assert (host_pki / "agent-key.pem").stat().st_mode & 0o777 == 0o600
    served = pki.fingerprint((host_pki / "agent-cert.pem").read_bytes())

    # Without certificates the agent does not start (unless --insecure).
    r = mc("agent", "--pki-dir", str(tmp_path / "none"), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "enrol this host" in r.stderr

    port = free_port()
    log_path = log_dir / f"agent-tls-{port}.log"
    proc = mc(
        "agent",
        "--verbose",
        "--pki-dir",
        str(host_pki),
        "--libvirt-uri",
        "qemu:///system",
        "--listen",
        f"127.0.0.1:{port}",
        "--virt-type",
        "qemu",
        log=log_path.open("ab"),
    )
    try:
        wait_for_tls_agent(port, engine_pki, proc, log_path)
        # Plain HTTP, or TLS without a client certificate: refused.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        no_cert = ssl.create_default_context(cafile=str(host_pki / "ca-cert.pem"))
        no_cert.check_hostname = False
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{port}/health", verify=no_cert, timeout=5)

        host = ok(
            api.post(
                "/api/v1/hosts",
                json={"name": "tlshost", "address": "127.0.0.1", "port": port, "cluster": "tls"},
            ),
            201,
        )
        assert host["status"] == "Up" and host["cert_fingerprint"] == served

        name = f"it-tls-{time.monotonic_ns() % 10**8}"
        body = {
            "name": name,
            "cluster": "tls",
            "memory_mib": 64,
            "video": "qxl",
            "consoles": ["spice", "vnc"],
        }
        ok(api.post("/api/v1/vms", json=body), 201)
        try:
            vm = ok(api.post(f"/api/v1/vms/{name}/start"))
            assert vm["status"] == "Up" and vm["host"] == "tlshost"
            current = {c["protocol"]: c for c in ok(api.get(f"/api/v1/vms/{name}/consoles"))["current"]}
            assert set(current) == {"spice", "vnc"}
            assert all(c["port"] > 0 for c in current.values()), current
            assert current["spice"]["port"] != current["vnc"]["port"]
            # The monitor polls over TLS too, and the ticket goes through it.
            time.sleep(2.5)
            assert ok(api.get("/api/v1/hosts/tlshost"))["status"] == "Up"
            assert ok(api.get(f"/api/v1/vms/{name}"))["status"] == "Up"
            vnc = ok(api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={"ttl": 60}))
            assert capture_screen(vnc_capture, vnc["port"], vnc["password"], tmp_path / "v.png") == 0
            assert colours(tmp_path / "v.png") > 1
        finally:
            ok(api.post(f"/api/v1/vms/{name}/stop"))
        assert ok(api.get(f"/api/v1/vms/{name}"))["status"] == "Down"
    finally:
        proc.terminate()
        proc.wait(15)
