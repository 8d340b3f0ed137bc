"""The engine's client of a host agent: JSON-RPC 2.0 over HTTP(S)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx


class AgentCallError(Exception):
    """The agent answered with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: Any = None):
        super().__init__(f"{method}: {message} (code {code})")
        self.method, self.code, self.message, self.data = method, code, message, data


class AgentClient:
    def __init__(self, url: str, timeout: float = 30.0, **httpx_options: Any):
        self.url = url.rstrip("/")
        self._ids = itertools.count(1)
        self._http = httpx.Client(timeout=timeout, **httpx_options)

    def call(self, method: str, **params: Any) -> Any:
        req = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        reply = self._http.post(f"{self.url}/jsonrpc", json=req)
        reply.raise_for_status()
        body = reply.json()
        if "error" in body:
            err = body["error"]
            raise AgentCallError(method, err.get("code", 0), err.get("message", ""), err.get("data"))
        return body["result"]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
