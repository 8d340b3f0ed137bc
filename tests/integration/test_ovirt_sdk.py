"""ovirt-engine-sdk-python, unchanged, against our engine and a real agent on QEMU (issue 7).

The SDK talks to a uvicorn-served engine over the network as it would to oVirt; the engine's
own /api/v1 (httpx) only sets up what the SDK cannot (cluster, host, template, users).
At the end the SDK's own examples, fetched from its source distribution on PyPI, run against
us with only their connection parameters changed.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from multiconsole.engine.app import Settings, make_app
from tests.integration.clients import capture_screen, vnc_capture
from tests.support.servers import ThreadServer

sdk = pytest.importorskip(
    "ovirtsdk4", reason="ovirt-engine-sdk-python is not installed (pip install -e '.[test]')"
)
types = pytest.importorskip("ovirtsdk4.types")

pytestmark = pytest.mark.integration
ADMIN = ("admin@internal", "it-ovirt-admin-pw")
SDK_VERSION = "4.6.3"
# Keys of a .vv file (reference §7) every console has, and those SPICE adds.
VV_KEYS = {
    "type",
    "host",
    "port",
    "password",
    "delete-this-file",
    "fullscreen",
    "title",
    "toggle-fullscreen",
    "release-cursor",
    "secure-attention",
}
SPICE_VV_KEYS = {"enable-smartcard", "enable-usb-autoshare"}


class Engine:
    """The engine served in a thread; `api` is its /api/v1 as the admin.

    HTTPS as a real engine serves it: the certificate from its CA (engine/https.py), which the
    SDK checks with `ca_file=<pki>/ca-cert.pem`; `https=False`: plain HTTP, `insecure=True`."""

    def __init__(self, tmp: Path, https: bool = False):
        settings = Settings(
            db_url=f"sqlite:///{tmp / 'engine.db'}",
            admin_password=ADMIN[1],
            monitor=False,
            proxy_port=None,
            proxy_key_file=str(tmp / "proxy.key"),
            pki_dir=str(tmp / "pki"),
        )
        if https:
            settings.https = True
        app = make_app(settings)
        tls = {}
        self.ca_file: str | None = None
        if https:
            tls = {"ssl_certfile": str(app.state.tls.cert_path), "ssl_keyfile": str(app.state.tls.key_path)}
            self.ca_file = str(tmp / "pki" / "ca-cert.pem")
        self.server = ThreadServer(app, **tls).start()
        self.url = self.server.url
        verify = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True
        self.api = httpx.Client(base_url=self.url, auth=ADMIN, timeout=120, verify=verify)

    def connect(self, username: str = ADMIN[0], password: str = ADMIN[1]):
        tls = {"ca_file": self.ca_file} if self.ca_file else {"insecure": True}
        return sdk.Connection(url=f"{self.url}/ovirt-engine/api", username=username, password=password, **tls)

    def ok(self, reply: httpx.Response, status: int = 200):
        assert reply.status_code == status, reply.text
        return reply.json() if reply.content else None

    def close(self) -> None:
        for vm in self.ok(self.api.get("/api/v1/vms")):
            if vm["status"] != "Down":
                self.api.post(f"/api/v1/vms/{vm['id']}/stop")
        self.api.close()
        self.server.stop()


@pytest.fixture(scope="module")
def engine(agent_proc, tmp_path_factory):
    # MULTICONSOLE_OVIRT_TEST_HTTP=1: the same tests over plain HTTP (the SDK with insecure=True).
    e = Engine(
        tmp_path_factory.mktemp("ovirt-engine"), https=os.environ.get("MULTICONSOLE_OVIRT_TEST_HTTP") != "1"
    )
    e.ok(e.api.post("/api/v1/clusters", json={"name": "Default", "compat_level": "4.7"}), 201)
    e.ok(
        e.api.post(
            "/api/v1/hosts",
            json={
                "name": "it-ovirt-host",
                "address": "127.0.0.1",
                "port": agent_proc.port,
                "cluster": "Default",
                "insecure": True,
            },
        ),
        201,
    )
    yield e
    e.close()


@pytest.fixture(scope="module")
def conn(engine):
    c = engine.connect()
    yield c
    c.close()


def unique(prefix: str) -> str:
    return f"it-ovirt-{prefix}-{uuid.uuid4().hex[:6]}"


def make_template(engine: Engine, consoles: list[str], video: str = "qxl") -> str:
    name = unique("tpl")
    engine.ok(
        engine.api.post(
            "/api/v1/templates",
            json={"name": name, "cluster": "Default", "memory_mib": 64, "video": video, "consoles": consoles},
        ),
        201,
    )
    return name


def add_vm(conn, name: str, template: str):
    return (
        conn.system_service()
        .vms_service()
        .add(
            types.Vm(
                name=name,
                cluster=types.Cluster(name="Default"),
                template=types.Template(name=template),
                memory=64 * 2**20,
            )
        )
    )


def protocols(consoles) -> list[str]:
    return sorted(c.protocol.value for c in consoles)


def test_connect_list_and_search(engine, conn):
    assert conn.test(raise_exception=True)
    api = conn.system_service().get()
    assert api.product_info.version.major == 4
    name = unique("list")
    add_vm(conn, name, make_template(engine, ["spice"]))
    vms_service = conn.system_service().vms_service()
    assert name in [v.name for v in vms_service.list()]
    found = vms_service.list(search=f"name={name}")
    assert [v.name for v in found] == [name]
    assert found[0].status == types.VmStatus.DOWN
    assert found[0].cluster.id == conn.system_service().clusters_service().list()[0].id
    assert vms_service.list(search="name=it-ovirt-no-such-vm") == []
    # Every reference the SDK reads can be followed back to us.
    vm = found[0]
    assert conn.follow_link(vm.cluster).name == "Default"
    assert conn.follow_link(vm.template).name.startswith("it-ovirt-tpl-")
    assert vm.memory == 64 * 2**20 and vm.cpu.topology.sockets == 1 and vm.os.type == "other"
    [host] = conn.system_service().hosts_service().list(search="name=it-ovirt-host")
    assert host.status == types.HostStatus.UP and host.cluster.id == vm.cluster.id
    assert name in [v.name for v in vms_service.list(search="name=it-ovirt-list-*")]


def test_consoles_of_a_vm_through_its_life(engine, conn, tmp_path):
    """Stopped with SPICE only -> add VNC -> both configured -> start -> current consoles with
    address and ports -> VNC ticket opens vncdotool -> .vv file -> stop -> remove VNC ->
    remove the last console: headless."""
    name = unique("life")
    vm = add_vm(conn, name, make_template(engine, ["spice"]))
    vm_service = conn.system_service().vms_service().vm_service(vm.id)
    consoles_service = vm_service.graphics_consoles_service()
    assert protocols(consoles_service.list()) == ["spice"]

    added = consoles_service.add(types.GraphicsConsole(protocol=types.GraphicsType.VNC))
    assert added.id == "766e63" and added.protocol == types.GraphicsType.VNC
    configured = consoles_service.list()
    assert protocols(configured) == ["spice", "vnc"]
    assert {c.id for c in configured} == {"7370696365", "766e63"}
    assert consoles_service.list(current=True) == []  # not running: nothing current

    vm_service.start()
    assert vm_service.get().status == types.VmStatus.UP
    current = {c.protocol.value: c for c in consoles_service.list(current=True)}
    assert set(current) == {"spice", "vnc"}
    for c in current.values():
        assert c.address == "127.0.0.1" and c.port > 0, c
    display = vm_service.get().display
    assert display.type == types.DisplayType.SPICE and display.port == current["spice"].port

    vnc_service = consoles_service.console_service("766e63")
    ticket = vnc_service.ticket()
    assert len(ticket.value) == 8 and ticket.expiry == 7200
    shot = tmp_path / "vnc.png"
    assert capture_screen(vnc_capture, current["vnc"].port, ticket.value, shot) == 0

    vv = vnc_service.remote_viewer_connection_file()
    lines = vv.strip().splitlines()
    assert lines[0] == "[virt-viewer]"
    keys = dict(line.split("=", 1) for line in lines[1:] if "=" in line and not line.startswith("#"))
    assert VV_KEYS <= set(keys), keys
    assert keys["type"] == "vnc" and keys["port"] == str(current["vnc"].port) and len(keys["password"]) == 8
    assert keys["host"] == "127.0.0.1" and keys["title"] == f"{name}:%d"
    spice_vv = consoles_service.console_service("7370696365").remote_viewer_connection_file()
    spice_keys = {line.split("=", 1)[0] for line in spice_vv.splitlines() if "=" in line}
    assert VV_KEYS | SPICE_VV_KEYS <= spice_keys and "type=spice" in spice_vv

    vm_service.stop()
    assert vm_service.get().status == types.VmStatus.DOWN
    # Not running: oVirt answers 204, which the SDK reports as an error without a body.
    with pytest.raises(sdk.Error) as err:
        vnc_service.remote_viewer_connection_file()
    assert err.value.code == 204

    vnc_service.remove()
    assert protocols(consoles_service.list()) == ["spice"]
    consoles_service.console_service("7370696365").remove()
    assert consoles_service.list() == []
    headless = engine.ok(engine.api.get(f"/api/v1/vms/{vm.id}"))
    assert headless["display"]["video"] == "none" and headless["display"]["consoles"] == []
    assert vm_service.get().display.type is None


def test_template_console_reaches_a_new_vm(engine, conn):
    template = make_template(engine, ["spice"])
    templates_service = conn.system_service().templates_service()
    [t] = templates_service.list(search=f"name={template}")
    tcs = templates_service.template_service(t.id).graphics_consoles_service()
    assert protocols(tcs.list()) == ["spice"]
    tcs.add(types.GraphicsConsole(protocol=types.GraphicsType.VNC))
    assert protocols(tcs.list()) == ["spice", "vnc"]

    vm = add_vm(conn, unique("fromtpl"), template)
    assert vm.template.id == t.id
    vm_consoles = conn.system_service().vms_service().vm_service(vm.id).graphics_consoles_service()
    assert protocols(vm_consoles.list()) == ["spice", "vnc"]


def test_errors_are_the_sdks_exceptions(engine, conn):
    vms_service = conn.system_service().vms_service()
    with pytest.raises(sdk.NotFoundError) as err:
        vms_service.vm_service(str(uuid.uuid4())).get()
    assert err.value.code == 404 and "no VM" in err.value.fault.detail

    name = unique("err")
    vm = add_vm(conn, name, make_template(engine, ["spice", "vnc"]))
    consoles_service = vms_service.vm_service(vm.id).graphics_consoles_service()
    with pytest.raises(sdk.Error) as err:
        consoles_service.add(types.GraphicsConsole(protocol=types.GraphicsType.VNC))
    assert err.value.code == 409 and "already has a vnc console" in err.value.fault.detail

    # A user who may open the VM's consoles but not start it, and who sees no other VM.
    user = unique("bob")
    engine.ok(engine.api.post("/api/v1/users", json={"name": user, "password": "bob-password-1"}), 201)
    engine.ok(
        engine.api.post(
            "/api/v1/permissions",
            json={"user": user, "role": "console_user", "object_type": "vm", "object": name},
        ),
        201,
    )
    other = add_vm(conn, unique("hidden"), make_template(engine, ["vnc"], "vga"))
    bob = engine.connect(f"{user}@internal", "bob-password-1")
    try:
        bob_vms = bob.system_service().vms_service()
        assert [v.name for v in bob_vms.list()] == [name]
        with pytest.raises(sdk.AuthError) as err:
            bob_vms.vm_service(vm.id).start()
        assert err.value.code == 403 and "vm_operator" in err.value.fault.detail
        with pytest.raises(sdk.NotFoundError):
            bob_vms.vm_service(other.id).get()
    finally:
        bob.close()
    with pytest.raises(sdk.AuthError):
        engine.connect(user, "wrong-password").test(raise_exception=True)


# --- the SDK's own examples -------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_examples(tmp_path_factory) -> Path:
    """examples/ of the SDK's source distribution, downloaded from PyPI now (not kept in our tree)."""
    where = tmp_path_factory.mktemp("sdk-sdist")
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"ovirt-engine-sdk-python=={SDK_VERSION}",
                "-d",
                str(where),
            ],
            check=True,
            capture_output=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        output = getattr(err, "stderr", b"") or b""
        pytest.skip(f"cannot download the SDK's sdist from PyPI: {output.decode(errors='replace')[-300:]}")
    [archive] = where.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/examples/" in m.name and m.isfile()]
        tar.extractall(where, members=members, filter="data")
    [examples] = where.glob("*/examples")
    return examples


def connection_parameters_changed(source: str, engine: Engine) -> str:
    """The example with its url, username, password and ca_file replaced, nothing else."""
    tls = f"ca_file={engine.ca_file!r}" if engine.ca_file else "insecure=True"
    changes = [
        (r"url='[^']*'", f"url={engine.url + '/ovirt-engine/api'!r}"),
        (r"username='[^']*'", f"username={ADMIN[0]!r}"),
        (r"password='[^']*'", f"password={ADMIN[1]!r}"),
        (r"ca_file='[^']*'", tls),
    ]
    for pattern, replacement in changes:
        source, count = re.subn(pattern, lambda _m, r=replacement: r, source)
        assert count == 1, f"the example's {pattern} appears {count} times"
    return source


def run_example(examples: Path, name: str, engine: Engine, cwd: Path) -> str:
    script = cwd / name
    script.write_text(connection_parameters_changed((examples / name).read_text(), engine))
    # The examples log with debug=True into ./example.log: keep that in the temporary dir.
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture
def myvm(engine, system_conn):
    """The examples look for a VM named `myvm`: ours, for the time of one test."""
    for dom in system_conn.listAllDomains():
        if dom.name() == "myvm":
            pytest.skip("libvirt already has a domain named myvm (not ours)")
    vm = engine.ok(
        engine.api.post(
            "/api/v1/vms",
            json={
                "name": "myvm",
                "cluster": "Default",
                "memory_mib": 64,
                "video": "qxl",
                "consoles": ["spice"],
            },
        ),
        201,
    )
    yield vm
    engine.api.post(f"/api/v1/vms/{vm['id']}/stop")
    engine.api.delete(f"/api/v1/vms/{vm['id']}")


def test_the_sdks_own_examples(engine, sdk_examples, myvm):
    with tempfile.TemporaryDirectory(prefix="ovirt-examples-") as tmp:
        cwd = Path(tmp)
        run_example(sdk_examples, "add_vnc_console.py", engine, cwd)
        consoles = engine.ok(engine.api.get(f"/api/v1/vms/{myvm['id']}/consoles"))
        assert [c["protocol"] for c in consoles["configured"]] == ["spice", "vnc"]

        engine.ok(engine.api.post(f"/api/v1/vms/{myvm['id']}/start"))
        started = time.monotonic()
        out = run_example(sdk_examples, "get_display_ticket.py", engine, cwd)
        fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
        spice = next(
            c
            for c in engine.ok(engine.api.get(f"/api/v1/vms/{myvm['id']}/consoles"))["current"]
            if c["protocol"] == "spice"
        )
        assert fields["address"] == "127.0.0.1" and fields["port"] == str(spice["port"])
        assert len(fields["password"]) == 8
        assert time.monotonic() - started < 60
