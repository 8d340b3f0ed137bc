"""`make demo`: an agent on local libvirt/QEMU and a VM named 'demo' with SPICE and VNC."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import uuid

import httpx
from rich.console import Console
from rich.table import Table

from multiconsole.domain.devices import GraphicsType
from multiconsole.engine.broker import AgentCallError, AgentClient
from multiconsole.paths import data_dir
from multiconsole.wire.stats import consoles_from_stats
from multiconsole.wire.vvfile import ViewerFile, render

DEMO_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "multiconsole:demo"))
DEMO_PARAMS = {
    "vmId": DEMO_ID,
    "vmName": "demo",
    "memSize": 128,
    "smp": "1",
    "devices": [
        {"type": "video", "device": "qxl", "specParams": {"vram": "32768", "heads": "1"}},
        {"type": "graphics", "device": "spice", "specParams": {"keyMap": "en-us"}},
        {"type": "graphics", "device": "vnc", "specParams": {"keyMap": "en-us"}},
    ],
}


def _wait_for_agent(url: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the agent exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("demo: the agent did not answer in time")


def _open_consoles(agent: AgentClient, stats: dict, ticket_ttl: int) -> list[tuple]:
    """Give each console a password and a remote-viewer file; rows for the table."""
    folder = data_dir() / "demo"
    folder.mkdir(exist_ok=True)
    rows = []
    for console in consoles_from_stats(stats, "127.0.0.1"):
        password = secrets.token_urlsafe(6)[:8]
        agent.call(
            "VM.updateDevice",
            vmID=DEMO_ID,
            params={
                "deviceType": "graphics",
                "graphicsType": console.protocol.value,
                "password": password,
                "ttl": ticket_ttl,
            },
        )
        vv = folder / f"demo-{console.protocol.value}.vv"
        vv.write_text(
            render(
                ViewerFile(
                    protocol=console.protocol,
                    host=console.address,
                    port=console.port,
                    password=password,
                    ttl=ticket_ttl,
                    title="demo",
                    tls_port=console.tls_port,
                )
            )
        )
        vv.chmod(0o600)
        rows.append((console, password, vv))
    return rows


def run(agent_port: int, virt_type: str, ticket_ttl: int) -> None:
    out = Console()
    url = f"http://127.0.0.1:{agent_port}"
    cmd = [sys.executable, "-m", "multiconsole.cli", "agent", "--insecure"]
    cmd += ["--listen", f"127.0.0.1:{agent_port}", "--virt-type", virt_type]
    # Ctrl-C is ours: we destroy the VM first, then stop the agent.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_agent(url, proc)
        with AgentClient(url) as agent:
            try:
                agent.call("VM.destroy", vmID=DEMO_ID)  # left over from an earlier demo
            except AgentCallError:
                pass
            caps = agent.call("Host.getCapabilities")
            stats = agent.call("VM.create", vmID=DEMO_ID, vmParams=DEMO_PARAMS)["vmList"]
            table = Table(
                title=f"VM 'demo' is {stats['status']} ({caps['virtType']}, "
                f"libvirt {caps['libvirtVersion']}, QEMU {caps['qemuVersion']})"
            )
            for col in ("console", "address", "port", "password", "remote-viewer file"):
                table.add_column(col, overflow="fold")
            hints = []
            for console, password, vv in _open_consoles(agent, stats, ticket_ttl):
                table.add_row(
                    console.protocol.value.upper(),
                    console.address,
                    str(console.port),
                    password,
                    str(vv),
                )
                hints.append(f"remote-viewer {vv}")
                if console.protocol == GraphicsType.VNC:
                    hints.append(
                        f".venv/bin/vncdotool -s {console.address}::{console.port} "
                        f"-p {password} capture shot.png"
                    )
            out.print(table)
            out.print("Connect with (no desktop here? prefix remote-viewer with xvfb-run -a):")
            for hint in hints:
                out.print(f"  {hint}", soft_wrap=True, highlight=False)
            out.print(
                f"Agent: {url}/jsonrpc (schema at {url}/jsonrpc/schema). "
                f"Passwords are valid for {ticket_ttl} s. Ctrl-C stops the demo.",
                soft_wrap=True,
            )
            try:
                while proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                out.print("stopping the demo VM")
            try:
                agent.call("VM.destroy", vmID=DEMO_ID)
            except (AgentCallError, httpx.HTTPError):
                pass
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
