"""How the engine reaches host agents: one client per host, mutual TLS or (--insecure) plain HTTP.

A host with an enrolled certificate is reached at https://address:port: the engine
presents its client certificate, checks the agent's against the engine's CA (not its
host name: the pin below is stronger), and checks that the agent presented exactly
the certificate that host enrolled with. A host added as insecure is reached over
plain HTTP.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from multiconsole.engine.broker import AgentClient
from multiconsole.engine.db import Host
from multiconsole.engine.errors import HostNotResponding
from multiconsole.pki import CertificateAuthority

AGENT_TIMEOUT = 30.0
# Requests' calls to one host at once, and how long one more waits for its turn before it
# answers 503: a hung host ties up this many request threads, never all of them.
HOST_CALLS = 4
HOST_WAIT = 1.0


class TlsUnavailable(httpx.ConnectError):
    """A host needs TLS but this engine was set up without its certificates."""


@dataclass(frozen=True)
class EngineTls:
    """What the engine needs to reach agents over TLS: the CA, its client certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def from_ca(cls, ca: CertificateAuthority) -> EngineTls:
        cert, key = ca.engine_identity()
        return cls(ca.cert_path, cert, key)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The agent's certificate is pinned by fingerprint; its names need not match the address.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


class Agents:
    """Clients by (address, port, pinned certificate): plain HTTP, or TLS when pinned.

    With `per_host` (the requests' clients), at most that many calls go to one host at once
    and a host the monitor found NonResponsive is not called at all: both answer 503 at once
    (HostNotResponding). The monitor's own clients have no such limit: it must reach every host.
    """

    def __init__(
        self,
        timeout: float = AGENT_TIMEOUT,
        tls: EngineTls | None = None,
        per_host: int | None = None,
        wait: float = HOST_WAIT,
        image_store=None,
    ):
        self._timeout = timeout
        self.tls = tls
        self.per_host = per_host
        self._wait = wait
        # The engine's images (engine/images.py ImageStore), which hosts get before a VM starts.
        self.image_store = image_store
        self._context: ssl.SSLContext | None = None
        self._clients: dict[tuple[str, str, int], AgentClient] = {}
        self._slots: dict[tuple[str, int], threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()

    @staticmethod
    def url(address: str, port: int, tls: bool = False) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{'https' if tls else 'http'}://{host}:{port}"

    def for_address(
        self, address: str, port: int, fingerprint: str | None = None, name: str = ""
    ) -> AgentClient:
        """The client of the agent at address:port: over TLS, pinned, when `fingerprint` is
        the certificate the host enrolled with; plain HTTP when None."""
        key = (fingerprint or "", address, port)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._new(address, port, fingerprint, name)
            return self._clients[key]

    def for_host(self, host: Host) -> AgentClient:
        if self.per_host is not None and host.status == "NonResponsive":
            raise HostNotResponding(host.name, "its last polls failed")
        return self.for_address(host.address, host.port, host.cert_fingerprint, host.name)

    def _limit(self, address: str, port: int) -> dict:
        """The call limit shared by every client of one host (None: no limit)."""
        if self.per_host is None:
            return {}
        slots = self._slots.setdefault((address, port), threading.BoundedSemaphore(self.per_host))
        return {"slots": slots, "slot_wait": self._wait}

    def _new(self, address: str, port: int, fingerprint: str | None, name: str) -> AgentClient:
        limit = self._limit(address, port)
        if fingerprint is None:
            return AgentClient(
                self.url(address, port), timeout=self._timeout, name=name or f"{address}:{port}", **limit
            )
        if self.tls is None:
            raise TlsUnavailable(f"host {name or address} needs TLS, and this engine has no certificates")
        if self._context is None:
            self._context = self.tls.client_context()
        return AgentClient(
            self.url(address, port, tls=True),
            timeout=self._timeout,
            ssl_context=self._context,
            pin=fingerprint,
            name=name or f"{address}:{port}",
            **limit,
        )

    def forget(self, address: str, port: int) -> None:
        """Close the clients of an agent (a removed host, a new certificate)."""
        with self._lock:
            for key in [k for k in self._clients if k[1:] == (address, port)]:
                self._clients.pop(key).close()

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
