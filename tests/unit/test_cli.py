"""The CLI over the REST API: a real engine (SQLite) and a real agent (libvirt's test driver),
both served by uvicorn on 127.0.0.1, driven through `multiconsole ...` with typer's CliRunner."""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from multiconsole import client as client_mod
from multiconsole.agent.server import make_app as make_agent_app
from multiconsole.agent.vms import VmManager
from multiconsole.cli import app
from multiconsole.cli_engine import Run, render_consoles, split_address
from multiconsole.client import resolve, save_settings, settings_path
from multiconsole.engine.app import Settings, make_app
from tests.conftest import TEST_DRIVER_XML

PASSWORD = "cli-test-secret"
USER = "admin@internal"
ENV_VARS = ("MULTICONSOLE_URL", "MULTICONSOLE_USER", "MULTICONSOLE_PASSWORD")


class Served:
    """An ASGI app served by uvicorn in a thread, on a socket bound before it starts."""

    def __init__(self, asgi_app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(asgi_app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self.thread.is_alive(), "uvicorn died"
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


@dataclass
class Stack:
    engine: Served
    agent: Served

    @property
    def url(self) -> str:
        return self.engine.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli")
    node = tmp / "node.xml"
    node.write_text(TEST_DRIVER_XML)
    manager = VmManager(f"test://{node}")
    agent = Served(make_agent_app(manager))
    engine = Served(
        make_app(
            # No websocket proxy: its port 6100 may be taken by another run.
            Settings(
                db_url=f"sqlite:///{tmp / 'engine.db'}",
                admin_password=PASSWORD,
                monitor=False,
                proxy_port=None,
            )
        )
    )
    yield Stack(engine, agent)
    engine.stop()
    agent.stop()
    manager.conn.close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    """No settings file of the developer's, no MULTICONSOLE_* of theirs; wide tables."""
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return config


runner = CliRunner()


def mc(*args: str):
    """`multiconsole ARGS` as is: no connection options added."""
    return runner.invoke(app, list(args))


def cli(stack: Stack, *args: str, ok: bool = True):
    """`multiconsole ARGS --engine URL --user U --password P`, asserting success if `ok`."""
    result = mc(*args, "--engine", stack.url, "--user", USER, "--password", PASSWORD)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        assert result.stderr == ""
    return result


def cli_json(stack: Stack, *args: str):
    result = cli(stack, *args, "--json")
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cluster(stack: Stack) -> str:
    """Cluster c1 with host h1 (the test-driver agent), both added through the CLI."""
    out = cli(stack, "cluster", "add", "c1", "--level", "4.7", "--arch", "x86_64").stdout
    assert "c1" in out and "4.7" in out
    out = cli(
        stack, "host", "add", "h1", f"127.0.0.1:{stack.agent.port}", "--cluster", "c1", "--insecure"
    ).stdout
    assert "h1" in out and f"127.0.0.1:{stack.agent.port}" in out
    return "c1"


# --- the whole road ------------------------------------------------------------------------


def test_cluster_and_host_listed(stack, cluster):
    clusters = cli_json(stack, "cluster", "list")
    assert [c["name"] for c in clusters] == ["c1"]
    host = cli_json(stack, "host", "show", "h1")
    assert (host["address"], host["port"], host["cluster"], host["status"]) == (
        "127.0.0.1",
        stack.agent.port,
        "c1",
        "Up",
    )
    table = cli(stack, "host", "list").stdout
    assert "h1" in table and "Up" in table


def test_vm_with_two_consoles_start_edit_stop(stack, cluster):
    out = cli(
        stack,
        "vm",
        "create",
        "two",
        "--cluster",
        "c1",
        "--memory",
        "512",
        "--cpus",
        "2",
        "--video",
        "qxl",
        "--console",
        "spice",
        "--console",
        "vnc",
        "--keyboard-layout",
        "de",
        "--no-copy-paste",
    ).stdout
    assert "spice, vnc" in out

    vms = {vm["name"]: vm for vm in cli_json(stack, "vm", "list")}
    vm = vms["two"]
    assert vm["status"] == "Down"
    assert (vm["memory_mib"], vm["vcpus"]) == (512, 2)
    assert vm["display"]["consoles"] == ["spice", "vnc"]
    assert vm["display"]["video"] == "qxl"
    assert vm["display"]["keyboard_layout"] == "de"
    assert vm["display"]["copy_paste"] is False

    out = cli(stack, "vm", "start", "two").stdout
    assert "two is Up on host h1" in out

    out = cli(stack, "vm", "consoles", "two").stdout
    assert "consoles spice, vnc" in out
    assert "at the next start" not in out

    # Editing a running VM: the console change waits for the next start.
    out = cli(stack, "vm", "edit", "two", "--console", "vnc").stdout
    assert "waits for its next start" in out
    assert "consoles: spice, vnc -> vnc" in out
    consoles = cli_json(stack, "vm", "consoles", "two")
    assert [c["protocol"] for c in consoles["configured"]] == ["spice", "vnc"]
    assert consoles["next_run"] == [{"protocol": "vnc"}]
    assert "at the next start: consoles vnc" in cli(stack, "vm", "consoles", "two").stdout
    assert "changes pending" in cli(stack, "vm", "list").stdout

    stopped = cli_json(stack, "vm", "stop", "two")
    assert stopped["status"] == "Down" and stopped["consoles"] == []
    # The next start brings the edited consoles.
    started = cli_json(stack, "vm", "start", "two")
    assert started["display"]["consoles"] == ["vnc"] and started["next_run"] is None
    cli(stack, "vm", "stop", "two")
    assert "VM two removed" in cli(stack, "vm", "remove", "two").stdout


def test_edit_of_stopped_vm_applies_now(stack, cluster):
    cli(stack, "vm", "create", "cold", "--cluster", "c1", "--console", "vnc")
    out = cli(stack, "vm", "edit", "cold", "--memory", "1024", "--console", "spice").stdout
    assert "VM cold updated" in out and "next start" not in out
    vm = cli_json(stack, "vm", "show", "cold")
    assert vm["memory_mib"] == 1024 and vm["display"]["consoles"] == ["spice"] and vm["next_run"] is None
    assert vm["display"]["video"] == "qxl"  # the engine picks the video SPICE needs


def test_template_consoles_inherited(stack, cluster):
    t = cli_json(
        stack,
        "template",
        "create",
        "desk",
        "--cluster",
        "c1",
        "--memory",
        "768",
        "--console",
        "spice",
        "--console",
        "vnc",
        "--keyboard-layout",
        "fr",
    )
    assert t["display"]["consoles"] == ["spice", "vnc"] and t["cluster"] == "c1"
    assert "desk" in cli(stack, "template", "list").stdout

    vm = cli_json(stack, "vm", "create", "from-desk", "--cluster", "c1", "--template", "desk")
    assert vm["template"] == "desk"
    assert vm["display"]["consoles"] == ["spice", "vnc"]
    assert (vm["display"]["keyboard_layout"], vm["memory_mib"]) == ("fr", 768)
    out = cli(stack, "vm", "show", "from-desk").stdout
    assert "desk" in out and "spice, vnc" in out


def test_headless_vm(stack, cluster):
    vm = cli_json(stack, "vm", "create", "headless", "--cluster", "c1", "--no-console")
    assert vm["display"]["consoles"] == [] and vm["display"]["video"] == "none"
    result = mc("vm", "create", "both", "--cluster", "c1", "--console", "vnc", "--no-console")
    assert result.exit_code == 2 and "exclude each other" in result.stderr


def test_invalid_combination_creates_nothing(stack, cluster):
    result = cli(
        stack, "vm", "create", "bad", "--cluster", "c1", "--console", "spice", "--video", "vga", ok=False
    )
    assert result.exit_code == 1
    assert "error: video: SPICE needs QXL video" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "bad" not in [vm["name"] for vm in cli_json(stack, "vm", "list")]


def test_not_found_and_json_on_refusal(stack, cluster):
    result = cli(stack, "vm", "start", "nosuchvm", "--json", ok=False)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: vm: no VM 'nosuchvm'" in result.stderr


# --- where to connect, as whom -------------------------------------------------------------


def test_settings_file(stack, cluster, isolated):
    path = save_settings(stack.url, USER, PASSWORD)
    assert path == isolated / "multiconsole" / "cli.json" == settings_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    result = mc("cluster", "list", "--json")
    assert result.exit_code == 0, result.stderr
    assert [c["name"] for c in json.loads(result.stdout)] == ["c1"]


def test_environment(stack, cluster, monkeypatch):
    monkeypatch.setenv("MULTICONSOLE_URL", stack.url)
    monkeypatch.setenv("MULTICONSOLE_USER", USER)
    monkeypatch.setenv("MULTICONSOLE_PASSWORD", PASSWORD)
    # A settings file with a wrong password loses to the environment.
    save_settings(stack.url, USER, "wrong")
    result = mc("vm", "list", "--json")
    assert result.exit_code == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)
    # ... and flags win over the environment.
    result = mc("vm", "list", "--json", "--password", "wrong")
    assert result.exit_code == 1


def test_wrong_password(stack, cluster):
    result = mc("cluster", "list", "--engine", stack.url, "--password", "nope")
    assert result.exit_code == 1
    assert "error: wrong user name or password" in result.stderr
    assert f"user {USER} on {stack.url}" in result.stderr
    assert result.stdout == ""


def test_no_password(stack, cluster):
    result = mc("cluster", "list", "--engine", stack.url)
    assert result.exit_code == 1
    assert "error: log in" in result.stderr and "--password" in result.stderr


def test_unreachable_engine():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = mc("vm", "list", "--json", "--engine", url, "--password", "x")
    assert result.exit_code == 2
    assert f"error: cannot reach the engine at {url}" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_resolution_order(isolated):
    file = {"url": "http://saved:8080", "user": "saver", "password": "saved-pw"}
    env = {
        "MULTICONSOLE_URL": "envhost:9000",
        "MULTICONSOLE_USER": "envuser",
        "MULTICONSOLE_PASSWORD": "env-pw",
    }
    assert resolve(environ={}, settings={}) == client_mod.Connection("https://127.0.0.1:8443", USER, None)
    assert resolve(environ={}, settings=file) == client_mod.Connection(
        "http://saved:8080", "saver", "saved-pw"
    )
    assert resolve(environ=env, settings=file) == client_mod.Connection(
        "https://envhost:9000", "envuser", "env-pw"
    )
    assert resolve("http://flag/api/v1/", "flaguser", "flag-pw", environ=env, settings=file) == (
        client_mod.Connection("http://flag", "flaguser", "flag-pw")
    )
    # The file's credentials stay with the file's engine and user.
    assert resolve("http://elsewhere", environ={}, settings=file) == (
        client_mod.Connection("http://elsewhere", USER, None)
    )
    assert resolve(user="other", environ={}, settings=file).password is None
    # A broken settings file is an error, not a traceback.
    path = settings_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    result = mc("vm", "list")
    assert result.exit_code == 1 and "is not valid JSON" in result.stderr


def test_split_address():
    assert split_address("10.0.0.5") == ("10.0.0.5", None)
    assert split_address("node1:5000") == ("node1", 5000)
    assert split_address("[fd00::1]:5000") == ("fd00::1", 5000)
    assert split_address("fd00::1") == ("fd00::1", None)
    result = mc("host", "add", "h9", "node:notaport", "--cluster", "c1")
    assert result.exit_code == 2 and "not a port" in result.stderr


def test_consoles_table_shows_listening_ports():
    """The test driver never gives ports; what a host running QEMU reports looks like this."""
    run = Run(None, None, None, False)
    with run.console.capture() as captured:
        render_consoles(
            run,
            {
                "vm": "web",
                "status": "Up",
                "configured": [{"protocol": "spice"}, {"protocol": "vnc"}],
                "current": [
                    {"protocol": "spice", "address": "192.0.2.7", "port": 5900, "tls_port": 5901},
                    {"protocol": "vnc", "address": "192.0.2.7", "port": 5902, "tls_port": None},
                ],
                "next_run": [{"protocol": "vnc"}],
            },
        )
    text = captured.get()
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "Protocol Address Port TLS port" in lines
    assert "spice 192.0.2.7 5900 5901" in lines
    assert "vnc 192.0.2.7 5902 -" in lines
    assert "at the next start: consoles vnc" in lines
