"""An engine starting on a database that says its host is NonResponsive (the agent went away
before the engine last time) re-checks the host at once, and a VM start made meanwhile
waits for it instead of failing."""

from __future__ import annotations

import signal
import threading
import time

from sqlalchemy import update

from multiconsole.engine import db
from tests.engine.conftest import engine_client, ok
from tests.integration.conftest import AgentProcess


def test_a_start_right_after_engine_start_waits_for_the_stored_nonresponsive_host(
    log_dir, tmp_path, system_conn
):
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    name = f"it-rchk-{time.monotonic_ns() % 10**8}"
    agent = AgentProcess(log_dir).start()
    try:
        with engine_client(url) as api:
            ok(api.post("/api/v1/clusters", json={"name": "c"}), 201)
            host = {"name": "local", "address": "127.0.0.1", "port": agent.port, "cluster": "c"}
            ok(api.post("/api/v1/hosts", json={**host, "insecure": True}), 201)
            vm = {"name": name, "cluster": "c", "memory_mib": 64, "video": "vga", "consoles": ["vnc"]}
            ok(api.post("/api/v1/vms", json=vm), 201)
        # What the last engine stored: its host stopped answering before it did.
        engine = db.make_engine(url)
        with engine.begin() as conn:
            conn.execute(update(db.Host).values(status="NonResponsive", failures=3))
        engine.dispose()

        # The agent is up, but slow to answer the new engine's first poll (stopped for a second).
        agent.proc.send_signal(signal.SIGSTOP)
        threading.Timer(1.0, agent.proc.send_signal, (signal.SIGCONT,)).start()
        with engine_client(url, monitor=True, monitor_interval=3) as api:
            began = time.monotonic()
            reply = api.post(f"/api/v1/vms/{name}/start")
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"] == "Up" and reply.json()["host"] == "local"
            assert time.monotonic() - began < 8
            assert ok(api.get("/api/v1/hosts/local"))["status"] == "Up"
            ok(api.post(f"/api/v1/vms/{name}/stop"))
    finally:
        agent.proc.send_signal(signal.SIGCONT)
        agent.kill(15)
        for dom in system_conn.listAllDomains():
            if dom.name() == name:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
