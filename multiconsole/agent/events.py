"""Events the agent publishes: VM lifecycle and console (graphics) connections.

libvirt calls back on its own event-loop thread; subscribers are asyncio queues of the
HTTP server, so publishing hops threads with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=1000))

    def offer(self, event: dict) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            pass  # a stalled reader loses events rather than stalling the host


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        # vmId -> {(console type, client ip, client port): connect time}
        self._clients: dict[str, dict[tuple[str, str, str], float]] = defaultdict(dict)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(loop=asyncio.get_running_loop())
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def publish(self, event: dict) -> None:
        event = {"time": time.time(), **event}
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, event)
            except RuntimeError:
                self.unsubscribe(sub)  # its loop is closed

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
