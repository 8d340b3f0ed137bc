"""Typing into a real guest: POST /api/v1/vms/{vm}/keys through an agent process and libvirt's
send-key to QEMU, read back from the guest's serial port.

The guest is the demo image tiny-linux (scripts/build-guest.sh: Debian kernel + busybox, a
shell on tty1 and ttyS0, the console keyboard layout from the SMBIOS OEM string
"multiconsole:keymap=..."). Keys reach the shell on tty1 (VGA); the text is typed into
`cat >/dev/ttyS0`, so the serial log shows exactly the characters the guest received.

Until VMs get disks through the engine, the test gives the VM its disk itself: it stops the
domain the agent made, adds the image (a private copy), a serial log and the SMBIOS strings to
its XML, and starts it again (the engine's monitor is off: the VM stays Up in its database).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import libvirt
import pytest
from lxml import etree

from multiconsole.engine.app import Settings, make_app
from tests.conftest import artifacts_dir
from tests.engine.conftest import ADMIN, engine_client, error, ok
from tests.integration.test_browser_console import CHROMIUM_ARGS
from tests.integration.test_engine_qemu import add_host, vm_name
from tests.support.servers import ThreadServer, free_port

GUEST_DIR = Path(os.environ.get("MULTICONSOLE_GUEST_DIR", "/var/cache/multiconsole/guest"))
IMAGE = GUEST_DIR / "tiny-linux.img"
# Seconds to boot: about 15-35 s under TCG here, much more when the machine is busy.
BOOT_TIMEOUT = 240

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not IMAGE.is_file(), reason=f"the demo guest image {IMAGE} is not built (scripts/build-guest.sh)"
    ),
]


@pytest.fixture
def engine(tmp_path):
    with engine_client(f"sqlite:///{tmp_path / 'engine.db'}") as api:
        yield api
        for vm in ok(api.get("/api/v1/vms")):
            if vm["status"] != "Down":
                api.post(f"/api/v1/vms/{vm['id']}/stop")


@pytest.fixture
def guest_dir():
    """A directory QEMU (libvirt-qemu) may enter: pytest's tmp dirs are private to root."""
    d = Path(tempfile.mkdtemp(prefix="mc-keys-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def give_it_the_guest_disk(conn, vm_id: str, name: str, keymap: str, workdir: Path) -> Path:
    """Restart the VM booting tiny-linux; returns its serial log."""
    dom = conn.lookupByUUIDString(vm_id)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    dom.destroy()
    disk = workdir / "disk.img"
    shutil.copyfile(IMAGE, disk)
    log = workdir / "serial.log"
    root = etree.fromstring(xml.encode())
    devices = root.find("devices")
    # Whatever the agent already gave it of these (disks, serial, SMBIOS) is replaced.
    for old in devices.findall("serial") + devices.findall("console") + devices.findall("disk"):
        devices.remove(old)
    for old in root.findall("sysinfo") + root.findall("os/smbios"):
        old.getparent().remove(old)
    d = etree.SubElement(devices, "disk", type="file", device="disk")
    etree.SubElement(d, "driver", name="qemu", type="raw")
    etree.SubElement(d, "source", file=str(disk))
    etree.SubElement(d, "target", dev="vda", bus="virtio")
    serial = etree.SubElement(devices, "serial", type="file")
    etree.SubElement(serial, "source", path=str(log))
    etree.SubElement(serial, "target", port="0")
    sysinfo = etree.Element("sysinfo", type="smbios")
    oem = etree.SubElement(sysinfo, "oemStrings")
    for text in (f"multiconsole:name={name}", f"multiconsole:keymap={keymap}"):
        etree.SubElement(oem, "entry").text = text
    root.find("os").addprevious(sysinfo)
    etree.SubElement(root.find("os"), "smbios", mode="sysinfo")
    conn.defineXML(etree.tostring(root).decode()).create()
    return log


def serial_text(log: Path) -> str:
    try:
        return log.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def wait_for(log: Path, text: str, seconds: float) -> float:
    start = time.monotonic()
    while text not in serial_text(log):
        assert time.monotonic() - start < seconds, (
            f"{text!r} not on the serial port: {serial_text(log)[-2000:]}"
        )
        time.sleep(0.2)
    return time.monotonic() - start


def type_into(api, name: str, body: dict) -> dict:
    return ok(api.post(f"/api/v1/vms/{name}/keys", json=body))


def shell_ready(api, name: str, log: Path, seconds: float = 120) -> None:
    """Keys typed before the shell on tty1 runs are read by it later: probe until it answers."""
    deadline = time.monotonic() + seconds
    n = 0
    while True:
        n += 1
        mark = f"probe{n}ok"
        type_into(api, name, {"text": f"\necho probe{n}ok >/dev/ttyS0\n"})
        try:
            wait_for(log, mark, 3)
            return
        except AssertionError:
            assert time.monotonic() < deadline, (
                f"the shell on tty1 never answered: {serial_text(log)[-2000:]}"
            )


@pytest.mark.parametrize(
    ("layout", "text"),
    [
        ("en-us", "Hello, World! 1+1=2 [ok]"),
        # (Not €: AltGr+E is sent, but the guest's console map de-latin1 reads it as ¤.)
        ("de", "Hello, World! 1+1=2 [ok] Grüße {@|~\\}"),
    ],
)
def test_typed_text_reaches_the_guest_exactly(engine, agent_proc, system_conn, guest_dir, layout, text):
    api = engine
    ok(api.post("/api/v1/clusters", json={"name": "c", "compat_level": "4.7"}), 201)
    add_host(api, agent_proc.port, "c", "local")
    name = vm_name("keys")
    fields = {"name": name, "cluster": "c", "memory_mib": 256, "video": "vga", "consoles": ["vnc"]}
    ok(api.post("/api/v1/vms", json={**fields, "keyboard_layout": layout}), 201)
    vm = ok(api.post(f"/api/v1/vms/{name}/start"))
    log = give_it_the_guest_disk(system_conn, vm["id"], name, layout, guest_dir)
    booted = wait_for(log, f"tiny-linux: ready, vm {name}", BOOT_TIMEOUT)
    print(f"tiny-linux booted to its init in {booted:.1f} s (layout {layout})")
    shell_ready(api, name, log)

    # A character the layout cannot type: refused by name, and nothing of the text is sent.
    untypable = "ß" if layout == "en-us" else "Ω"
    body = error(
        api.post(f"/api/v1/vms/{name}/keys", json={"text": f"echo refused >/dev/ttyS0\n{untypable}"}),
        400,
        "text",
    )
    assert (
        body["reason"] == f"cannot type {untypable!r} (U+{ord(untypable):04X}) with keyboard layout {layout}"
    )

    start = time.monotonic()
    typed = f"cat >/dev/ttyS0\n{text}\n"
    reply = type_into(api, name, {"text": typed})
    assert reply == {"vm": name, "keyboard_layout": layout, "characters": len(typed), "keys_sent": len(typed)}
    type_into(api, name, {"keys": ["ctrl-d"]})
    wait_for(log, text + "\r\n", 30)
    print(f"{len(typed)} characters typed and echoed in {time.monotonic() - start:.1f} s")
    received = serial_text(log)
    assert "refused" not in received  # the refused text never reached the guest
    # Exactly the text, on a line of its own.
    assert f"\n{text}\r\n" in received.replace("\r\r\n", "\r\n")

    # A named key: Ctrl+Alt+Del makes busybox init reboot the guest (its inittab says so).
    type_into(api, name, {"keys": ["ctrl-alt-delete"]})
    wait_for(log, "tiny-linux: ready", 5)  # still there from the first boot
    before = serial_text(log).count("tiny-linux: ready")
    deadline = time.monotonic() + 90
    while serial_text(log).count("tiny-linux: ready") == before:
        assert time.monotonic() < deadline, "Ctrl+Alt+Del did not reboot the guest"
        time.sleep(0.5)


def test_paste_as_keystrokes_in_the_browser_console(agent_proc, system_conn, guest_dir, tmp_path):
    """Chromium on the engine's console page: the "Paste as keystrokes" box types into the guest."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor=False,
            proxy_port=free_port(),
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(tmp_path / "pki"),
            allowed_origins=[f"http://127.0.0.1:{port}"],
        )
    )
    server = ThreadServer(app, port=port).start()
    api = httpx.Client(base_url=server.url, auth=ADMIN, timeout=60)
    name = vm_name("paste")
    try:
        ok(api.post("/api/v1/clusters", json={"name": "c", "compat_level": "4.7"}), 201)
        add_host(api, agent_proc.port, "c", "local")
        fields = {"name": name, "cluster": "c", "memory_mib": 256, "video": "vga", "consoles": ["vnc"]}
        ok(api.post("/api/v1/vms", json={**fields, "keyboard_layout": "de"}), 201)
        vm = ok(api.post(f"/api/v1/vms/{name}/start"))
        log = give_it_the_guest_disk(system_conn, vm["id"], name, "de", guest_dir)
        wait_for(log, "tiny-linux: ready", BOOT_TIMEOUT)
        shell_ready(api, name, log)
        text = "Grüße aus dem Browser: [ok] @home"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(
                    http_credentials={"username": ADMIN[0], "password": ADMIN[1]},
                    viewport={"width": 900, "height": 600},
                ).new_page()
                page.goto(f"{server.url}/console/{name}")
                page.click("#paste-toggle")
                # Untypable on de: refused by name, nothing typed.
                page.fill("#paste-text", "echo refused >/dev/ttyS0\nΩ")
                page.click("#paste-send")
                page.wait_for_selector("#paste[data-state=refused]", timeout=30000)
                assert "cannot type 'Ω' (U+03A9) with keyboard layout de" in page.inner_text("#paste-status")
                page.fill("#paste-text", f"cat >/dev/ttyS0\n{text}\n")
                page.click("#paste-send")
                page.wait_for_selector("#paste[data-state=typed]", timeout=60000)
                assert page.inner_text("#paste-status").startswith(
                    f"typed {len(text) + 17} characters (layout de)"
                )
                page.screenshot(path=str(artifacts_dir() / "browser-console-paste.png"))
                type_into(api, name, {"keys": ["ctrl-d"]})
                wait_for(log, text + "\r\n", 30)

                # The VMs list: "Paste as keystrokes" beside the console, with the web UI's session.
                page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
                page.goto(f"{server.url}/ui/login")
                page.fill("#login-name", ADMIN[0])
                page.fill("#login-password", ADMIN[1])
                page.click("button[type=submit]")
                page.wait_for_url(f"{server.url}/ui/vms")
                page.click(f"tr[data-vm='{name}'] .type-keys")
                page.fill("#keys-text", "echo from the list >/dev/ttyS0\n")
                page.click("#keys-send")
                page.wait_for_selector("#keys-done >> text=/^Typed/")  # no eval: the page's CSP forbids it
                assert page.inner_text("#keys-done") == "Typed 31 characters (layout de)."
                page.screenshot(path=str(artifacts_dir() / "vms-list-paste.png"))
            finally:
                browser.close()
        wait_for(log, "from the list\r\n", 30)
        assert "refused" not in serial_text(log)
        events = ok(api.get("/api/v1/audit", params={"vm": name}))
        assert any(
            e["event"] == "keys typed" and e["detail"].startswith(f"typed {len(text) + 17}") for e in events
        )
    finally:
        api.post(f"/api/v1/vms/{name}/stop")
        api.close()
        server.stop()
