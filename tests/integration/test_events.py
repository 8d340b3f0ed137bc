"""Console and lifecycle events from libvirt, on the agent's event stream and in stats."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time

import httpx
from vncdotool import api as vnc_api

from tests.integration.conftest import ports, ticket


class EventReader:
    """Reads the agent's server-sent events on a thread."""

    def __init__(self, url: str):
        self.events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        threading.Thread(target=self._run, args=(url,), daemon=True).start()
        assert self._ready.wait(10), "event stream did not open"

    def _run(self, url: str) -> None:
        try:
            with httpx.stream("GET", f"{url}/events", timeout=None) as reply:
                for line in reply.iter_lines():
                    self._ready.set()
                    if self._stop.is_set():
                        return
                    if line.startswith("data: "):
                        self.events.put(json.loads(line[6:]))
        except httpx.HTTPError:
            pass  # the agent went away: the test is over

    def wait_for(self, seconds: float = 15, **match) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if all(event.get(k) == v for k, v in match.items()):
                return event
        raise AssertionError(f"no event matching {match}")

    def close(self) -> None:
        self._stop.set()


def test_console_connect_and_disconnect_events(agent_proc, agent, vms, tmp_path):
    stats = vms.create(vms.params("spice", "vnc"))
    vm_id, p = stats["vmId"], ports(stats)
    reader = EventReader(agent_proc.url)
    try:
        # A TCP connection that never authenticates: an event, but not a console client.
        sock = socket.create_connection(("127.0.0.1", p["vnc"]))
        assert sock.recv(12).startswith(b"RFB ")
        event = reader.wait_for(vmId=vm_id, event="graphics", phase="connect")
        assert event["consoleType"] == "vnc" and event["clientIp"] == "127.0.0.1"
        assert agent.call("VM.getStats", vmID=vm_id)[0]["consoleClients"] == []
        sock.close()
        reader.wait_for(vmId=vm_id, event="graphics", phase="disconnect", consoleType="vnc")

        # A real client with a ticket, held open: initialize (authenticated), listed in stats.
        ticket(agent, vm_id, "vnc", "evtpass1")
        client = vnc_api.connect(f"127.0.0.1::{p['vnc']}", password="evtpass1", timeout=10)
        try:
            client.captureScreen(str(tmp_path / "v.png"))
            event = reader.wait_for(vmId=vm_id, event="graphics", phase="initialize", consoleType="vnc")
            assert [(c["type"], c["ipAddress"]) for c in event["clients"]] == [("vnc", "127.0.0.1")]
            clients = agent.call("VM.getStats", vmID=vm_id)[0]["consoleClients"]
            assert [(c["type"], c["ipAddress"]) for c in clients] == [("vnc", "127.0.0.1")]
        finally:
            client.disconnect()
        event = reader.wait_for(vmId=vm_id, event="graphics", phase="disconnect", consoleType="vnc")
        assert event["clients"] == []
        assert agent.call("VM.getStats", vmID=vm_id)[0]["consoleClients"] == []

        agent.call("VM.destroy", vmID=vm_id)
        reader.wait_for(vmId=vm_id, event="lifecycle", status="Down")
    finally:
        reader.close()
