"""The engine driving real agents on real QEMU: the feature page's compatibility matrix.

(a) a 3.4+ cluster sends graphics devices and gets both consoles' ports;
(b) a 3.3 cluster sends the legacy `display` form to our agent and reads legacy stats;
(c) an old host (legacy protocol only) driven from a 3.3 cluster;
(d) an old engine's legacy vmCreate against our agent: test_two_consoles.py,
    test_legacy_vmcreate_of_an_old_engine.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from multiconsole.agent import domxml
from tests.engine.conftest import engine_client, ok
from tests.integration.clients import capture_screen, colours, spice_capture, vnc_capture
from tests.integration.conftest import AgentProcess, free_port


@pytest.fixture
def engine(tmp_path):
    with engine_client(f"sqlite:///{tmp_path / 'engine.db'}") as api:
        yield api
        for vm in ok(api.get("/api/v1/vms")):
            if vm["status"] != "Down":
                api.post(f"/api/v1/vms/{vm['id']}/stop")


def add_host(api, agent_url_port, cluster, name):
    return ok(
        api.post(
            "/api/v1/hosts",
            json={
                "name": name,
                "address": "127.0.0.1",
                "port": agent_url_port,
                "cluster": cluster,
                "insecure": True,
            },
        ),
        201,
    )


def vm_name(prefix: str) -> str:
    return f"it-{prefix}-{time.monotonic_ns() % 10**8}"


def stored_params(system_conn, vm_id):
    return domxml.stored_params(system_conn.lookupByUUIDString(vm_id).XMLDesc(0))


def test_a_new_cluster_sends_devices_and_gets_both_ports(engine, agent_proc, system_conn, tmp_path):
    api = engine
    ok(api.post("/api/v1/clusters", json={"name": "new", "compat_level": "4.7"}), 201)
    add_host(api, agent_proc.port, "new", "local")
    name = vm_name("a")
    ok(
        api.post(
            "/api/v1/vms",
            json={
                "name": name,
                "cluster": "new",
                "memory_mib": 64,
                "video": "qxl",
                "consoles": ["spice", "vnc"],
            },
        ),
        201,
    )
    vm = ok(api.post(f"/api/v1/vms/{name}/start"))
    assert vm["status"] == "Up"
    params = stored_params(system_conn, vm["id"])
    assert "display" not in params
    assert [d["device"] for d in params["devices"] if d["type"] == "graphics"] == ["spice", "vnc"]

    consoles = ok(api.get(f"/api/v1/vms/{name}/consoles"))
    current = {c["protocol"]: c for c in consoles["current"]}
    assert set(current) == {"spice", "vnc"}
    assert all(c["port"] > 0 and c["address"] == "127.0.0.1" for c in current.values())

    vnc = ok(api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={"ttl": 60}))
    spice = ok(api.post(f"/api/v1/vms/{name}/consoles/spice/ticket", json={"ttl": 60}))
    assert len(vnc["password"]) == 8 and vnc["port"] == current["vnc"]["port"]
    assert capture_screen(vnc_capture, vnc["port"], vnc["password"], tmp_path / "v.png") == 0
    assert capture_screen(spice_capture, spice["port"], spice["password"], tmp_path / "s.png") == 0
    assert colours(tmp_path / "v.png") > 1 and colours(tmp_path / "s.png") > 1

    # Edit the running VM's consoles: stored for the next start, applied there.
    vm = ok(api.patch(f"/api/v1/vms/{name}", json={"consoles": ["vnc"], "video": "vga"}))
    assert vm["next_run"]["display"]["consoles"] == ["vnc"]
    assert [c["protocol"] for c in ok(api.get(f"/api/v1/vms/{name}/consoles"))["current"]] == ["spice", "vnc"]
    ok(api.post(f"/api/v1/vms/{name}/stop"))
    vm = ok(api.post(f"/api/v1/vms/{name}/start"))
    assert vm["next_run"] is None and [c["protocol"] for c in vm["consoles"]] == ["vnc"]
    assert "<model type='vga'" in system_conn.lookupByUUIDString(vm["id"]).XMLDesc(0)
    ok(api.post(f"/api/v1/vms/{name}/stop"))
    assert vm["id"] not in [d.UUIDString() for d in system_conn.listAllDomains()]


def test_b_a_33_cluster_sends_the_legacy_form(engine, agent_proc, system_conn, tmp_path):
    api = engine
    ok(api.post("/api/v1/clusters", json={"name": "c33", "compat_level": "3.3"}), 201)
    add_host(api, agent_proc.port, "c33", "local33")
    name = vm_name("b")
    ok(
        api.post(
            "/api/v1/vms",
            json={
                "name": name,
                "cluster": "c33",
                "memory_mib": 64,
                "video": "qxl",
                "consoles": ["spice"],
                "keyboard_layout": "de",
            },
        ),
        201,
    )
    vm = ok(api.post(f"/api/v1/vms/{name}/start"))
    params = stored_params(system_conn, vm["id"])
    assert params["display"] == "qxl" and params["keyboardLayout"] == "de"
    assert not [d for d in params["devices"] if d["type"] == "graphics"]
    [console] = vm["consoles"]
    assert console["protocol"] == "spice" and console["port"] > 0
    t = ok(api.post(f"/api/v1/vms/{name}/consoles/spice/ticket"))
    assert capture_screen(spice_capture, t["port"], t["password"], tmp_path / "s.png") == 0
    ok(api.post(f"/api/v1/vms/{name}/stop"))


@pytest.fixture
def legacy_agent(log_dir):
    port = free_port()
    log = (log_dir / f"legacy-{port}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.legacy_agent", "--listen", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    helper = AgentProcess(log_dir, port=port)
    helper.proc = proc
    deadline = time.monotonic() + 60
    import httpx

    while True:
        try:
            httpx.get(f"{helper.url}/health", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    yield helper
    helper.kill(15)


def test_c_an_old_host_from_a_33_cluster(engine, legacy_agent, tmp_path):
    api = engine
    ok(api.post("/api/v1/clusters", json={"name": "new2", "compat_level": "4.7"}), 201)
    reply = api.post(
        "/api/v1/hosts",
        json={
            "name": "old",
            "address": "127.0.0.1",
            "port": legacy_agent.port,
            "cluster": "new2",
            "insecure": True,
        },
    )
    assert reply.status_code == 422 and "not 4.7" in reply.json()["error"]["reason"]
    ok(api.post("/api/v1/clusters", json={"name": "old33", "compat_level": "3.3"}), 201)
    add_host(api, legacy_agent.port, "old33", "oldhost")
    name = vm_name("c")
    reply = api.post(
        "/api/v1/vms",
        json={
            "name": name,
            "cluster": "old33",
            "memory_mib": 64,
            "video": "qxl",
            "consoles": ["spice", "vnc"],
        },
    )
    assert reply.status_code == 422
    assert reply.json()["error"] == {
        "status": 422,
        "field": "graphics",
        "reason": "clusters below 3.4 allow one console (this one is 3.3)",
        "message": "graphics: clusters below 3.4 allow one console (this one is 3.3)",
    }
    ok(
        api.post(
            "/api/v1/vms",
            json={"name": name, "cluster": "old33", "memory_mib": 64, "video": "vga", "consoles": ["vnc"]},
        ),
        201,
    )
    vm = ok(api.post(f"/api/v1/vms/{name}/start"))
    [console] = vm["consoles"]  # from displayType/displayPort alone
    assert console["protocol"] == "vnc" and console["port"] > 0
    api.app.state.monitor.cycle()
    assert ok(api.get(f"/api/v1/vms/{name}"))["consoles"] == vm["consoles"]
    t = ok(api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket"))  # through VM.setTicket
    assert capture_screen(vnc_capture, t["port"], t["password"], tmp_path / "v.png") == 0
    ok(api.post(f"/api/v1/vms/{name}/stop"))
