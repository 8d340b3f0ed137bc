"""The agent's event stream over real HTTP: event ids, and what a reader missed replayed on
reconnect (SSE Last-Event-ID), or a `reset` when that cannot be done."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from multiconsole.agent.events import EventHub
from multiconsole.agent.server import make_app
from multiconsole.agent.vms import VmManager
from tests.support.servers import ThreadServer


@pytest.fixture
def served(test_uri):
    manager = VmManager(test_uri, events=EventHub(replay=5))
    server = ThreadServer(make_app(manager)).start()
    yield manager, server.url
    server.stop()
    manager.conn.close()


def read(url: str, count: int, last_event_id: str | None = None) -> list[tuple[str | None, dict]]:
    """The first `count` events of one connection: (id line, data)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[tuple[str | None, dict]] = []
    event_id = None
    with httpx.stream("GET", f"{url}/events", headers=headers, timeout=5) as reply:
        for line in reply.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                out.append((event_id, json.loads(line[6:])))
                event_id = None
                if len(out) == count:
                    return out
    raise AssertionError(f"the stream ended after {out}")


def subscribed(manager: VmManager) -> None:
    deadline = time.monotonic() + 10
    while not manager.events._subscribers:
        assert time.monotonic() < deadline, "the reader did not subscribe"
        time.sleep(0.01)


def publish(manager: VmManager, n: int) -> None:
    for i in range(n):
        manager.events.publish({"event": "lifecycle", "vmId": f"vm-{i}", "status": "Up"})


def test_a_reconnecting_reader_gets_what_it_missed(served):
    manager, url = served
    publish(manager, 2)
    # A first connection (no Last-Event-ID) starts with what comes next.
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(read(url, 1)))
    reader.start()
    subscribed(manager)
    publish(manager, 1)
    reader.join(10)
    [(first_id, first)] = got
    assert first_id == first["id"] and first_id.startswith(manager.events.boot + "-")
    assert first["vmId"] == "vm-0"  # the third event published

    # Gone for two events: back with the last id seen, both come first, in order, nothing lost.
    publish(manager, 2)
    events = read(url, 2, last_event_id=first_id)
    assert [e["event"] for _, e in events] == ["lifecycle", "lifecycle"]
    assert [e["vmId"] for _, e in events] == ["vm-0", "vm-1"]
    assert [int(i.rsplit("-", 1)[1]) for i, _ in events] == [4, 5]


def test_an_unknown_or_too_old_id_says_events_were_lost(served):
    manager, url = served
    publish(manager, 3)
    # An id of an earlier boot of the agent (it restarted): reset first, then all it has.
    events = read(url, 4, last_event_id="0123456789ab-2")
    (reset_id, reset), *rest = events
    assert reset_id is None and reset["event"] == "reset" and "restarted" in reset["reason"]
    assert [int(i.rsplit("-", 1)[1]) for i, _ in rest] == [1, 2, 3]
    # Nonsense: the same.
    for bad in (f"{manager.events.boot}-" + "9" * 5000, "x", f"{manager.events.boot}-1e3"):
        assert read(url, 1, last_event_id=bad)[0][1]["event"] == "reset"
    # Older than the window of 5 events: reset, then the window.
    publish(manager, 5)
    events = read(url, 6, last_event_id=f"{manager.events.boot}-1")
    assert events[0][1]["event"] == "reset" and "older" in events[0][1]["reason"]
    assert [int(i.rsplit("-", 1)[1]) for i, _ in events[1:]] == [4, 5, 6, 7, 8]
    # The newest id: nothing to replay, the next event is the next one published.
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(read(url, 1, f"{manager.events.boot}-8")))
    reader.start()
    time.sleep(0.5)  # subscribed or not, event 9 reaches it (published or replayed)
    publish(manager, 1)
    reader.join(10)
    assert got[0][0] == f"{manager.events.boot}-9"
