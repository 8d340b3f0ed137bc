"""Helpers of the unit suite: the agent's real HTTP app on libvirt's test driver."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette suggests httpx2; httpx is what the project pins.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from multiconsole.agent.server import make_app
from multiconsole.agent.vms import VmManager


class Rpc:
    """A JSON-RPC client of one app; `call` returns the whole reply object."""

    def __init__(self, client: TestClient):
        self.client = client
        self._ids = 0

    def post(self, body: Any) -> Any:
        """POST a body (bytes/str sent as is, anything else as JSON); the HTTP response."""
        if not isinstance(body, bytes | str):
            body = json.dumps(body)
        return self.client.post("/jsonrpc", content=body, headers={"content-type": "application/json"})

    def call(self, method: str, params: Any = None) -> dict:
        self._ids += 1
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method}
        if params is not None:
            body["params"] = params
        response = self.post(body)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["id"] == self._ids
        return reply

    def result(self, method: str, params: Any = None) -> Any:
        reply = self.call(method, params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, method: str, params: Any = None) -> dict:
        reply = self.call(method, params)
        assert "result" not in reply, reply
        return reply["error"]


def make_client(manager: VmManager) -> TestClient:
    return TestClient(make_app(manager))


@pytest.fixture
def rpc(manager: VmManager) -> Rpc:
    with make_client(manager) as client:
        yield Rpc(client)
