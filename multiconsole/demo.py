"""`make demo`: libvirtd, an agent, the engine on SQLite, and a VM 'demo' with SPICE and VNC.

Idempotent: a second run reuses the cluster, host and VM of the first. Ctrl-C, SIGTERM and
SIGHUP (the terminal closed) stop the VM, the engine and the agent. A demo that could not
(killed with SIGKILL) left their process ids in <data dir>/demo.pids: the next run stops them.
"""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from multiconsole.engine import auth, db
from multiconsole.paths import data_dir, private_file
from multiconsole.wire import vvfile

DEMO_VM = {
    "name": "demo",
    "cluster": "Default",
    "memory_mib": 128,
    "vcpus": 1,
    "video": "qxl",
    "consoles": ["spice", "vnc"],
}


class DemoError(SystemExit):
    pass


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: the demo ends as on Ctrl-C."""


PIDS_FILE = "demo.pids"
HOST_UP_SECONDS = 90


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does (its processes are in sessions of
    their own: nobody else stops them). After a SIGHUP the terminal is gone: what the demo
    still prints goes nowhere instead of failing."""

    def handler(signum: int, _frame) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # one stop at a time
        if signum == signal.SIGHUP:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        raise Stopped()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def _is_ours(pid: int) -> bool:
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"multiconsole.cli" in cmdline and str(data_dir()).encode() in b" ".join(cmdline)


def _stop_leftovers(out: Console) -> None:
    """Stop the engine and agent of an earlier demo that was killed before it could."""
    path = data_dir() / PIDS_FILE
    try:
        pids = [int(p) for p in path.read_text().split()]
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _is_ours(pid)]
    for pid in alive:
        out.print(f"demo: stopping process {pid} left by an earlier demo", highlight=False)
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_is_ours(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in alive:
        if _is_ours(pid):
            _kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it ended meanwhile


def _remember(procs: list[subprocess.Popen]) -> None:
    (data_dir() / PIDS_FILE).write_text("".join(f"{p.pid}\n" for p in procs))


def _wait_host_up(api: Api, out: Console, name: str = "local") -> None:
    """The engine re-checks a host it stored as NonResponsive when it starts: wait for it."""
    deadline = time.monotonic() + HOST_UP_SECONDS
    said = None
    while (host := api.find("/hosts", name)) is not None and host["status"] != "Up":
        if host["status"] != said:
            out.print(f"demo: waiting for host '{name}' to be Up (it is {host['status']})", highlight=False)
            said = host["status"]
        if time.monotonic() > deadline:
            raise DemoError(f"demo: host '{name}' is still {host['status']} after {HOST_UP_SECONDS} s")
        time.sleep(0.5)


def _spawn(args: list[str], log_name: str) -> subprocess.Popen:
    log = private_file(data_dir() / log_name)  # owner only, like the database
    # A session of its own: Ctrl-C is ours, we stop the VM before the engine and agent.
    return subprocess.Popen(
        [sys.executable, "-m", "multiconsole.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(url: str, proc: subprocess.Popen, what: str, seconds: float = 90, verify=True) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"demo: the {what} exited (status {proc.returncode}); see {data_dir()}")
        try:
            httpx.get(url, timeout=1, verify=verify)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise DemoError(f"demo: the {what} did not answer at {url}")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _admin_password(db_url: str) -> str:
    """The demo's admin password: the environment's, the CLI settings', or a new one."""
    from multiconsole.client import load_settings

    password = os.environ.get("MULTICONSOLE_ADMIN_PASSWORD") or load_settings().get("password")
    password = password or secrets.token_urlsafe(12)
    engine = db.make_engine(db_url)
    db.migrate(engine)
    with db.sessions(engine)() as session:
        auth.set_password(session, auth.ADMIN, password)
        session.commit()
    engine.dispose()
    return password


def _enrol_local(api: Api, engine_url: str):
    """The demo host's certificate from the engine's CA, in <data dir>/agent-pki: enrolled
    (again) unless the host 'local' already has the certificate found there, not ending soon."""
    from datetime import UTC, datetime, timedelta

    from multiconsole import pki
    from multiconsole.agent.enroll import AGENT_CERT, enroll

    folder = data_dir() / "agent-pki"
    host = api.find("/hosts", "local")
    try:
        cert = (folder / AGENT_CERT).read_bytes()
        fresh = (
            host is not None
            and host.get("cert_fingerprint") == pki.fingerprint(cert)
            and pki.load_cert(cert).not_valid_after_utc - datetime.now(UTC) > timedelta(days=30)
        )
    except (OSError, pki.PkiError):
        fresh = False
    if not fresh:
        t = api("POST", "/hosts/enrollment-tokens", json={"host": "local"})
        enroll(engine_url, t["token"], folder, ["127.0.0.1", "localhost"], ca_fingerprint=t["ca_fingerprint"])
    return folder


def _engine_tls():
    """The engine's client side of TLS (its CA and certificate), to see the demo agent answer."""
    folder = data_dir() / "pki"
    context = ssl.create_default_context(cafile=str(folder / "ca-cert.pem"))
    context.check_hostname = False
    context.load_cert_chain(folder / "engine-cert.pem", folder / "engine-key.pem")
    return context


def _engine_ca():
    """The engine's CA (made here if this is the first run, so that the engine's HTTPS
    certificate can be checked from its first answer on): its certificate file."""
    from multiconsole.pki import CertificateAuthority

    return CertificateAuthority.load_or_create(data_dir() / "pki").cert_path


class Api:
    def __init__(self, url: str, password: str, verify):
        self.http = httpx.Client(
            base_url=f"{url}/api/v1", auth=(auth.ADMIN, password), timeout=120, verify=verify
        )

    def __call__(self, method: str, path: str, **kw) -> dict | list | None:
        reply = self.http.request(method, path, **kw)
        if reply.status_code >= 400:
            err = reply.json().get("error", {})
            raise DemoError(f"demo: {method} {path}: {err.get('message', reply.text)}")
        return reply.json() if reply.content else None

    def find(self, path: str, name: str) -> dict | None:
        return next((x for x in self("GET", path) if x["name"] == name), None)


def run(
    agent_port: int = 54321,
    engine_port: int = 8443,
    proxy_port: int = 6100,
    virt_type: str = "qemu",
    ticket_ttl: int = 600,
):
    out = Console()
    _stop_on_signals()
    _stop_leftovers(out)
    for port, what in ((agent_port, "agent"), (engine_port, "engine"), (proxy_port, "console proxy")):
        if not _port_free(port):
            raise DemoError(f"demo: port {port} for the {what} is taken (an earlier demo still running?)")
    db_url = f"sqlite:///{data_dir() / 'engine.db'}"
    password = _admin_password(db_url)
    engine_url = f"https://127.0.0.1:{engine_port}"
    ca_file = _engine_ca()
    engine_verify = ssl.create_default_context(cafile=str(ca_file))
    procs = [
        _spawn(
            [
                "engine",
                "--db",
                db_url,
                "--listen",
                f"127.0.0.1:{engine_port}",
                "--proxy-port",
                str(proxy_port),
            ],
            "engine.log",
        ),
    ]
    _remember(procs)
    api = None
    try:
        with out.status("starting the engine"):
            _wait(f"{engine_url}/docs", procs[0], "engine", verify=engine_verify)
        from multiconsole.client import remember_ca, save_settings

        # The CLI then checks the engine's certificate with no flags.
        remember_ca(ca_file.read_bytes())
        save_settings(engine_url, auth.ADMIN, password, ca=ca_file)
        api = Api(engine_url, password, engine_verify)
        with out.status("enrolling the host and starting its agent (TLS with client certificates)"):
            pki_dir = _enrol_local(api, engine_url)
            agent = ["agent", "--pki-dir", str(pki_dir), "--listen", f"127.0.0.1:{agent_port}"]
            procs.append(_spawn([*agent, "--virt-type", virt_type], "agent.log"))
            _remember(procs)
            _wait(f"https://127.0.0.1:{agent_port}/health", procs[1], "agent", verify=_engine_tls())
        with out.status("registering the host and the demo VM"):
            if api.find("/clusters", "Default") is None:
                api("POST", "/clusters", json={"name": "Default", "compat_level": "4.7"})
            old = api.find("/hosts", "local")
            if old is not None and not old.get("cert_fingerprint"):
                api("DELETE", "/hosts/local")  # added over plain HTTP by an earlier demo
            if api.find("/hosts", "local") is None:
                api(
                    "POST",
                    "/hosts",
                    json={"name": "local", "address": "127.0.0.1", "port": agent_port, "cluster": "Default"},
                )
            vm = api.find("/vms", "demo")
            if vm is None:
                vm = api("POST", "/vms", json=DEMO_VM)
        with out.status("waiting for host 'local' to be Up"):
            _wait_host_up(api, out)
            if vm["status"] != "Down":
                api("POST", "/vms/demo/stop")
        with out.status("starting the VM 'demo'"):
            vm = api("POST", "/vms/demo/start")
        table = Table(title=f"VM 'demo' is {vm['status']} on host {vm['host']}")
        for col in ("console", "address", "port", "one-time password", "remote-viewer file"):
            table.add_column(col, overflow="fold")
        hints = []
        folder = data_dir() / "demo"
        folder.mkdir(exist_ok=True)
        for console in vm["consoles"]:
            proto = console["protocol"]
            t = api("POST", f"/vms/demo/consoles/{proto}/ticket", json={"ttl": ticket_ttl})
            vv = folder / f"demo-{proto}.vv"
            vv.write_text(vvfile.from_ticket(t))
            vv.chmod(0o600)
            table.add_row(proto.upper(), t["address"], str(t["port"]), t["password"], str(vv))
            hints.append(f"remote-viewer {vv}")
            if proto == "vnc":
                hints.append(
                    f".venv/bin/vncdotool -s {t['address']}::{t['port']} -p {t['password']} capture shot.png"
                )
        out.print(table)
        out.print(
            f"Engine: {engine_url}  (API docs at {engine_url}/docs)  user {auth.ADMIN}  password {password}",
            soft_wrap=True,
            highlight=False,
        )
        out.print(f"Web UI: {engine_url}/  (log in as {auth.ADMIN})", soft_wrap=True, highlight=False)
        out.print(
            "The CLI works with no flags here, e.g. .venv/bin/multiconsole vm consoles demo",
            soft_wrap=True,
            highlight=False,
        )
        out.print(
            f"Connect within {ticket_ttl} s (no desktop? prefix remote-viewer with xvfb-run -a):",
            soft_wrap=True,
        )
        for hint in hints:
            out.print(f"  {hint}", soft_wrap=True, highlight=False)
        out.print(
            f"VNC in the browser: {engine_url}/console/demo (log in as {auth.ADMIN}; the engine's "
            f"certificate is from its own CA, {ca_file}: import that into the browser, or accept the warning "
            f"for {engine_url} and for https://127.0.0.1:{proxy_port} (the console proxy))",
            soft_wrap=True,
            highlight=False,
        )
        out.print("Ctrl-C stops the demo.")
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(1)
            out.print(f"demo: a process exited; logs are in {data_dir()}")
        except KeyboardInterrupt:
            pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # stopping already: let nothing cut it short
        if api is not None:
            try:
                out.print("stopping the demo VM")
            except OSError:
                pass  # no terminal any more
            try:
                api("POST", "/vms/demo/stop")
            except (DemoError, httpx.HTTPError):
                pass
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        (data_dir() / PIDS_FILE).unlink(missing_ok=True)
