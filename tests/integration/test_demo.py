"""`multiconsole demo` (what `make demo` runs), as a new user would: it ends with a running
VM that has booted the demo guest (tiny-linux) to a shell, whose SPICE and VNC consoles accept
the printed one-time passwords and which takes the text typed into it.

A user's own `make demo` may run on this machine meanwhile: every test names its VM
`demo-<random>` (`--vm-name`) and cleans up only that domain."""

from __future__ import annotations

import configparser
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import libvirt
import pytest

from multiconsole.demo import GUEST_IMAGE
from tests.integration.clients import capture_screen, colours, ocr, spice_capture, vnc_capture
from tests.integration.conftest import free_port

pytestmark = pytest.mark.skipif(
    not GUEST_IMAGE.is_file(),
    reason=f"the demo guest image {GUEST_IMAGE} is not built (scripts/build-guest.sh)",
)
# Seconds for a demo to come up: engine, agent, upload and the guest's boot under TCG.
UP_SECONDS = 360


def test_demo_boots_a_vm_with_two_ticketed_consoles_and_takes_typing(tmp_path, system_conn):
    demo = Demo(tmp_path)
    try:
        text = demo.start()
        engine_port = demo.ports[1]
        # The guest really booted: the demo waited for its shell, and says what to type.
        booted = re.search(rf"VM '{demo.vm}' has booted Linux to a root shell in (\d+) s", text)
        assert booted, text
        print(f"demo VM booted to its shell in {booted[1]} s")
        assert f"console {demo.vm} --type $'echo hello\\n'" in text
        assert "Paste as keystrokes" in text
        assert f"Engine: https://127.0.0.1:{engine_port}" in text
        assert f"http://127.0.0.1:{engine_port}" not in text
        # The web UI, over HTTPS checked against the demo's CA.
        assert f"Web UI: https://127.0.0.1:{engine_port}/" in text
        ca = str(demo.data / "pki" / "ca-cert.pem")
        verify = ssl.create_default_context(cafile=ca)
        page = httpx.get(f"https://127.0.0.1:{engine_port}/ui/login", verify=verify, timeout=30)
        assert page.status_code == 200 and 'name="password"' in page.text

        with demo.api(text) as api:
            vm = api.get(f"/vms/{demo.vm}").json()
            assert vm["template"] == "tiny-linux" and vm["display"]["video"] == "qxl"
            assert sorted(vm["display"]["consoles"]) == ["spice", "vnc"]
            assert vm["display"]["keyboard_layout"] == "en-us" and vm["memory_mib"] >= 128
            assert [d["image"]["name"] for d in vm["drives"]["disks"]] == ["tiny-linux"]
            # Typed through the engine, read back from the guest's screen.
            typed = api.post(f"/vms/{demo.vm}/keys", json={"text": "echo $((6*7))\n"})
            assert typed.status_code < 300, typed.text
            assert "42" in screen_lines(api, demo.vm, tmp_path, lambda lines: "42" in lines)

        # VNC: the command the demo prints.
        m = re.search(r"vncdotool -s ([\d.]+)::(\d+) -p (\S+) capture", text)
        assert m, text
        assert capture_screen(vnc_capture, int(m[2]), m[3], tmp_path / "vnc.png") == 0
        # SPICE: the remote-viewer file the demo wrote.
        vv = configparser.ConfigParser(interpolation=None)
        vv.read(demo.data / "demo" / f"{demo.vm}-spice.vv")
        spice = vv["virt-viewer"]
        assert spice["type"] == "spice"
        # SPICE over TLS too: the file names the TLS port, the CA and the host's subject.
        assert int(spice["tls-port"]) > 0 and "BEGIN CERTIFICATE" in spice["ca"]
        assert spice["host-subject"].startswith("O=multiconsole,CN=")
        assert capture_screen(spice_capture, int(spice["port"]), spice["password"], tmp_path / "s.png") == 0
        assert colours(tmp_path / "vnc.png") > 1 and colours(tmp_path / "s.png") > 1

        # The CLI needs no flags afterwards: the demo wrote its settings and the engine's CA, and
        # the CLI checks the engine's certificate against it (no MULTICONSOLE_DATA to find it by).
        env = {k: v for k, v in demo.env.items() if k != "MULTICONSOLE_DATA"}
        env["HOME"] = str(tmp_path / "home")
        cli = subprocess.run(
            [sys.executable, "-m", "multiconsole.cli", "vm", "consoles", demo.vm, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert '"spice"' in cli.stdout and '"vnc"' in cli.stdout
        demo.proc.send_signal(signal.SIGINT)
        demo.proc.wait(90)
        wait_gone(demo)
        assert not demo.vm_running(system_conn)
    finally:
        demo.kill_all(system_conn)


def screen_lines(api: httpx.Client, vm: str, tmp_path, want, seconds: float = 60) -> list[str]:
    """The guest's screen (the engine's screenshot route) read by OCR, line by line, until
    `want(lines)` holds or `seconds` pass; the last reading."""
    deadline = time.monotonic() + seconds
    n = 0
    while True:
        n += 1
        shot = api.get(f"/vms/{vm}/screenshot.png")
        assert shot.status_code == 200, shot.text
        png = tmp_path / f"screen-{n}.png"
        png.write_bytes(shot.content)
        lines = [line.strip() for line in ocr(png).splitlines()]
        if want(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(2)


class Demo:
    """`multiconsole demo` in its own data directory, on free ports kept across its runs."""

    def __init__(self, tmp_path):
        # The data directory holds the VM's disk: QEMU (libvirt-qemu) must be able to reach it,
        # and pytest's tmp dirs are private to root.
        self.base = Path(tempfile.mkdtemp(prefix="mc-demo-", dir="/var/tmp"))
        self.base.chmod(0o755)
        self.tmp_path, self.data = tmp_path, self.base / "data"
        self.env = {**os.environ, "MULTICONSOLE_DATA": str(self.data), "XDG_CONFIG_HOME": str(tmp_path)}
        self.env["COLUMNS"] = "200"
        self.env.pop("MULTICONSOLE_ADMIN_PASSWORD", None)
        self.ports = [str(free_port()) for _ in range(3)]
        self.vm = f"demo-{secrets.token_hex(4)}"  # never the user's own 'demo'
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
            + ["--engine-port", engine, "--proxy-port", proxy, "--vm-name", self.vm],
            stdin=subprocess.DEVNULL,
            stdout=self.out.open("w"),
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + UP_SECONDS
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
        """What a failed test left: its processes, and its own VM (no other)."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for dom in system_conn.listAllDomains():
            if dom.name() == self.vm and self.runs:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        shutil.rmtree(self.base, ignore_errors=True)

    def vm_running(self, system_conn) -> bool:
        return self.vm in [d.name() for d in system_conn.listAllDomains() if d.isActive()]


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
        assert demo.vm_running(system_conn)
        demo.proc.send_signal(sig)
        demo.proc.wait(90)
        wait_gone(demo)
        assert not demo.vm_running(system_conn)
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
        assert f"VM '{demo.vm}' is Up on host local" in text, text
        with demo.api(text) as api:
            assert api.get(f"/vms/{demo.vm}").json()["status"] == "Up"
        demo.proc.send_signal(signal.SIGINT)
        demo.proc.wait(90)
        wait_gone(demo)
        assert not demo.vm_running(system_conn)
    finally:
        demo.kill_all(system_conn)


def test_a_second_demo_uploads_nothing_and_replaces_a_disk_less_vm(tmp_path, system_conn):
    """A data directory of an older demo: its VM has no disk (it showed the BIOS). The next
    demo keeps the image it uploaded, and gives the VM the guest's disk so that it boots."""
    demo = Demo(tmp_path)
    try:
        text = demo.start()
        with demo.api(text) as api:
            assert api.post(f"/vms/{demo.vm}/stop").status_code < 300
            edited = api.patch(f"/vms/{demo.vm}", json={"disks": [], "boot": []})
            assert edited.status_code < 300, edited.text
            assert api.get(f"/vms/{demo.vm}").json()["drives"]["disks"] == []
            first = api.get("/images").json()
        demo.proc.send_signal(signal.SIGTERM)
        demo.proc.wait(90)
        wait_gone(demo)

        text = demo.start()
        assert re.search(rf"VM '{demo.vm}' has booted Linux to a root shell in \d+ s", text), text
        with demo.api(text) as api:
            assert api.get("/images").json() == first  # not uploaded again
            vm = api.get(f"/vms/{demo.vm}").json()
            assert vm["status"] == "Up" and vm["template"] == "tiny-linux"
            assert [d["image"]["name"] for d in vm["drives"]["disks"]] == ["tiny-linux"]
        demo.proc.send_signal(signal.SIGTERM)
        demo.proc.wait(90)
        wait_gone(demo)
        assert not demo.vm_running(system_conn)
    finally:
        demo.kill_all(system_conn)
