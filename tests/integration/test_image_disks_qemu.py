"""Boot media on real QEMU: the demo guest's disk image and ISO uploaded to an engine, pushed
to a real agent (an empty cache), and a VM run from a copy-on-write overlay of the disk with
the ISO in its CD-ROM: it boots through SeaBIOS to a shell on its serial port. The guest
writes a file on its disk, is stopped and started, and reads it back (the same overlay
file, reused); QEMU (libvirt-qemu:kvm) reads the cache through the group kvm; removing the
VM removes its overlay."""

from __future__ import annotations

import grp
import json
import os
import select
import shutil
import subprocess
import time
import tty
import uuid
from pathlib import Path

import httpx
import pytest
from lxml import etree

from multiconsole.domain.devices import VmSpec
from multiconsole.engine.app import Settings, make_app
from tests.engine.conftest import ADMIN
from tests.integration.conftest import AgentProcess
from tests.support.servers import ThreadServer

pytestmark = pytest.mark.integration
GUEST = Path("/var/cache/multiconsole/guest")
BOOT_TIMEOUT = 60


class Serial:
    """The guest's serial console (a pty libvirt made): read what it prints, type commands."""

    def __init__(self, conn, vm_id: str):
        live = etree.fromstring(conn.lookupByUUIDString(vm_id).XMLDesc(0))
        self.path = live.find(".//serial/source").get("path")
        self.out = b""

    def __enter__(self) -> Serial:
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def expect(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not seen on the serial console; got {self.out[-2000:]!r}"
            if select.select([self.fd], [], [], min(left, 1.0))[0]:
                self.out += os.read(self.fd, 65536)

    def run(self, command: str, answer: str, timeout: float = 30) -> None:
        self.out = b""
        os.write(self.fd, b"\r")
        time.sleep(0.5)
        os.write(self.fd, command.encode() + b"\r")
        self.expect(answer, timeout)


def _needs_drive_xml() -> None:
    if "drives" not in VmSpec.__dataclass_fields__:
        pytest.skip("the agent's domain XML has no <disk>s yet (the guest-image branch adds them)")


@pytest.fixture
def storage_root():
    # Under /var/lib, not pytest's /tmp/pytest-of-root (0700): QEMU must reach the files.
    root = Path(f"/var/lib/multiconsole/it-storage-{uuid.uuid4().hex[:8]}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(tmp_path, log_dir, system_conn, storage_root):
    agent = AgentProcess(log_dir, extra=("--storage-dir", storage_root)).start()
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor=False,
            proxy_port=None,
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(tmp_path / "pki"),
            images_dir=str(tmp_path / "images"),
        )
    )
    server = ThreadServer(app).start()
    http = httpx.Client(base_url=server.url, auth=ADMIN, timeout=120)
    assert http.post("/api/v1/clusters", json={"name": "c"}).status_code == 201
    host = {"name": "h", "address": "127.0.0.1", "port": agent.port, "cluster": "c", "insecure": True}
    assert http.post("/api/v1/hosts", json=host).status_code == 201
    yield http, system_conn
    for vm in http.get("/api/v1/vms").json():
        if vm["status"] != "Down":
            http.post(f"/api/v1/vms/{vm['name']}/stop")
        http.delete(f"/api/v1/vms/{vm['name']}")
    http.close()
    server.stop()
    agent.kill(15)
    app.state.db_engine.dispose()


def _upload(http: httpx.Client, path: Path, name: str, fmt: str) -> dict:
    with path.open("rb") as f:
        reply = http.post("/api/v1/images", params={"name": name, "format": fmt}, content=f.read())
    assert reply.status_code == 201, reply.text
    return reply.json()


def test_overlay_boot_keeps_what_was_written_and_goes_with_the_vm(stack, storage_root):
    _needs_drive_xml()
    if not (GUEST / "tiny-linux.img").exists():
        pytest.skip("no demo guest image (scripts/build-guest.sh)")
    http, conn = stack
    disk = _upload(http, GUEST / "tiny-linux.img", "tiny-linux", "raw")
    iso = (
        _upload(http, GUEST / "tiny-linux.iso", "tiny-linux-iso", "iso")
        if (GUEST / "tiny-linux.iso").exists()
        else None
    )
    name = f"it-disk-{uuid.uuid4().hex[:6]}"
    body = {
        "name": name,
        "cluster": "c",
        "memory_mib": 128,
        "video": "vga",
        "consoles": ["vnc"],
        "disks": [{"image": "tiny-linux"}],
        "boot": ["disk", "cdrom"] if iso else ["disk"],
    }
    if iso:
        body["cdrom"] = "tiny-linux-iso"
    vm = http.post("/api/v1/vms", json=body).json()
    assert "id" in vm, vm
    started = time.monotonic()
    vm = http.post(f"/api/v1/vms/{name}/start").json()
    assert vm.get("status") == "Up", vm
    first_start = time.monotonic() - started
    assert vm["pinned_to_host"] == "h"

    cache = storage_root / "images"
    overlay = storage_root / "disks" / vm["id"] / f"{vm['drives']['disks'][0]['id']}.qcow2"
    # The live domain runs the overlay, backed by the cached image; the ISO from the cache.
    live = etree.fromstring(conn.lookupByUUIDString(vm["id"]).XMLDesc(0))
    sources = {d.get("device"): d.find("source").get("file") for d in live.iter("disk")}
    assert sources["disk"] == str(overlay)
    backing = live.find(".//disk[@device='disk']/backingStore/source")
    assert backing is not None and backing.get("file") == str(cache / disk["sha256"])
    if iso:
        assert sources["cdrom"] == str(cache / iso["sha256"])
    # QEMU reads the cache through the group kvm; nobody else may.
    for path, mode in ((cache, 0o750), (overlay.parent, 0o750)):
        assert path.stat().st_mode & 0o777 == mode, path
        assert path.stat().st_gid == grp.getgrnam("kvm").gr_gid
    assert (cache / disk["sha256"]).stat().st_mode & 0o007 == 0

    # The guest boots from the overlay to a shell on its serial port and writes to /data
    # (the disk's ext4 partition); after a stop and a start it reads it back.
    token = uuid.uuid4().hex[:10]
    with Serial(conn, vm["id"]) as tty:
        tty.expect(f"tiny-linux: ready, vm {name}", BOOT_TIMEOUT)
        boot = time.monotonic() - started
        tty.run(f"echo {token} > /data/proof && sync && echo WROTE-$((40+2))", "WROTE-42")
    assert http.post(f"/api/v1/vms/{name}/stop").json()["status"] == "Down"
    inode = overlay.stat().st_ino
    vm = http.post(f"/api/v1/vms/{name}/start").json()
    assert vm.get("status") == "Up", vm
    assert overlay.stat().st_ino == inode  # the same file, not made anew
    with Serial(conn, vm["id"]) as tty:
        tty.expect(f"tiny-linux: ready, vm {name}", BOOT_TIMEOUT)
        tty.run("cat /data/proof | sed 's/^/READ-/'", f"READ-{token}")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(overlay)], capture_output=True, check=True
        ).stdout
    )
    assert info["backing-filename"] == str(cache / disk["sha256"])

    # Removing the VM removes its overlay (the cache stays for other VMs).
    assert http.post(f"/api/v1/vms/{name}/stop").json()["status"] == "Down"
    assert http.delete(f"/api/v1/vms/{name}").status_code == 204
    assert not overlay.exists() and not overlay.parent.exists()
    assert (cache / disk["sha256"]).exists()
    print(f"start (image pushed to an empty cache): {first_start:.1f} s; boot to the shell: {boot:.1f} s")
