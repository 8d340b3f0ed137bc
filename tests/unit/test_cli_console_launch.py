"""`multiconsole console VM --open` and `--browser`: what is launched, with what, and what is left.

A real engine and agent (the stack of test_cli.py) run a VM on libvirt's test driver. That
driver has neither console ports nor updateDeviceFlags, so the host side gets two seams: the
live consoles get fixed ports, and the device update QEMU would get is recorded instead
(it holds the password the host set). remote-viewer and the web browser are fake
executables on an otherwise empty PATH: the real ones on this machine are never found.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import shlex
import stat
import sys
import tempfile
import time
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
import libvirt
import pytest

from multiconsole.agent import domxml
from multiconsole.agent.server import make_app as make_agent_app
from multiconsole.agent.vms import VmManager
from multiconsole.domain.devices import GraphicsType
from multiconsole.engine.app import Settings, make_app
from tests.conftest import TEST_DRIVER_XML
from tests.unit.test_cli import ENV_VARS, PASSWORD, USER, Served, Stack, cli, cli_json, mc

VM = "launch"
# (port, TLS port) the fake host reports for each console.
PORTS = {GraphicsType.SPICE: (5900, 5901), GraphicsType.VNC: (5902, None)}


@dataclasses.dataclass
class Host:
    stack: Stack
    # Graphics device XML passed to updateDeviceFlags: one per ticket set on the host.
    updates: list[str]

    def passwords(self) -> list[tuple[str, str]]:
        out = []
        for xml in self.updates:
            el = ElementTree.fromstring(xml)
            out.append((el.get("type"), el.get("passwd")))
        return out


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Iterator[Host]:
    tmp = tmp_path_factory.mktemp("launch")
    node = tmp / "node.xml"
    node.write_text(TEST_DRIVER_XML)
    updates: list[str] = []
    real_live_consoles = domxml.live_consoles

    def live_consoles(xml: str):
        return [
            dataclasses.replace(c, port=PORTS[c.type][0], tls_port=PORTS[c.type][1]) if c.port < 0 else c
            for c in real_live_consoles(xml)
        ]

    def update_device_flags(dom, xml: str, flags: int = 0) -> int:
        assert flags == libvirt.VIR_DOMAIN_AFFECT_LIVE
        updates.append(xml)
        return 0

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(domxml, "live_consoles", live_consoles)
        mp.setattr(libvirt.virDomain, "updateDeviceFlags", update_device_flags)
        manager = VmManager(f"test://{node}")
        agent = Served(make_agent_app(manager))
        engine = Served(
            make_app(
                Settings(
                    db_url=f"sqlite:///{tmp / 'engine.db'}",
                    admin_password=PASSWORD,
                    monitor=False,
                    proxy_port=None,
                )
            )
        )
        stack = Stack(engine, agent)
        mp.setenv("XDG_CONFIG_HOME", str(tmp / "config"))
        for var in ENV_VARS:
            mp.delenv(var, raising=False)
        cli(stack, "cluster", "add", "c1", "--level", "4.7", "--arch", "x86_64")
        cli(stack, "host", "add", "h1", f"127.0.0.1:{agent.port}", "--cluster", "c1", "--insecure")
        cli(stack, "vm", "create", VM, "--cluster", "c1", "--console", "spice", "--console", "vnc")
        cli(stack, "vm", "start", VM)
        try:
            yield Host(stack, updates)
        finally:
            engine.stop()
            agent.stop()
            manager.conn.close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """No settings or MULTICONSOLE_* of the developer's; an empty PATH (the fakes' directory),
    no display, no BROWSER; a temp dir of our own, so whatever is left in it is seen."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("NO_COLOR", "1")
    for var in (*ENV_VARS, "BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    # webbrowser reads BROWSER and looks for browsers once per process: make it look again
    # now, and forget what it found afterwards.
    monkeypatch.setattr(webbrowser, "_tryorder", None)
    monkeypatch.setattr(webbrowser, "_browsers", {})
    return bin_dir


def fake(bin_dir: Path, name: str, body: str) -> Path:
    """An executable Python script `name` in `bin_dir`."""
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}")
    path.chmod(0o755)
    return path


def write_record(out: Path) -> str:
    """Python lines that write `record` as JSON to `out`, atomically (the test polls for it)."""
    return (
        f"with open({str(out) + '.part'!r}, 'w') as f:\n"
        "    json.dump(record, f)\n"
        f"os.rename({str(out) + '.part'!r}, {str(out)!r})\n"
    )


def fake_viewer(bin_dir: Path, out: Path) -> Path:
    """remote-viewer that records its argv, and how the file it got is and what it holds."""
    return fake(
        bin_dir,
        "remote-viewer",
        "st = os.stat(sys.argv[-1])\n"
        "record = {'argv': sys.argv, 'mode': st.st_mode, 'uid': st.st_uid,\n"
        "          'text': open(sys.argv[-1]).read(), 'sid': os.getsid(0), 'pid': os.getpid()}\n"
        + write_record(out),
    )


def wait_for(path: Path, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never written: the fake was not run"
        time.sleep(0.02)
    return json.loads(path.read_text())


def vv_keys(text: str) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    assert parser.sections() == ["virt-viewer"]
    return dict(parser["virt-viewer"])


# --- --open ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["vnc", "spice"])
def test_open_starts_remote_viewer_with_a_private_file(host, isolated, tmp_path, protocol):
    viewer = fake_viewer(isolated, tmp_path / "viewer.json")
    before = len(host.updates)
    result = cli(host.stack, "console", VM, "--protocol", protocol, "--open", "--json")
    t = json.loads(result.stdout)
    got = wait_for(tmp_path / "viewer.json")

    # Started once, with the file only: no password on its command line (ps shows that).
    vv = Path(t["file"])
    assert got["argv"] == [str(viewer), str(vv)]
    assert t["password"] not in " ".join(got["argv"])
    # In its own session, so it outlives the CLI and ^C in the terminal.
    assert got["sid"] == got["pid"] != os.getsid(0)

    # The file: in the temp dir, the user's own, readable by nobody else.
    assert vv.parent == Path(tempfile.gettempdir()) and vv.suffix == ".vv"
    assert stat.S_IMODE(got["mode"]) == 0o600 and got["uid"] == os.getuid()

    keys = vv_keys(got["text"])
    port, tls_port = PORTS[GraphicsType(protocol)]
    assert keys["type"] == protocol
    assert keys["host"] == t["address"] == "127.0.0.1"
    assert int(keys["port"]) == t["port"] == port
    assert keys.get("tls-port") == (str(tls_port) if tls_port else None)
    assert keys["title"] == f"{VM}:%d"
    # The one-time password: 8 characters, the one the engine just had the host set.
    assert keys["password"] == t["password"] and len(t["password"]) == 8
    assert host.passwords()[before:] == [(protocol, t["password"])]

    # remote-viewer deletes the file once read (delete-this-file); the CLI leaves it to it,
    # since the viewer reads it after the CLI has returned.
    assert keys["delete-this-file"] == "1"
    assert vv.exists() and stat.S_IMODE(vv.stat().st_mode) == 0o600
    assert list(Path(tempfile.gettempdir()).iterdir()) == [vv]


def test_open_says_so_without_json(host, isolated, tmp_path):
    fake_viewer(isolated, tmp_path / "viewer.json")
    result = cli(host.stack, "console", VM, "--protocol", "vnc", "--open")
    got = wait_for(tmp_path / "viewer.json")
    password = vv_keys(got["text"])["password"]
    assert result.stdout.strip() == f"remote-viewer opened for {VM}"
    assert password not in result.stdout


@pytest.mark.parametrize("take_over", [False, True])
def test_open_without_remote_viewer_is_an_error_before_any_ticket(host, take_over):
    before = len(host.updates)
    args = ["console", VM, "--open", *(["--take-over"] if take_over else [])]
    result = cli(host.stack, *args, ok=False)
    assert result.exit_code == 2
    assert "error: remote-viewer is not installed" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and result.stdout == ""
    # No password was set on the host (nor anybody disconnected) for a viewer that is not there.
    assert host.updates[before:] == []
    assert list(Path(tempfile.gettempdir()).iterdir()) == []


def test_open_with_a_broken_remote_viewer(host, isolated):
    # Found on PATH, but it cannot be run (its interpreter is missing).
    viewer = isolated / "remote-viewer"
    viewer.write_text("#!/nonexistent/interpreter\n")
    viewer.chmod(0o755)
    result = cli(host.stack, "console", VM, "--open", ok=False)
    assert result.exit_code == 1
    assert f"error: cannot run {viewer}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # The file with the password is not left behind.
    assert list(Path(tempfile.gettempdir()).iterdir()) == []


# --- --browser ------------------------------------------------------------------------------


def fake_browser(monkeypatch, bin_dir: Path, out: Path, exit_code: int = 0) -> Path:
    """A web browser that records its argv and exits with `exit_code`, named by $BROWSER."""
    body = "record = {'argv': sys.argv}\n" + write_record(out) + f"sys.exit({exit_code})\n"
    path = fake(bin_dir, "fake-browser", body)
    monkeypatch.setenv("BROWSER", shlex.quote(str(path)))
    return path


def test_browser_opens_the_engines_console_page(host, isolated, tmp_path, monkeypatch):
    browser = fake_browser(monkeypatch, isolated, tmp_path / "browser.json")
    before = len(host.updates)
    result = cli(host.stack, "console", VM, "--protocol", "vnc", "--browser")
    got = wait_for(tmp_path / "browser.json")
    url = f"{host.stack.url}/console/{VM}"
    assert got["argv"] == [str(browser), url]
    assert result.stdout.strip() == f"opening {url}"
    # No password, token or ticket in the URL: the page asks the engine for a one-time
    # ticket itself, as the logged-in user. The CLI issued none.
    parts = urlsplit(url)
    assert (parts.query, parts.fragment, parts.username, parts.password) == ("", "", None, None)
    assert PASSWORD not in url and host.updates[before:] == []
    # It is the engine's noVNC page for that VM (behind the user's login).
    page = httpx.get(url, auth=(USER, PASSWORD))
    assert page.status_code == 200 and "novnc" in page.text.lower()
    assert httpx.get(url).status_code == 401


def test_browser_json_and_take_over(host, isolated, tmp_path, monkeypatch):
    fake_browser(monkeypatch, isolated, tmp_path / "browser.json")
    out = cli_json(host.stack, "console", VM, "--protocol", "vnc", "--browser", "--take-over")
    got = wait_for(tmp_path / "browser.json")
    assert got["argv"][1:] == [out["url"]] == [f"{host.stack.url}/console/{VM}?take_over=true"]
    page = httpx.get(out["url"], auth=(USER, PASSWORD))
    assert page.status_code == 200 and 'data-take-over="true"' in page.text


def test_browser_is_vnc_only(host, isolated, tmp_path, monkeypatch):
    fake_browser(monkeypatch, isolated, tmp_path / "browser.json")
    result = cli(host.stack, "console", VM, "--browser", ok=False)  # --protocol spice by default
    assert result.exit_code == 2 and "use --protocol vnc" in result.stderr
    assert not (tmp_path / "browser.json").exists()
    result = mc("console", VM, "--protocol", "vnc", "--browser", "--open")
    assert result.exit_code == 2 and "choose one of" in result.stderr


def test_browser_that_cannot_be_started(host, isolated, tmp_path, monkeypatch):
    fake_browser(monkeypatch, isolated, tmp_path / "browser.json", exit_code=1)
    result = cli(host.stack, "console", VM, "--protocol", "vnc", "--browser", ok=False)
    assert (tmp_path / "browser.json").exists()  # it was tried
    url = f"{host.stack.url}/console/{VM}"
    assert result.exit_code == 1
    assert f"error: no web browser could be started: open {url} yourself" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
