"""The engine's client of a host agent: JSON-RPC 2.0 over HTTP(S).

Over HTTPS the client presents the engine's certificate, checks the agent's against the
engine's CA, and, when given a fingerprint, checks that the agent presented exactly the
certificate its host enrolled with, before a byte of the request leaves.
"""

from __future__ import annotations

import itertools
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from multiconsole.engine.errors import HostNotResponding
from multiconsole.pki import fingerprint_der, same_fingerprint

EVENTS_TIMEOUT = httpx.Timeout(5.0, read=60.0)
# An image upload: each write may wait (a busy disk), the answer comes after the agent hashed it.
IMAGE_TIMEOUT = httpx.Timeout(30.0, read=600.0)


class AgentCallError(Exception):
    """The agent answered with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: Any = None):
        super().__init__(f"{method}: {message} (code {code})")
        self.method, self.code, self.message, self.data = method, code, message, data


class CertificateMismatch(httpx.ConnectError):
    """The agent's certificate is valid for the engine's CA but not the one its host enrolled with."""

    def __init__(self, host: str, expected: str, presented: str):
        super().__init__(
            f"host {host} presented a certificate that is not the one it enrolled with "
            f"(enrolled {expected}, presented {presented})"
        )
        self.host, self.expected, self.presented = host, expected, presented


class AgentClient:
    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        pin: str | None = None,
        name: str = "",
        slots: threading.Semaphore | None = None,
        slot_wait: float = 1.0,
        **httpx_options: Any,
    ):
        """`ssl_context`: how to reach an https:// agent (CA, engine certificate);
        `pin`: the 'sha256:...' fingerprint the agent's certificate must have;
        `slots`: calls to this host at once (shared by its clients), waited for `slot_wait` s."""
        self.url = url.rstrip("/")
        self.pin = pin
        self.name = name or self.url
        self._slots, self._slot_wait = slots, slot_wait
        self._ids = itertools.count(1)
        if ssl_context is not None:
            httpx_options["verify"] = ssl_context
        self._http = httpx.Client(timeout=timeout, **httpx_options)
        # httpcore calls the trace hook right after each new TLS handshake, before the request.
        self._extensions = {"trace": self._check_peer} if pin else {}

    def _check_peer(self, event: str, info: dict) -> None:
        if event != "connection.start_tls.complete":
            return
        stream = info.get("return_value")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        presented = fingerprint_der(der) if der else "no certificate"
        if not (der and same_fingerprint(presented, self.pin or "")):
            if stream is not None:
                stream.close()
            raise CertificateMismatch(self.name, self.pin or "", presented)

    def call(self, method: str, **params: Any) -> Any:
        if self._slots is None:
            return self._call(method, params)
        if not self._slots.acquire(timeout=self._slot_wait):
            raise HostNotResponding(self.name, "it has not answered the calls it already has")
        try:
            return self._call(method, params)
        finally:
            self._slots.release()

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        req = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        reply = self._http.post(f"{self.url}/jsonrpc", json=req, extensions=self._extensions)
        reply.raise_for_status()
        body = reply.json()
        if "error" in body:
            err = body["error"]
            raise AgentCallError(method, err.get("code", 0), err.get("message", ""), err.get("data"))
        return body["result"]

    @contextmanager
    def events(
        self, last_event_id: str | None = None, timeout: httpx.Timeout = EVENTS_TIMEOUT
    ) -> Iterator[httpx.Response]:
        """The agent's event stream (server-sent events), on this client's connection settings;
        with `last_event_id`, starting with what came after that event."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self._http.stream(
            "GET", f"{self.url}/events", timeout=timeout, headers=headers, extensions=self._extensions
        ) as reply:
            reply.raise_for_status()
            yield reply

    def put_image(self, sha256: str, path: str, size: int, chunk: int = 1 << 20) -> None:
        """Stream an image file to the agent's cache (PUT /images/<sha256>), on this client's
        connection: the same mutual TLS and pinned certificate as JSON-RPC. The agent keeps
        it only if what arrived hashes to `sha256`."""

        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while data := f.read(chunk):
                    yield data

        reply = self._http.put(
            f"{self.url}/images/{sha256}",
            content=body(),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            timeout=IMAGE_TIMEOUT,
            extensions=self._extensions,
        )
        if reply.status_code >= 400:
            try:
                reason = reply.json().get("error", {}).get("message", reply.text)
            except ValueError:
                reason = reply.text
            raise AgentCallError("PUT /images", reply.status_code, str(reason)[:300])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
