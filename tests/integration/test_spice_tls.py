"""SPICE over TLS on real QEMU: a host enrolled with the engine's CA gets QEMU's SPICE
certificates, its consoles a tlsPort, and remote-viewer under Xvfb connects with the `.vv`'s
`ca` and `host-subject` -- and refuses a wrong subject or a wrong CA. Then the engine renews
the host's certificates over its TLS connection, without re-enrolling.

Every test engine has its own CA while all agents share /etc/pki/libvirt-spice (QEMU reads
it at each VM start): enrolment and renewal rewrite it, and each VM here starts right after
the SPICE files are checked to be ours (renewing when another test rewrote them).
"""

from __future__ import annotations

import configparser
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from multiconsole import pki
from multiconsole.agent import certs
from multiconsole.agent.enroll import enroll
from multiconsole.engine.app import Settings, make_app
from multiconsole.engine.broker import AgentClient, CertificateMismatch
from multiconsole.engine.hosts import EngineTls
from tests.conftest import artifacts_dir
from tests.engine.conftest import ADMIN, ok
from tests.integration.clients import VirtualScreen, capture_screen, colours, shows_screen, stop, vnc_capture
from tests.integration.conftest import free_port
from tests.integration.test_agent_tls import wait_for_tls_agent
from tests.support.servers import ThreadServer

pytestmark = pytest.mark.integration
HOST = "tlshost"
ALL_SECURE = ["main", "display", "inputs", "cursor", "playback", "record", "smartcard", "usbredir"]


class TlsHost:
    """An engine (own CA) and a real agent enrolled with it, serving TLS, added as host `tlshost`."""

    def __init__(self, root: Path, log_dir: Path):
        self.root = root
        self.engine_pki = root / "engine-pki"
        self.app = make_app(
            Settings(
                db_url=f"sqlite:///{root / 'engine.db'}",
                admin_password=ADMIN[1],
                monitor_interval=1,
                proxy_port=None,
                proxy_key_file=str(root / "proxy.key"),
                pki_dir=str(self.engine_pki),
            )
        )
        self.server = ThreadServer(self.app).start()
        self.api = httpx.Client(base_url=self.server.url, auth=ADMIN, timeout=120)
        self.spice_dir = certs.spice_cert_dir()
        assert self.spice_dir is not None, "SPICE TLS is off in qemu.conf: run scripts/setup.sh"
        ok(self.api.post("/api/v1/clusters", json={"name": "tls", "compat_level": "4.7"}), 201)
        t = ok(self.api.post("/api/v1/hosts/enrollment-tokens", json={"host": HOST}), 201)
        self.host_pki = root / "host-pki"
        self.enrolled = enroll(
            self.server.url, t["token"], self.host_pki, ["127.0.0.1"], ca_fingerprint=t["ca_fingerprint"]
        )
        self.port = free_port()
        self.log_path = log_dir / f"agent-spice-tls-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "multiconsole.cli",
                "agent",
                "--verbose",
                "--pki-dir",
                str(self.host_pki),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--virt-type",
                "qemu",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for_tls_agent(self.port, self.engine_pki, self.proc, self.log_path)
        body = {"name": HOST, "address": "127.0.0.1", "port": self.port, "cluster": "tls"}
        self.host = ok(self.api.post("/api/v1/hosts", json=body), 201)

    @property
    def ca_pem(self) -> bytes:
        return (self.engine_pki / "ca-cert.pem").read_bytes()

    def ensure_spice_files(self) -> None:
        """QEMU's SPICE files from this engine's CA (another test may have enrolled since)."""
        if pki.fingerprint((self.spice_dir / certs.SPICE_CA).read_bytes()) != pki.fingerprint(self.ca_pem):
            ok(self.api.post(f"/api/v1/hosts/{HOST}/certificate"))

    def start_vm(self, prefix: str, **extra) -> dict:
        name = f"it-tls-{prefix}-{time.monotonic_ns() % 10**7}"
        body = {
            "name": name,
            "cluster": "tls",
            "memory_mib": 64,
            "video": "qxl",
            "consoles": ["spice", "vnc"],
        }
        ok(self.api.post("/api/v1/vms", json={**body, **extra}), 201)
        self.ensure_spice_files()
        return ok(self.api.post(f"/api/v1/vms/{name}/start"))

    def close(self) -> None:
        for vm in ok(self.api.get("/api/v1/vms")):
            if vm["status"] != "Down":
                self.api.post(f"/api/v1/vms/{vm['id']}/stop")
        self.proc.terminate()
        self.proc.wait(15)
        self.api.close()
        self.server.stop()
        self.app.state.db_engine.dispose()


@pytest.fixture(scope="module")
def tls_host(tmp_path_factory, log_dir, system_conn):
    h = TlsHost(tmp_path_factory.mktemp("spice-tls"), log_dir)
    yield h
    h.close()


@pytest.fixture
def screen():
    s = VirtualScreen()
    yield s
    s.close()


def vv(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser["virt-viewer"]


def spice_channels(vm_name: str) -> str:
    """QEMU's own account of connected SPICE channels (`info spice`)."""
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", "qemu-monitor-command", vm_name, "--hmp", "info spice"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    ).stdout


def connected(vm_name: str) -> bool:
    info = spice_channels(vm_name)
    assert "Server:" in info, info
    return "Channels: none" not in info


def holder(api, name: str) -> str | None:
    current = ok(api.get(f"/api/v1/vms/{name}/consoles"))["current"]
    return next(c["holder"] for c in current if c["protocol"] == "spice")


def wait_for(predicate, seconds: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_enrolment_installs_spice_certificates_from_the_engine_ca(tls_host):
    h = tls_host
    spice_dir = h.spice_dir
    assert h.enrolled.spice_subject == f"O=multiconsole,CN={HOST}"
    assert h.host["spice_subject"] == f"O=multiconsole,CN={HOST}"
    assert h.host["capabilities"]["spiceTls"] is True
    h.ensure_spice_files()
    server_cert = (spice_dir / certs.SPICE_CERT).read_bytes()
    assert pki.issued_by(server_cert, h.ca_pem)
    assert pki.cert_subject_string(server_cert) == f"O=multiconsole,CN={HOST}"
    assert pki.key_matches(server_cert, (spice_dir / certs.SPICE_KEY).read_bytes())
    # QEMU (libvirt-qemu, group kvm) reads them; only root and kvm read the key.
    key = (spice_dir / certs.SPICE_KEY).stat()
    assert stat.S_IMODE(key.st_mode) == 0o640 and key.st_gid == certs._qemu_gid()
    assert stat.S_IMODE((spice_dir / certs.SPICE_CERT).stat().st_mode) == 0o644
    # The SPICE key is not the agent's.
    assert not pki.key_matches(server_cert, (h.host_pki / "agent-key.pem").read_bytes())


def test_remote_viewer_over_tls_checks_ca_and_host_subject(tls_host, screen, tmp_path):
    h = tls_host
    api = h.api
    vm = h.start_vm("rv", spice_secure_channels=ALL_SECURE)
    name = vm["name"]
    current = {c["protocol"]: c for c in ok(api.get(f"/api/v1/vms/{name}/consoles"))["current"]}
    # Every channel secure: a TLS-only SPICE console (no plain port).
    assert current["spice"]["port"] is None and current["spice"]["tls_port"] > 0

    def viewer_file(**override: str) -> Path:
        text = api.get(f"/api/v1/vms/{name}/consoles/spice.vv").text
        f = vv(text)
        assert f["port"] == "-1" and int(f["tls-port"]) == current["spice"]["tls_port"]
        assert f["host-subject"] == f"O=multiconsole,CN={HOST}"
        assert f["secure-channels"] == ";".join(ALL_SECURE)
        assert f["ca"].replace("\\n", "\n").strip() == h.ca_pem.decode().strip()
        for key, value in override.items():
            text = "".join(
                f"{key}={value}\n" if line.startswith(f"{key}=") else line for line in text.splitlines(True)
            )
        path = tmp_path / f"spice-{len(list(tmp_path.iterdir()))}.vv"
        path.write_text(text)
        return path

    # A wrong host-subject, then a CA that did not sign the host's certificate: refused.
    other_ca = pki.CertificateAuthority.create("another CA").cert_pem.decode().strip().replace("\n", "\\n")
    for override in ({"host-subject": "O=multiconsole,CN=not-this-host"}, {"ca": other_ca}):
        viewer = screen.run("remote-viewer", str(viewer_file(**override)))
        try:
            time.sleep(8)
            assert not connected(name), f"{override}: {spice_channels(name)}"
        finally:
            stop(viewer)

    # The file as the engine wrote it: connected, over TLS, showing the VM's screen.
    viewer = screen.run("remote-viewer", str(viewer_file()))
    try:
        wait_for(lambda: connected(name), what="remote-viewer to connect")
        # Every channel QEMU lists came over TLS ("address: 127.0.0.1:PORT [tls]").
        channels = spice_channels(name).split("Channel:")[1:]
        assert channels and all("[tls]" in c.split("address:")[1].splitlines()[0] for c in channels), channels
        vnc = vv(api.get(f"/api/v1/vms/{name}/consoles/vnc.vv").text)
        assert capture_screen(vnc_capture, int(vnc["port"]), vnc["password"], tmp_path / "vnc.png") == 0
        wait_for(lambda: holder(api, name) == ADMIN[0], what="the engine to see remote-viewer connected")
        time.sleep(1)
        screen.screenshot(tmp_path / "remote-viewer-tls.png")
        assert colours(tmp_path / "remote-viewer-tls.png") > 2
        assert shows_screen(tmp_path / "remote-viewer-tls.png", tmp_path / "vnc.png")
        (artifacts_dir() / "spice-tls-remote-viewer.png").write_bytes(
            (tmp_path / "remote-viewer-tls.png").read_bytes()
        )
    finally:
        stop(viewer)
    ok(api.post(f"/api/v1/vms/{name}/stop"))


def test_engine_renews_host_certificates_without_reenrolment(tls_host, tmp_path):
    h = tls_host
    api = h.api
    h.ensure_spice_files()
    before = ok(api.get(f"/api/v1/hosts/{HOST}"))
    old_fp = before["cert_fingerprint"]
    old_spice = pki.fingerprint((h.spice_dir / certs.SPICE_CERT).read_bytes())
    old_key = (h.host_pki / "agent-key.pem").read_bytes()

    r = ok(api.post(f"/api/v1/hosts/{HOST}/certificate"))
    assert r["previous_fingerprint"] == old_fp and r["fingerprint"] != old_fp
    assert r["spice_renewed"] and r["spice_subject"] == f"O=multiconsole,CN={HOST}"
    # The host made new keys: new certificates on disk, the agent's key still 0600.
    assert pki.fingerprint((h.host_pki / "agent-cert.pem").read_bytes()) == r["fingerprint"]
    assert (h.host_pki / "agent-key.pem").read_bytes() != old_key
    assert stat.S_IMODE((h.host_pki / "agent-key.pem").stat().st_mode) == 0o600
    spice_cert = (h.spice_dir / certs.SPICE_CERT).read_bytes()
    assert pki.fingerprint(spice_cert) != old_spice and pki.issued_by(spice_cert, h.ca_pem)
    assert ok(api.get(f"/api/v1/hosts/{HOST}"))["cert_fingerprint"] == r["fingerprint"]

    # The running agent presents the new certificate: a client pinned to the old one is refused.
    tls = EngineTls.from_ca(pki.CertificateAuthority.load(h.engine_pki))
    url = f"https://127.0.0.1:{h.port}"
    with AgentClient(url, ssl_context=tls.client_context(), pin=old_fp, name=HOST) as old:
        with pytest.raises(CertificateMismatch):
            old.call("Host.getCapabilities")
    with AgentClient(url, ssl_context=tls.client_context(), pin=r["fingerprint"], name=HOST) as new:
        assert new.call("Host.getCapabilities")["spiceTls"] is True

    # The engine keeps driving the host: a VM starts over the new pin, its SPICE over TLS.
    vm = h.start_vm("renewed", spice_secure_channels=ALL_SECURE)
    spice = next(c for c in vm["consoles"] if c["protocol"] == "spice")
    assert spice["tls_port"] > 0
    ok(api.post(f"/api/v1/vms/{vm['name']}/stop"))
    time.sleep(2.5)  # a few monitor polls over the new pin
    assert ok(api.get(f"/api/v1/hosts/{HOST}"))["status"] == "Up"

    # The CLI does the same.
    env = {
        **os.environ,
        "MULTICONSOLE_URL": h.server.url,
        "MULTICONSOLE_USER": ADMIN[0],
        "MULTICONSOLE_PASSWORD": ADMIN[1],
    }
    out = subprocess.run(
        [sys.executable, "-m", "multiconsole.cli", "host", "renew-cert", HOST, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)
    assert again["previous_fingerprint"] == r["fingerprint"] and again["fingerprint"] != r["fingerprint"]
    assert ok(api.get(f"/api/v1/hosts/{HOST}"))["cert_fingerprint"] == again["fingerprint"]
