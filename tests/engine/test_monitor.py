"""The monitor: VM states and console addresses from host stats, hosts that stop answering."""

from __future__ import annotations

import time

import libvirt

from multiconsole.agent.server import make_app as agent_app
from multiconsole.agent.vms import VmManager
from multiconsole.domain.devices import GraphicsType
from multiconsole.wire.stats import LiveConsole, display_stats
from tests.engine.conftest import FakeHost, ok
from tests.engine.test_api import VM, setup_cluster
from tests.support.legacy_agent import LegacyVmManager
from tests.support.servers import ThreadServer


def monitor(api):
    return api.app.state.monitor


def test_stats_move_vm_states_along(api, fake_host):
    setup_cluster(api, fake_host)
    for name in ("a", "b"):
        ok(api.post("/api/v1/vms", json={**VM, "name": name}), 201)
        ok(api.post(f"/api/v1/vms/{name}/start"))
    conn = fake_host.manager.conn.get()
    a = conn.lookupByName("a")
    b = conn.lookupByName("b")
    a.suspend()
    b.destroy()  # powered off behind the engine's back: the host reports it Down
    monitor(api).cycle()
    assert ok(api.get("/api/v1/vms/a"))["status"] == "Paused"
    vm_b = ok(api.get("/api/v1/vms/b"))
    assert vm_b["status"] == "Down" and vm_b["host"] is None and vm_b["status_reason"] == "powered off"
    # ... and the engine let the host forget it.
    try:
        conn.lookupByName("b")
        raise AssertionError("domain b still defined")
    except libvirt.libvirtError:
        pass
    a.resume()
    fake_host.manager.destroy(a.UUIDString())  # gone from the host entirely
    monitor(api).cycle()
    assert ok(api.get("/api/v1/vms/a"))["status"] == "Down"


def test_an_unanswering_host_turns_nonresponsive_and_back(api, tmp_path):
    host = FakeHost(tmp_path)
    try:
        setup_cluster(api, host)
        ok(api.post("/api/v1/vms", json=VM), 201)
        ok(api.post("/api/v1/vms/web1/start"))
        host.server.stop()
        for i in range(3):
            monitor(api).cycle()
            status = ok(api.get("/api/v1/hosts/h-prod"))["status"]
            assert status == ("NonResponsive" if i == 2 else "Up"), (i, status)
        assert ok(api.get("/api/v1/vms/web1"))["status"] == "Unknown"
        # The agent comes back on the same port, the VM still running there.
        host.server = ThreadServer(agent_app(host.manager), port=host.port).start()
        monitor(api).cycle()
        assert ok(api.get("/api/v1/hosts/h-prod"))["status"] == "Up"
        assert ok(api.get("/api/v1/vms/web1"))["status"] == "Up"
    finally:
        host.stop()


def test_events_from_the_host_trigger_a_poll(sqlite_url, tmp_path):
    from tests.engine.conftest import engine_client

    host = FakeHost(tmp_path)
    try:
        with engine_client(sqlite_url, monitor=True, monitor_interval=60) as api:
            setup_cluster(api, host)
            ok(api.post("/api/v1/vms", json=VM), 201)
            ok(api.post("/api/v1/vms/web1/start"))
            monitor(api).cycle()  # starts following the host's events
            time.sleep(0.5)
            host.manager.conn.get().lookupByName("web1").destroy()
            deadline = time.monotonic() + 10
            while ok(api.get("/api/v1/vms/web1"))["status"] != "Down":
                assert time.monotonic() < deadline, "the lifecycle event did not reach the engine"
                time.sleep(0.1)
    finally:
        host.stop()


def test_a_legacy_host_in_a_33_cluster(api, tmp_path):
    old = FakeHost(tmp_path, manager_cls=LegacyVmManager)
    try:
        # Not for a 3.4+ cluster: it cannot take graphics devices.
        ok(api.post("/api/v1/clusters", json={"name": "new"}), 201)
        reply = api.post(
            "/api/v1/hosts",
            json={
                "name": "old",
                "address": "127.0.0.1",
                "port": old.port,
                "cluster": "new",
                "insecure": True,
            },
        )
        assert reply.status_code == 422 and "legacy" in reply.json()["error"]["reason"]
        ok(api.post("/api/v1/clusters", json={"name": "old33", "compat_level": "3.3"}), 201)
        ok(
            api.post(
                "/api/v1/hosts",
                json={
                    "name": "old",
                    "address": "127.0.0.1",
                    "port": old.port,
                    "cluster": "old33",
                    "insecure": True,
                },
            ),
            201,
        )
        reply = api.post("/api/v1/vms", json={**VM, "cluster": "old33"})
        assert reply.status_code == 422 and "below 3.4" in reply.json()["error"]["reason"]
        ok(api.post("/api/v1/vms", json={**VM, "cluster": "old33", "consoles": ["spice"]}), 201)
        vm = ok(api.post("/api/v1/vms/web1/start"))
        assert vm["status"] == "Up"
        dom = old.manager.conn.get().lookupByName("web1")
        assert '"display": "qxl"' in dom.XMLDesc(0)
        monitor(api).cycle()
        assert ok(api.get("/api/v1/vms/web1"))["status"] == "Up"
    finally:
        old.stop()


class ListeningVmManager(VmManager):
    """The test driver's domains have no console ports: this host says VNC listens on 5910."""

    def _stats(self, dom, xml):
        stats = super()._stats(dom, xml)
        if stats["status"] == "Up":
            stats.update(display_stats([LiveConsole(GraphicsType.VNC, 5910, None, "127.0.0.1")]))
        return stats


def test_the_poll_records_console_sessions_whose_events_were_lost(api, tmp_path):
    """The host's graphics events never reach the engine (it does not follow the stream
    here): the clients its stats list correct who holds the console, both ways."""
    host = FakeHost(tmp_path, manager_cls=ListeningVmManager)
    try:
        setup_cluster(api, host)
        ok(api.post("/api/v1/vms", json=VM), 201)
        vm = ok(api.post("/api/v1/vms/web1/start"))
        hub = host.manager.events
        monitor(api).follow_events = False  # its events are lost

        def vnc():
            current = ok(api.get("/api/v1/vms/web1/consoles"))["current"]
            return next(c for c in current if c["protocol"] == "vnc")

        def audit(event):
            return ok(api.get("/api/v1/audit", params={"vm": "web1", "event": event}))

        monitor(api).cycle()
        assert vnc()["holder"] is None
        hub.console_event(vm["id"], "initialize", "vnc", "192.0.2.7", "40000")
        monitor(api).cycle()
        console = vnc()
        assert console["holder"] == "unknown" and console["client_address"] == "192.0.2.7"
        assert console["connected_at"] is not None
        [entry] = audit("console connected")
        assert entry["client_address"] == "192.0.2.7" and "found by polling" in entry["detail"]
        monitor(api).cycle()  # nothing new: nothing written twice
        assert len(audit("console connected")) == 1

        hub.console_event(vm["id"], "disconnect", "vnc", "192.0.2.7", "40000")
        monitor(api).cycle()
        assert vnc()["holder"] is None
        [entry] = audit("console disconnected")
        assert entry["client_address"] == "192.0.2.7"
    finally:
        host.stop()


def test_an_event_and_a_poll_recording_one_session_at_once_write_it_once(api, tmp_path):
    """The graphics event and the monitor's poll both read "nobody holds it" before either
    wrote: only the first to write records the session (one audit entry, not two)."""
    from sqlalchemy import select

    from multiconsole.engine import consoles
    from multiconsole.engine.db import AuditEntry, Vm, now

    host = FakeHost(tmp_path, manager_cls=ListeningVmManager)
    try:
        setup_cluster(api, host)
        ok(api.post("/api/v1/vms", json=VM), 201)
        vm_id = ok(api.post("/api/v1/vms/web1/start"))["id"]
        sessions = api.app.state.sessions
        with sessions() as first, sessions() as second:
            vm_a, vm_b = (s.get(Vm, vm_id) for s in (first, second))
            vnc_a, vnc_b = (next(c for c in v.consoles if c.protocol == "vnc") for v in (vm_a, vm_b))
            assert vnc_a.holder is None and vnc_b.holder is None  # both saw nobody
            consoles._connected(first, vm_a, vnc_a, "192.0.2.7", now())
            first.commit()
            consoles._connected(second, vm_b, vnc_b, "192.0.2.8", now(), "found by polling")
            second.commit()
            assert vnc_b.client_address == "192.0.2.7"  # the first writer's session stands
        with sessions() as s:
            entries = s.scalars(select(AuditEntry).where(AuditEntry.event == "console connected")).all()
            assert [e.client_address for e in entries] == ["192.0.2.7"]
    finally:
        host.stop()
