"""Events the agent publishes: VM lifecycle and console (graphics) connections.

libvirt calls back on its own event-loop thread; subscribers are asyncio queues of the
HTTP server, so publishing hops threads with call_soon_threadsafe.

Every event has an id "<boot>-<n>": `boot` is new at each start of the agent, `n` counts
up. The last `replay` events are kept, so a reader that reconnects with the last id it saw
(SSE's Last-Event-ID) gets what it missed; when that id is of another boot (the agent
restarted) or older than the window, the reader is told that events were lost, and
should read the state again (the engine polls the host's stats).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

REPLAY_EVENTS = 1000


@dataclass
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=1000))

    def offer(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            pass  # a stalled reader loses events rather than stalling the host


@dataclass(frozen=True)
class Replay:
    """What a reconnecting reader missed: `events` to send first; `lost` (a reason) when
    some events are gone for good, so the reader must read the state again."""

    events: list[dict]
    lost: str | None = None


class EventHub:
    def __init__(self, replay: int = REPLAY_EVENTS) -> None:
        self.boot = secrets.token_hex(6)
        self.started = time.time()
        self._seq = 0
        self._recent: deque[dict] = deque(maxlen=replay)
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        # vmId -> {(console type, client ip, client port): connect time}
        self._clients: dict[str, dict[tuple[str, str, str], float]] = defaultdict(dict)

    def subscribe(self, last_event_id: str | None = None) -> tuple[Subscriber, Replay]:
        """A new reader, and what it missed since `last_event_id` (None: a first connect,
        nothing to replay). Under one lock with publish: no event is missed or doubled."""
        sub = Subscriber(loop=asyncio.get_running_loop())
        with self._lock:
            self._subscribers.append(sub)
            return sub, self._since(last_event_id)

    def _since(self, last_event_id: str | None) -> Replay:
        if not last_event_id:
            return Replay([])
        boot, _, n = last_event_id.strip().rpartition("-")
        recent = list(self._recent)
        first = recent[0]["seq"] if recent else self._seq + 1
        if boot != self.boot or not n.isdigit() or len(n) > 18 or int(n) > self._seq:
            return Replay(recent, "the agent restarted: events before its start are lost")
        if int(n) < first - 1:
            return Replay(recent, f"event {last_event_id} is older than the agent's last {len(recent)}")
        return Replay([e for e in recent if e["seq"] > int(n)])

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def publish(self, event: dict) -> None:
        closed = []
        with self._lock:
            self._seq += 1
            event = {"id": f"{self.boot}-{self._seq}", "seq": self._seq, "time": time.time(), **event}
            self._recent.append(event)
            for sub in self._subscribers:
                try:
                    sub.loop.call_soon_threadsafe(sub.offer, event)
                except RuntimeError:
                    closed.append(sub)  # its loop is closed
        for sub in closed:
            self.unsubscribe(sub)

    def console_event(self, vm_id: str, phase: str, console: str, ip: str, port: str, **extra) -> None:
        key = (console, ip, port)
        with self._lock:
            clients = self._clients[vm_id]
            if phase == "disconnect":
                clients.pop(key, None)
            elif phase == "initialize":  # authenticated: a client, not just a TCP connection
                clients.setdefault(key, time.time())
        self.publish(
            {
                "event": "graphics",
                "vmId": vm_id,
                "phase": phase,
                "consoleType": console,
                "clientIp": ip,
                "clientPort": port,
                "clients": self.console_clients(vm_id),
                **extra,
            }
        )

    def console_clients(self, vm_id: str) -> list[dict]:
        """Authenticated clients now, one entry per console type and client address.

        SPICE opens one connection per channel; they collapse into one client here.
        """
        with self._lock:
            items = list(self._clients.get(vm_id, {}).items())
        seen: dict[tuple[str, str], float] = {}
        for (console, ip, _port), since in items:
            key = (console, ip)
            seen[key] = min(since, seen.get(key, since))
        return [
            {"type": console, "ipAddress": ip, "since": round(since, 3)}
            for (console, ip), since in sorted(seen.items())
        ]

    def forget(self, vm_id: str) -> None:
        with self._lock:
            self._clients.pop(vm_id, None)
