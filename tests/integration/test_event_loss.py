"""Console sessions are recorded even when their events come while the engine is not
listening: a VNC client that connects right after the host's agent restarted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from vncdotool import api as vnc_api

from tests.engine.conftest import engine_client, ok
from tests.integration.conftest import AgentProcess


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def vnc_console(api, vm: str) -> dict:
    return next(c for c in ok(api.get(f"/api/v1/vms/{vm}/consoles"))["current"] if c["protocol"] == "vnc")


def audit(api, vm: str, event: str) -> list[dict]:
    return ok(api.get("/api/v1/audit", params={"vm": vm, "event": event}))


def test_a_vnc_connect_just_after_an_agent_restart_is_recorded(log_dir, system_conn, tmp_path):
    agent = AgentProcess(log_dir).start()
    name = f"it-evl-{time.monotonic_ns() % 10**8}"
    try:
        with engine_client(f"sqlite:///{tmp_path / 'engine.db'}", monitor=True, monitor_interval=3) as api:
            ok(api.post("/api/v1/clusters", json={"name": "c"}), 201)
            host = {"name": "h", "address": "127.0.0.1", "port": agent.port, "cluster": "c", "insecure": True}
            ok(api.post("/api/v1/hosts", json=host), 201)
            vm = {"name": name, "cluster": "c", "memory_mib": 64, "video": "vga", "consoles": ["vnc"]}
            ok(api.post("/api/v1/vms", json=vm), 201)
            ok(api.post(f"/api/v1/vms/{name}/start"))
            t = ok(api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={"ttl": 120}))
            time.sleep(1)  # the engine follows the host's events by now

            # The agent restarts (its VM runs on); a client connects as soon as the new agent
            # has found its VM, before or just as the agent answers.
            agent.kill(9)
            agent = AgentProcess(log_dir, port=agent.port)
            starting = threading.Thread(target=agent.start)
            starting.start()
            wait_for(lambda: "recovered vms=" in _text(agent.log_path), 60, "the new agent to find its VM")
            client = vnc_api.connect(f"127.0.0.1::{t['port']}", password=t["password"], timeout=10)
            starting.join(60)
            try:
                client.captureScreen(str(tmp_path / "v.png"))
                wait_for(lambda: vnc_console(api, name)["holder"], 15, "the connect to be recorded")
                console = vnc_console(api, name)
                assert console["holder"] == "admin@internal" and console["connected_at"]
                assert console["client_address"] == "127.0.0.1"
                [entry] = audit(api, name, "console connected")
                assert entry["user"] == "admin@internal"
            finally:
                client.disconnect()
            wait_for(lambda: vnc_console(api, name)["holder"] is None, 10, "the disconnect to be recorded")
            assert len(audit(api, name, "console disconnected")) == 1
            ok(api.post(f"/api/v1/vms/{name}/stop"))
    finally:
        agent.kill(15)
        for dom in system_conn.listAllDomains():
            if dom.name() == name:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
