"""How the engine reaches host agents: one client per host, plain HTTP or mutual TLS."""

from __future__ import annotations

import threading

from multiconsole.engine.broker import AgentClient
from multiconsole.engine.db import Host

AGENT_TIMEOUT = 30.0


class Agents:
    """Clients by host id; swapped for TLS clients when the security work lands."""

    def __init__(self, timeout: float = AGENT_TIMEOUT):
        self._timeout = timeout
        self._clients: dict[tuple[str, str, int], AgentClient] = {}
        self._lock = threading.Lock()

    @staticmethod
    def url(address: str, port: int) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{port}"

    def for_address(self, address: str, port: int) -> AgentClient:
        key = ("", address, port)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = AgentClient(self.url(address, port), timeout=self._timeout)
            return self._clients[key]

    def for_host(self, host: Host) -> AgentClient:
        return self.for_address(host.address, host.port)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
