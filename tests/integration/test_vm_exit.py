"""Why a VM went down, from real QEMU: killed (a crash), shut down from inside, stopped by a user."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import libvirt_qemu
import pytest

from tests.engine.conftest import engine_client, ok


@pytest.fixture
def engine(tmp_path, agent_proc, system_conn):
    with engine_client(f"sqlite:///{tmp_path / 'engine.db'}", monitor=True, monitor_interval=1) as api:
        ok(api.post("/api/v1/clusters", json={"name": "c"}), 201)
        host = {"name": "h", "address": "127.0.0.1", "port": agent_proc.port, "cluster": "c"}
        host["insecure"] = True
        ok(api.post("/api/v1/hosts", json=host), 201)
        yield api
        for vm in ok(api.get("/api/v1/vms")):
            if vm["status"] != "Down":
                api.post(f"/api/v1/vms/{vm['id']}/stop")


def start_vm(api, prefix: str) -> dict:
    name = f"it-{prefix}-{time.monotonic_ns() % 10**8}"
    body = {"name": name, "cluster": "c", "memory_mib": 64, "video": "vga", "consoles": ["vnc"]}
    ok(api.post("/api/v1/vms", json=body), 201)
    return ok(api.post(f"/api/v1/vms/{name}/start"))


def wait_down(api, name: str, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while (vm := ok(api.get(f"/api/v1/vms/{name}")))["status"] != "Down":
        assert time.monotonic() < deadline, f"VM {name} is still {vm['status']}"
        time.sleep(0.2)
    return vm


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def test_qemu_killed_is_a_crash_in_the_api_ui_and_audit_log(engine, system_conn):
    api = engine
    vm = start_vm(api, "crash")
    name = vm["name"]
    os.kill(qemu_pid(name), signal.SIGKILL)
    vm = wait_down(api, name)
    assert vm["exit_code"] == 1 and vm["exit_reason"] == 2  # vdsm's LOST_QEMU_CONNECTION
    assert "Lost connection with qemu process" in vm["exit_message"]
    assert vm["status_reason"].startswith("crashed:")
    [entry] = ok(api.get("/api/v1/audit", params={"vm": name, "event": "VM crashed"}))
    assert "Lost connection with qemu process" in entry["detail"]
    # The web UI's VM list says so too.
    rows = api.get("/ui/vms/rows")
    assert rows.status_code == 200 and "crashed: Lost connection with qemu process" in rows.text
    # Started again: the exit of the last run is cleared.
    vm = ok(api.post(f"/api/v1/vms/{name}/start"))
    assert vm["exit_code"] is None and vm["exit_message"] is None
    ok(api.post(f"/api/v1/vms/{name}/stop"))


def test_a_normal_stop_is_no_crash(engine, system_conn):
    api = engine
    # Stopped by a user of the engine: vdsm's ADMIN_SHUTDOWN, exit code 0.
    name = start_vm(api, "stop")["name"]
    vm = ok(api.post(f"/api/v1/vms/{name}/stop"))
    assert (vm["exit_code"], vm["exit_reason"]) == (0, 6)

    # QEMU told to shut down normally (as a guest's power-off does): USER_SHUTDOWN, exit code 0.
    name = start_vm(api, "quit")["name"]
    dom = system_conn.lookupByName(name)
    try:
        libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "quit"}', 0)
    except Exception:  # QEMU may close the monitor before it answers
        pass
    vm = wait_down(api, name)
    assert (vm["exit_code"], vm["exit_reason"]) == (0, 7), vm
    assert vm["status_reason"] == "powered off"
    crashed = ok(api.get("/api/v1/audit", params={"event": "VM crashed"}))
    assert not [e for e in crashed if e["vm_name"] == name]
