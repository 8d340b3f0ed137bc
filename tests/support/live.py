"""A real engine served by uvicorn in a thread, and a real agent process on libvirt's test driver:
for tests about concurrency and faults, where TestClient (one request at a time) will not do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from multiconsole.engine.app import Settings, make_app
from tests.conftest import TEST_DRIVER_XML
from tests.support.servers import ThreadServer, free_port

ADMIN = ("admin@internal", "admin-pw")


class LiveEngine:
    """The engine app under uvicorn (its lifespan runs: the monitor when asked)."""

    def __init__(self, db_url: str, **settings):
        settings.setdefault("monitor", False)
        settings.setdefault("proxy_port", None)
        settings.setdefault("proxy_key_file", os.path.join(tempfile.mkdtemp(prefix="mc-key-"), "proxy.key"))
        settings.setdefault("pki_dir", tempfile.mkdtemp(prefix="mc-pki-"))
        self.app = make_app(Settings(db_url=db_url, admin_password=ADMIN[1], **settings))
        self.server = ThreadServer(self.app)

    def start(self) -> LiveEngine:
        self.server.start()
        return self

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, auth=ADMIN, token: str | None = None, **options) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        return httpx.Client(
            base_url=self.url, auth=None if token else auth, headers=headers, timeout=60, **options
        )

    def token(self, name: str, password: str) -> str:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            reply = c.post("/api/v1/login", json={"name": name, "password": password})
            assert reply.status_code == 200, reply.text
            return reply.json()["token"]

    def stop(self) -> None:
        self.server.stop()
        self.app.state.db_engine.dispose()
        if hasattr(self.app.state, "monitor_db_engine"):
            self.app.state.monitor_db_engine.dispose()


class TestDriverAgent:
    """`multiconsole agent --insecure` as its own process (which SIGSTOP can hang) on a fresh
    libvirt test-driver host."""

    __test__ = False

    def __init__(self, tmp_path: Path):
        self.node = tmp_path / f"agent-host-{uuid.uuid4().hex[:8]}.xml"
        self.node.write_text(TEST_DRIVER_XML)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"agent-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> TestDriverAgent:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "multiconsole.cli",
                "agent",
                "--insecure",
                "--libvirt-uri",
                f"test://{self.node}",
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the agent did not start")

    def hang(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
