"""`multiconsole demo` (what `make demo` runs), as a new user would: it ends with a running
VM whose SPICE and VNC consoles accept the printed one-time passwords."""

from __future__ import annotations

import configparser
import os
import re
import signal
import ssl
import subprocess
import sys
import time

import httpx
import libvirt
import pytest

from tests.integration.clients import capture_screen, colours, spice_capture, vnc_capture
from tests.integration.conftest import free_port


def test_demo_runs_a_vm_with_two_ticketed_consoles(tmp_path, system_conn):
    env = {
        **os.environ,
        "MULTICONSOLE_DATA": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path),
        "COLUMNS": "200",
    }
    env.pop("MULTICONSOLE_ADMIN_PASSWORD", None)
    agent_port, engine_port, proxy_port = free_port(), free_port(), free_port()
    out = (tmp_path / "demo.out").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multiconsole.cli",
            "demo",
            "--agent-port",
            str(agent_port),
            "--engine-port",
            str(engine_port),
            "--proxy-port",
            str(proxy_port),
        ],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops the demo" not in (tmp_path / "demo.out").read_text():
            assert proc.poll() is None, (tmp_path / "demo.out").read_text()
            assert time.monotonic() < deadline, "the demo did not come up"
            time.sleep(0.5)
        text = (tmp_path / "demo.out").read_text()
        assert f"Engine: https://127.0.0.1:{engine_port}" in text
        assert f"http://127.0.0.1:{engine_port}" not in text
        # The web UI, over HTTPS checked against the demo's CA.
        assert f"Web UI: https://127.0.0.1:{engine_port}/" in text
        ca = str(tmp_path / "data" / "pki" / "ca-cert.pem")
        verify = ssl.create_default_context(cafile=ca)
        page = httpx.get(f"https://127.0.0.1:{engine_port}/ui/login", verify=verify, timeout=30)
        assert page.status_code == 200 and 'name="password"' in page.text

        # VNC: the command the demo prints.
        m = re.search(r"vncdotool -s ([\d.]+)::(\d+) -p (\S+) capture", text)
        assert m, text
        assert capture_screen(vnc_capture, int(m[2]), m[3], tmp_path / "vnc.png") == 0
        # SPICE: the remote-viewer file the demo wrote.
        vv = configparser.ConfigParser(interpolation=None)
        vv.read(tmp_path / "data" / "demo" / "demo-spice.vv")
        spice = vv["virt-viewer"]
        assert spice["type"] == "spice"
        # SPICE over TLS too: the file names the TLS port, the CA and the host's subject.
        assert int(spice["tls-port"]) > 0 and "BEGIN CERTIFICATE" in spice["ca"]
        assert spice["host-subject"].startswith("O=multiconsole,CN=")
        assert capture_screen(spice_capture, int(spice["port"]), spice["password"], tmp_path / "s.png") == 0
        assert colours(tmp_path / "vnc.png") > 1 and colours(tmp_path / "s.png") > 1

        # The CLI needs no flags afterwards: the demo wrote its settings and the engine's CA, and
        # the CLI checks the engine's certificate against it (no MULTICONSOLE_DATA to find it by).
        env = {k: v for k, v in env.items() if k != "MULTICONSOLE_DATA"}
        env["HOME"] = str(tmp_path / "home")
        cli = subprocess.run(
            [sys.executable, "-m", "multiconsole.cli", "vm", "consoles", "demo", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert '"spice"' in cli.stdout and '"vnc"' in cli.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "demo" not in [d.name() for d in system_conn.listAllDomains() if d.isActive()]


class Demo:
    """`multiconsole demo` in its own data directory, on free ports kept across its runs."""

    def __init__(self, tmp_path):
        self.tmp_path, self.data = tmp_path, tmp_path / "data"
        self.env = {**os.environ, "MULTICONSOLE_DATA": str(self.data), "XDG_CONFIG_HOME": str(tmp_path)}
        self.env["COLUMNS"] = "200"
        self.env.pop("MULTICONSOLE_ADMIN_PASSWORD", None)
        self.ports = [str(free_port()) for _ in range(3)]
        self.runs = 0
        self.proc: subprocess.Popen | None = None

    @property
    def out(self):
        return self.tmp_path / f"demo-{self.runs}.out"

    def start(self) -> str:
        """Run it until it prints its consoles; its output."""
        self.runs += 1
        agent, engine, proxy = self.ports
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "multiconsole.cli", "demo", "--agent-port", agent]
            + ["--engine-port", engine, "--proxy-port", proxy],
            stdin=subprocess.DEVNULL,
            stdout=self.out.open("w"),
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + 180
        while "Ctrl-C stops the demo" not in self.out.read_text():
            assert self.proc.poll() is None, self.out.read_text()
            assert time.monotonic() < deadline, "the demo did not come up:\n" + self.out.read_text()
            time.sleep(0.5)
        return self.out.read_text()

    def processes(self) -> dict[int, str]:
        """Processes of this demo (the demo itself, its engine and agent), by their command line."""
        found = {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            ours = str(self.data) in cmdline or (self.proc is not None and int(entry) == self.proc.pid)
            if "multiconsole.cli" in cmdline and ours:
                found[int(entry)] = cmdline
        return found

    def api(self, text: str) -> httpx.Client:
        password = re.search(r"user admin@internal\s+password (\S+)", text)[1]
        verify = ssl.create_default_context(cafile=str(self.data / "pki" / "ca-cert.pem"))
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.ports[1]}/api/v1",
            auth=("admin@internal", password),
            verify=verify,
            timeout=30,
        )

    def kill_all(self, system_conn) -> None:
        """What a failed test left: its processes, and the VM 'demo' they ran."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for dom in system_conn.listAllDomains():
            if dom.name() == "demo" and self.runs:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


def demo_vm_running(system_conn) -> bool:
    return "demo" in [d.name() for d in system_conn.listAllDomains() if d.isActive()]


def wait_gone(demo: Demo, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while demo.processes():
        assert time.monotonic() < deadline, f"left behind: {demo.processes()}"
        time.sleep(0.5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_the_demo_stops_everything_on_sigterm_and_sighup(tmp_path, system_conn, sig):
    demo = Demo(tmp_path)
    try:
        demo.start()
        assert demo_vm_running(system_conn)
        demo.proc.send_signal(sig)
        demo.proc.wait(90)
        wait_gone(demo)
        assert not demo_vm_running(system_conn)
    finally:
        demo.kill_all(system_conn)


def test_a_demo_after_one_killed_with_its_agent_gone_first_works(tmp_path, system_conn):
    """As after a crash: the demo SIGKILLed, its agent dies, the engine marks the host
    NonResponsive and is stopped later. The next demo stops what is left and comes up."""
    demo = Demo(tmp_path)
    try:
        text = demo.start()
        demo.proc.send_signal(signal.SIGKILL)
        demo.proc.wait(10)
        left = demo.processes()
        agent = next(pid for pid, cmd in left.items() if " agent " in cmd)
        os.kill(agent, signal.SIGKILL)
        with demo.api(text) as api:
            deadline = time.monotonic() + 60
            while api.get("/hosts/local").json()["status"] != "NonResponsive":
                assert time.monotonic() < deadline, "the engine did not mark the host NonResponsive"
                time.sleep(1)
        # The engine is left running: the next demo stops it (it knows its process ids).
        text = demo.start()
        assert re.search(r"VM 'demo' is Up on host local", text), text
        with demo.api(text) as api:
            assert api.get("/vms/demo").json()["status"] == "Up"
        demo.proc.send_signal(signal.SIGINT)
        demo.proc.wait(90)
        wait_gone(demo)
        assert not demo_vm_running(system_conn)
    finally:
        demo.kill_all(system_conn)
