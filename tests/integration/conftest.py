"""Real libvirt/QEMU (qemu:///system), a real agent process, real console clients."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import libvirt
import pytest

from multiconsole.engine.broker import AgentCallError, AgentClient
from tests.support.servers import free_port

pytestmark = pytest.mark.integration
SYSTEM_URI = "qemu:///system"


class AgentProcess:
    """`multiconsole agent` as its own process, as an engine would reach it."""

    def __init__(self, log_dir: Path, uri: str = SYSTEM_URI, port: int | None = None, extra: tuple = ()):
        self.uri = uri
        self.extra = [str(a) for a in extra]  # more `multiconsole agent` options
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"agent-{self.port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "multiconsole.cli",
                "agent",
                "--insecure",
                "--verbose",
                "--libvirt-uri",
                self.uri,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--virt-type",
                "qemu",
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("agent did not start")

    def kill(self, sig: int = 9) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def client(self) -> AgentClient:
        return AgentClient(self.url)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def system_conn():
    try:
        conn = libvirt.open(SYSTEM_URI)
    except libvirt.libvirtError as err:
        pytest.fail(f"libvirtd is not running ({err}); run scripts/setup.sh")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def agent_proc(log_dir, system_conn):
    proc = AgentProcess(log_dir).start()
    yield proc
    proc.kill(15)


@pytest.fixture
def agent(agent_proc):
    with agent_proc.client() as client:
        yield client


class Vms:
    """Creates VMs with unique names and destroys them all at the end, in parallel."""

    def __init__(self, client: AgentClient):
        self.client = client
        self.ids: list[str] = []

    def params(self, *consoles: str, video: str = "qxl", order=None, **extra) -> dict:
        vm_id = str(uuid.uuid4())
        devices = [{"type": "video", "device": video, "specParams": {}}]
        devices += [{"type": "graphics", "device": c, "specParams": {}} for c in consoles]
        return {
            "vmId": vm_id,
            "vmName": f"it-{vm_id[:8]}",
            "memSize": 64,
            "devices": devices,
            **extra,
        }

    def create(self, params: dict) -> dict:
        vm_id = params.get("vmId") or str(uuid.uuid4())
        self.ids.append(vm_id)
        return self.client.call("VM.create", vmID=vm_id, vmParams=params)["vmList"]

    def destroy_all(self) -> None:
        def destroy(vm_id):
            try:
                with AgentClient(self.client.url) as c:
                    c.call("VM.destroy", vmID=vm_id)
            except (AgentCallError, httpx.HTTPError):
                pass

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(destroy, self.ids))


@pytest.fixture
def vms(agent):
    v = Vms(agent)
    yield v
    v.destroy_all()


def ports(stats: dict) -> dict[str, int]:
    return {d["type"]: int(d["port"]) for d in stats["displayInfo"]}


def ticket(client: AgentClient, vm_id: str, console: str, password: str, ttl: int = 60, **kw) -> None:
    client.call(
        "VM.updateDevice",
        vmID=vm_id,
        params={
            "deviceType": "graphics",
            "graphicsType": console,
            "password": password,
            "ttl": ttl,
            **kw,
        },
    )


os.environ.setdefault("PYTHONWARNINGS", "ignore")
