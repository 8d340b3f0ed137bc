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
