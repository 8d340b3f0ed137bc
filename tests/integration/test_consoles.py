"""Consoles through the engine with real clients: remote-viewer and vncdotool at once,
console sessions, takeover, and the audit log."""

from __future__ import annotations

import configparser
import time

import pytest

from tests.conftest import artifacts_dir
from tests.engine.conftest import engine_client, ok
from tests.integration.clients import (
    VirtualScreen,
    capture_screen,
    colours,
    same_screen,
    shows_screen,
    spice_capture,
    stop,
    vnc_capture,
)


@pytest.fixture
def engine(tmp_path, agent_proc):
    with engine_client(f"sqlite:///{tmp_path / 'engine.db'}", monitor=True, monitor_interval=1) as api:
        ok(api.post("/api/v1/clusters", json={"name": "c"}), 201)
        ok(
            api.post(
                "/api/v1/hosts",
                json={
                    "name": "h",
                    "address": "127.0.0.1",
                    "port": agent_proc.port,
                    "cluster": "c",
                    "insecure": True,
                },
            ),
            201,
        )
        yield api
        for vm in ok(api.get("/api/v1/vms")):
            if vm["status"] != "Down":
                api.post(f"/api/v1/vms/{vm['id']}/stop")


@pytest.fixture
def screen():
    s = VirtualScreen()
    yield s
    s.close()


def start_vm(api, name, **extra):
    body = {"name": name, "cluster": "c", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}
    ok(api.post("/api/v1/vms", json={**body, **extra}), 201)
    return ok(api.post(f"/api/v1/vms/{name}/start"))


def vv(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser["virt-viewer"]


def wait_for(predicate, seconds=20, what="condition"):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def holder(api, vm, proto):
    current = ok(api.get(f"/api/v1/vms/{vm}/consoles"))["current"]
    return next(c["holder"] for c in current if c["protocol"] == proto)


def test_remote_viewer_and_vncdotool_on_one_vm_at_once(engine, screen, tmp_path):
    api = engine
    name = f"it-rv-{time.monotonic_ns() % 10**6}"
    start_vm(api, name)
    spice = api.get(f"/api/v1/vms/{name}/consoles/spice.vv")
    assert spice.status_code == 200, spice.text
    assert spice.headers["content-type"] == "application/x-virt-viewer"
    assert "attachment" in spice.headers["content-disposition"]
    keys = vv(spice.text)
    assert keys["type"] == "spice" and keys["host"] == "127.0.0.1" and len(keys["password"]) == 8
    assert keys["delete-this-file"] == "1" and keys["title"] == f"{name}:%d"
    (tmp_path / "spice.vv").write_text(spice.text)

    viewer = screen.run("remote-viewer", str(tmp_path / "spice.vv"))
    try:
        wait_for(lambda: holder(api, name, "spice") == "admin@internal", what="remote-viewer to connect")
        vnc = vv(api.get(f"/api/v1/vms/{name}/consoles/vnc.vv").text)
        assert vnc["type"] == "vnc"
        assert capture_screen(vnc_capture, int(vnc["port"]), vnc["password"], tmp_path / "vnc.png") == 0
        time.sleep(1)
        screen.screenshot(tmp_path / "remote-viewer.png")
        assert viewer.poll() is None
        assert colours(tmp_path / "remote-viewer.png") > 2
        # The same screen through SPICE (a second ticket keeps remote-viewer: it is ours).
        t = ok(api.post(f"/api/v1/vms/{name}/consoles/spice/ticket", json={"existing_connection": "keep"}))
        assert capture_screen(spice_capture, t["port"], t["password"], tmp_path / "spice.png") == 0
        assert same_screen(tmp_path / "vnc.png", tmp_path / "spice.png")
        # remote-viewer's window shows that very screen.
        assert shows_screen(tmp_path / "remote-viewer.png", tmp_path / "vnc.png")
        for shot in ("remote-viewer.png", "vnc.png", "spice.png"):
            (artifacts_dir() / f"consoles-{shot}").write_bytes((tmp_path / shot).read_bytes())
    finally:
        stop(viewer)


def test_takeover_refused_then_allowed_and_audited(engine, screen, tmp_path):
    api = engine
    for user, roles in (
        ("alice", ["console_user"]),
        ("bob", ["console_user"]),
        ("carol", ["console_user", "console_reconnect"]),
    ):
        ok(
            api.post("/api/v1/users", json={"name": user, "password": f"{user}-password", "roles": roles}),
            201,
        )
    as_ = {u: (u, f"{u}-password") for u in ("alice", "bob", "carol")}
    name = f"it-take-{time.monotonic_ns() % 10**6}"
    start_vm(api, name)

    reply = api.get(f"/api/v1/vms/{name}/consoles/spice.vv", auth=as_["alice"])
    assert reply.status_code == 200
    (tmp_path / "alice.vv").write_text(reply.text)
    viewer = screen.run("remote-viewer", str(tmp_path / "alice.vv"))
    try:
        wait_for(lambda: holder(api, name, "spice") == "alice", what="alice to connect")
        reply = api.post(f"/api/v1/vms/{name}/consoles/spice/ticket", json={}, auth=as_["bob"])
        assert reply.status_code == 403
        assert "in use by alice" in reply.json()["error"]["reason"]
        reply = api.post(f"/api/v1/vms/{name}/consoles/spice/ticket", json={}, auth=as_["carol"])
        assert reply.status_code == 409 and reply.json()["error"]["field"] == "take_over"
        t = ok(
            api.post(f"/api/v1/vms/{name}/consoles/spice/ticket", json={"take_over": True}, auth=as_["carol"])
        )
        # QEMU disconnected alice's remote-viewer.
        wait_for(lambda: holder(api, name, "spice") is None, what="alice to be disconnected")
        assert capture_screen(spice_capture, t["port"], t["password"], tmp_path / "s.png") == 0
    finally:
        stop(viewer)

    entries = ok(api.get("/api/v1/audit", params={"vm": name}))
    events = [(e["event"], e["user"]) for e in entries]
    assert events[:5] == [
        ("console ticket issued", "alice"),
        ("console connected", "alice"),
        ("console taken over", "carol"),
        ("console ticket issued", "carol"),
        ("console disconnected", "alice"),
    ], events
    assert entries[1]["client_address"] == "127.0.0.1" and entries[1]["protocol"] == "spice"
    assert ok(api.get("/api/v1/audit", params={"vm": name, "user": "carol", "event": "console taken over"}))
    assert api.get("/api/v1/users", auth=as_["alice"]).status_code == 403


def test_tickets_need_a_running_vm_and_a_real_console(engine):
    api = engine
    name = f"it-tk-{time.monotonic_ns() % 10**6}"
    ok(
        api.post(
            "/api/v1/vms",
            json={"name": name, "cluster": "c", "memory_mib": 64, "video": "vga", "consoles": ["vnc"]},
        ),
        201,
    )
    reply = api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={})
    assert reply.status_code == 409 and reply.json()["error"]["field"] == "status"
    ok(api.post(f"/api/v1/vms/{name}/start"))
    reply = api.post(f"/api/v1/vms/{name}/consoles/spice/ticket", json={})
    assert reply.status_code == 404 and reply.json()["error"]["field"] == "protocol"
    reply = api.post(f"/api/v1/vms/{name}/consoles/rdp/ticket", json={})
    assert reply.status_code == 404
    reply = api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={"ttl": 0})
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "ttl"
    reply = api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={"ttl": 7201})
    assert reply.status_code == 422


def test_cli_console_and_audit(tmp_path, agent_proc):
    """`multiconsole console NAME --protocol vnc --json` gives what vncdotool needs."""
    import json
    import os
    import subprocess
    import sys

    import httpx

    from multiconsole.engine.app import Settings, make_app
    from tests.engine.conftest import ADMIN
    from tests.support.servers import ThreadServer

    app = make_app(
        Settings(db_url=f"sqlite:///{tmp_path / 'e.db'}", admin_password=ADMIN[1], monitor_interval=1)
    )
    server = ThreadServer(app).start()
    env = {
        **os.environ,
        "MULTICONSOLE_URL": server.url,
        "MULTICONSOLE_USER": ADMIN[0],
        "MULTICONSOLE_PASSWORD": ADMIN[1],
        "XDG_CONFIG_HOME": str(tmp_path),
    }

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "multiconsole.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    name = f"it-cli-{time.monotonic_ns() % 10**6}"
    try:
        assert cli("cluster", "add", "c").returncode == 0
        assert (
            cli("host", "add", "h", f"127.0.0.1:{agent_proc.port}", "--cluster", "c", "--insecure").returncode
            == 0
        )
        r = cli(
            "vm",
            "create",
            name,
            "--cluster",
            "c",
            "--memory",
            "64",
            "--video",
            "qxl",
            "--console",
            "spice",
            "--console",
            "vnc",
        )
        assert r.returncode == 0, r.stderr
        assert cli("vm", "start", name).returncode == 0
        r = cli("console", name, "--protocol", "vnc", "--json")
        assert r.returncode == 0, r.stderr
        t = json.loads(r.stdout)
        assert set(t) >= {"host", "port", "tlsPort", "password", "expires"}
        assert capture_screen(vnc_capture, t["port"], t["password"], tmp_path / "v.png") == 0
        r = cli("console", name, "--protocol", "spice", "--vv", str(tmp_path / "s.vv"))
        assert r.returncode == 0, r.stderr
        keys = vv((tmp_path / "s.vv").read_text())
        assert oct((tmp_path / "s.vv").stat().st_mode & 0o777) == "0o600"
        assert capture_screen(spice_capture, int(keys["port"]), keys["password"], tmp_path / "s.png") == 0
        r = cli("audit", "--vm", name, "--json")
        assert r.returncode == 0, r.stderr
        events = [e["event"] for e in json.loads(r.stdout)]
        assert events.count("console ticket issued") == 2
        r = cli("console", name, "--protocol", "spice", "--vv", "x.vv", "--open")
        assert r.returncode == 2 and "choose one" in r.stderr
    finally:
        with httpx.Client(base_url=server.url, auth=ADMIN) as http:
            http.post(f"/api/v1/vms/{name}/stop")
        server.stop()


def test_an_expired_console_password_is_refused(engine, tmp_path):
    api = engine
    name = f"it-exp-{time.monotonic_ns() % 10**6}"
    start_vm(api, name)
    vnc = ok(api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={"ttl": 2}))
    spice = ok(api.post(f"/api/v1/vms/{name}/consoles/spice/ticket", json={"ttl": 2}))
    time.sleep(3.5)
    assert vnc_capture(vnc["port"], vnc["password"], tmp_path / "v.png") == 3
    assert spice_capture(spice["port"], spice["password"], tmp_path / "s.png") == 1
