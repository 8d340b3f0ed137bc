"""Boot media on real QEMU: the demo guest's disk image and ISO uploaded to an engine, pushed
to a real agent (an empty cache), and a VM run from a copy-on-write overlay of the disk with
the ISO in its CD-ROM. What was written to the overlay is there after a stop and a start
(the same file, reused), QEMU (libvirt-qemu:kvm) reads the cache through the group kvm, and
removing the VM removes its overlay."""

from __future__ import annotations

import grp
import json
import shutil
import subprocess
import time
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
PATTERN_OFFSET = 1 << 20  # 1 MiB into the disk: the boot loader's area, past the MBR


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


def _qemu_io(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", *args], capture_output=True, text=True, check=False)


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

    # Written while stopped (qemu-io on the overlay), read back after the next start.
    assert http.post(f"/api/v1/vms/{name}/stop").json()["status"] == "Down"
    inode = overlay.stat().st_ino
    write = _qemu_io("-f", "qcow2", "-c", f"write -P 0x5c {PATTERN_OFFSET} 64k", str(overlay))
    assert write.returncode == 0, write.stderr
    vm = http.post(f"/api/v1/vms/{name}/start").json()
    assert vm.get("status") == "Up", vm
    assert overlay.stat().st_ino == inode  # the same file, not made anew
    read = _qemu_io("-r", "-U", "-f", "qcow2", "-c", f"read -P 0x5c {PATTERN_OFFSET} 64k", str(overlay))
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, (
        read.stdout + read.stderr
    )
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
    print(f"first start with the image pushed to the host: {first_start:.1f} s")
