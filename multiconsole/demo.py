"""`make demo`: libvirtd, an agent, the engine on SQLite, and a VM 'demo' with SPICE and VNC
that boots the demo guest (tiny-linux, scripts/build-guest.sh) to a root shell.

Idempotent: a second run reuses the cluster, host, image, template and VM of the first (a
disk-less VM 'demo' of an older demo is replaced). Ctrl-C, SIGTERM and
SIGHUP (the terminal closed) stop the VM, the engine and the agent. A demo that could not
(killed with SIGKILL) left their process ids in <data dir>/demo.pids: the next run stops them.
"""

from __future__ import annotations

import hashlib
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
from rich.panel import Panel
from rich.table import Table

from multiconsole.engine import auth, db
from multiconsole.paths import data_dir, private_file
from multiconsole.wire import vvfile

GUEST_DIR = Path(os.environ.get("MULTICONSOLE_GUEST_DIR", "/var/cache/multiconsole/guest"))
GUEST_IMAGE = GUEST_DIR / "tiny-linux.img"
IMAGE_NAME = TEMPLATE_NAME = "tiny-linux"
# The guest needs 128 MiB at least; a little more keeps its page cache out of the way.
TEMPLATE = {
    "name": TEMPLATE_NAME,
    "cluster": "Default",
    "description": "the demo guest: a Debian kernel and busybox, a root shell on tty1 and ttyS0",
    "os_type": "other_linux",
    "memory_mib": 192,
    "vcpus": 1,
    "video": "qxl",
    "consoles": ["spice", "vnc"],
    "keyboard_layout": "en-us",
    "boot": ["disk"],
}
# Seconds to wait for the guest's shell: about 20-30 s under TCG here, more on a busy machine.
BOOT_SECONDS = 240


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _guest_image(api: Api) -> dict:
    """The demo guest's disk image on the engine: uploaded once (found again by its sha256);
    a rebuilt image gets a name of its own, the older one stays for the VMs that use it."""
    if not GUEST_IMAGE.is_file():
        raise DemoError(
            f"demo: the demo guest image {GUEST_IMAGE} is missing; build it with: bash scripts/build-guest.sh"
        )
    sha = _sha256(GUEST_IMAGE)
    images = api("GET", "/images")
    found = next((i for i in images if i["sha256"] == sha), None)
    if found is not None:
        return found
    name = IMAGE_NAME if all(i["name"] != IMAGE_NAME for i in images) else f"{IMAGE_NAME}-{sha[:12]}"

    def body():
        with GUEST_IMAGE.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    size = GUEST_IMAGE.stat().st_size
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    return api("POST", "/images", params={"name": name, "format": "raw"}, content=body(), headers=headers)


def _template(api: Api, image: dict) -> dict:
    """The template 'tiny-linux': made if missing; its disk follows the current image."""
    template = api.find("/templates", TEMPLATE_NAME)
    disks = [{"image": image["id"]}]
    if template is None:
        return api("POST", "/templates", json={**TEMPLATE, "disks": disks})
    current = [(d.get("image") or {}).get("id") for d in template["drives"]["disks"]]
    if current != [image["id"]]:
        template = api("PATCH", f"/templates/{TEMPLATE_NAME}", json={"disks": disks, "boot": ["disk"]})
    return template


def _demo_vm(api: Api, name: str) -> dict:
    """The VM from the template; one without a disk (an older demo's) is replaced."""
    vm = api.find("/vms", name)
    if vm is not None and not vm["drives"]["disks"]:
        if vm["status"] != "Down":
            api("POST", f"/vms/{name}/stop")
        api("DELETE", f"/vms/{name}")
        vm = None
    if vm is None:
        vm = api("POST", "/vms", json={"name": name, "cluster": "Default", "template": TEMPLATE_NAME})
    return vm


def run(
    agent_port: int = 54321,
    engine_port: int = 8443,
    proxy_port: int = 6100,
    virt_type: str = "qemu",
    ticket_ttl: int = 600,
    vm_name: str = "demo",
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
        with out.status("registering the host"):
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
        size = GUEST_IMAGE.stat().st_size >> 20 if GUEST_IMAGE.is_file() else 0
        with out.status(f"uploading the guest's disk image {GUEST_IMAGE} ({size} MiB) unless it is there"):
            image = _guest_image(api)
        out.print(f"demo: image '{image['name']}' (sha256 {image['sha256'][:16]}...)", highlight=False)
        with out.status(f"making the template '{TEMPLATE_NAME}' and the VM '{vm_name}' from it"):
            _template(api, image)
            vm = _demo_vm(api, vm_name)
        with out.status("waiting for host 'local' to be Up"):
            _wait_host_up(api, out)
            if vm["status"] != "Down":
                api("POST", f"/vms/{vm_name}/stop")
        with out.status(f"starting the VM '{vm_name}'"):
            started = time.monotonic()
            vm = api("POST", f"/vms/{vm_name}/start")
        with out.status(f"VM '{vm_name}' is {vm['status']}: waiting for its shell on the serial port"):
            from multiconsole.guest_shell import wait_for_shell

            booted = wait_for_shell(vm["id"], vm_name, BOOT_SECONDS)
        seconds = time.monotonic() - started
        if booted:
            state = f"has booted Linux to a root shell in {seconds:.0f} s"
        elif booted is None:
            state = "is booting (its serial port cannot be read here: give it about 30 s)"
        else:
            state = f"is still booting after {seconds:.0f} s (a busy machine?): its screen shows how far"
        out.print(f"demo: VM '{vm_name}' {state}", highlight=False)
        table = Table(title=f"VM '{vm_name}' is {vm['status']} on host {vm['host']}")
        for col in ("console", "address", "port", "one-time password", "remote-viewer file"):
            table.add_column(col, overflow="fold")
        hints = []
        folder = data_dir() / "demo"
        folder.mkdir(exist_ok=True)
        for console in vm["consoles"]:
            proto = console["protocol"]
            t = api("POST", f"/vms/{vm_name}/consoles/{proto}/ticket", json={"ttl": ticket_ttl})
            vv = folder / f"{vm_name}-{proto}.vv"
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
            f"The CLI works with no flags here, e.g. .venv/bin/multiconsole vm consoles {vm_name}",
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
            f"VNC in the browser: {engine_url}/console/{vm_name} (log in as {auth.ADMIN}; the engine's "
            f"certificate is from its own CA, {ca_file}: import that into the browser, or accept the warning "
            f"for {engine_url} and for https://127.0.0.1:{proxy_port} (the console proxy))",
            soft_wrap=True,
            highlight=False,
        )
        _what_now(out, vm_name, state, engine_url)
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
                api("POST", f"/vms/{vm_name}/stop")
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


def _what_now(out: Console, vm_name: str, state: str, engine_url: str) -> None:
    """The block that tells a new user what to do with the running guest."""
    cli = ".venv/bin/multiconsole"
    lines = [
        f"[bold]The VM '{vm_name}' {state}.[/bold] It runs tiny-linux (Debian's kernel and busybox,",
        f"keyboard layout en-us) and shows a banner with its name and the prompt '{vm_name}:/root# '.",
        "",
        "[bold]Look at it[/bold] with a console above: remote-viewer with a .vv file (SPICE or VNC),",
        "a VNC viewer with the VNC password, or the browser console (VNC) - all at once if you like.",
        "",
        "[bold]Type into it[/bold] (sent as key presses, no console or agent in the guest needed):",
        f"  {cli} console {vm_name} --type $'echo hello\\n'      (a new line is Enter)",
        f"  {cli} console {vm_name} --type 'uname -a' && {cli} console {vm_name} --key enter",
        f'  or in the web UI ({engine_url}/): "Paste as keystrokes" under the browser console',
        "  or beside each console in the VMs list.",
        "Then look again: the guest echoes what you typed and runs it. What it writes under /data stays.",
    ]
    out.print(Panel("\n".join(lines), title="what to do now", expand=False), highlight=False)
