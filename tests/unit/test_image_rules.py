"""The pure rules of images and drives: names, qcow2 headers, what qemu-img says, vdsm drive
devices; and the agent's cache, which keeps only what hashes right."""

from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from multiconsole.agent.images import HashMismatch, Storage, StorageError
from multiconsole.engine import builder
from multiconsole.engine.images import (
    BACKING_FILE,
    DATA_FILE,
    ImageRefused,
    check_name,
    facts_from_info,
    has_iso_signature,
    qcow2_header_problem,
)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", "", " x", "x\n"])
def test_names_that_are_refused(name):
    with pytest.raises(ImageRefused) as err:
        check_name(name)
    assert err.value.field == "name" and err.value.status == 400


def test_names_that_are_fine():
    assert check_name("Debian 12 netinst.iso") == "Debian 12 netinst.iso"


def _qcow2_header(version=3, backing_offset=0, incompatible=0) -> bytes:
    head = bytearray(104)
    head[0:4] = b"QFI\xfb"
    struct.pack_into(">IQI", head, 4, version, backing_offset, 0)
    struct.pack_into(">Q", head, 72, incompatible)
    return bytes(head)


def test_qcow2_header_rules():
    assert qcow2_header_problem(_qcow2_header()) is None
    assert qcow2_header_problem(_qcow2_header(backing_offset=512)) == BACKING_FILE
    assert qcow2_header_problem(_qcow2_header(incompatible=1 << 2)) == DATA_FILE
    assert qcow2_header_problem(b"QFI\xfb\0\0") == "the qcow2 header is truncated"
    assert qcow2_header_problem(b"\0" * 100) is None  # not a qcow2: other rules apply


def test_iso_signature():
    data = bytearray(0x9000)
    assert not has_iso_signature(bytes(data))
    data[0x8001:0x8006] = b"CD001"
    assert has_iso_signature(bytes(data))


RAW = {"format": "raw", "virtual-size": 1 << 20}
QCOW2 = {"format": "qcow2", "virtual-size": 1 << 30, "format-specific": {"data": {"corrupt": False}}}


@pytest.mark.parametrize(
    ("info", "declared", "iso", "expect"),
    [
        (RAW, None, False, "raw"),
        (RAW, None, True, "iso"),
        (RAW, "raw", True, "raw"),  # a hybrid ISO may be declared a disk image
        (QCOW2, None, False, "qcow2"),
        (RAW, "qcow2", False, "declared qcow2, but the file is raw"),
        (QCOW2, "raw", False, "declared raw, but the file is a qcow2"),
        (RAW, "iso", False, "without an ISO 9660 signature"),
        ({**QCOW2, "backing-filename": "/etc/shadow"}, None, False, BACKING_FILE),
        ({**QCOW2, "format-specific": {"data": {"data-file": "/dev/sda"}}}, None, False, DATA_FILE),
        ({"format": "vmdk", "virtual-size": 1}, None, False, "only ISO, raw and qcow2"),
    ],
)
def test_facts_from_qemu_img_info(info, declared, iso, expect):
    if expect in ("raw", "iso", "qcow2"):
        assert facts_from_info(info, declared, iso).format == expect
        return
    with pytest.raises(ImageRefused) as err:
        facts_from_info(info, declared, iso)
    assert expect in err.value.reason


def test_drive_devices_the_vdsm_way():
    drives = {
        "cdrom": "iso-id",
        "disks": [
            {"id": "d1", "image": "img-id", "size_gib": None},
            {"id": "d2", "image": None, "size_gib": 4},
        ],
        "boot": ["cdrom", "disk"],
    }
    devices = builder.drive_devices(drives, {"iso-id": ("a" * 64, "iso"), "img-id": ("b" * 64, "qcow2")})
    cdrom, overlay, empty = devices
    assert cdrom == {
        "type": "disk",
        "device": "cdrom",
        "iface": "sata",
        "format": "raw",
        "readonly": "true",
        "imageID": "a" * 64,
        "path": "",
        "bootOrder": "1",
    }
    assert overlay["imageID"] == "b" * 64 and overlay["volumeID"] == "d1" and overlay["baseFormat"] == "qcow2"
    assert overlay["format"] == "qcow2" and overlay["bootOrder"] == "2"
    assert empty["size"] == "4" and "imageID" not in empty and "bootOrder" not in empty
    assert builder.drive_devices(None, {}) == []


# --- the agent's cache ----------------------------------------------------------------------


def test_the_cache_keeps_only_what_hashes_right(tmp_path):
    storage = Storage(tmp_path / "host")
    data = b"an image" * 1000
    good = hashlib.sha256(data).hexdigest()
    bad = storage.incoming("0" * 64)
    bad.write(data)
    with pytest.raises(HashMismatch):
        bad.finish()
    incoming = storage.incoming(good)
    incoming.write(memoryview(data))
    path = incoming.finish()
    assert path.read_bytes() == data and storage.present([good, "0" * 64]) == [good]
    assert sorted(p.name for p in storage.images.iterdir()) == [good]  # no temporary left
    # A change to the file is noticed by its hash: the file goes, the engine sends it again.
    with path.open("r+b") as f:
        f.write(b"X")
    assert storage.present([good]) == [] and not path.exists()
    with pytest.raises(StorageError):
        storage.cached("../../etc/passwd")


def test_put_image_endpoint_refuses_a_wrong_hash(tmp_path):
    from multiconsole.agent.server import make_app

    class Manager:
        storage = Storage(tmp_path / "host")

    client = TestClient(make_app(Manager()))
    data = b"\0" * (2 << 20) + b"tail"  # whole MiBs of zeros, then data
    wrong = client.put(f"/images/{'1' * 64}", content=data)
    assert wrong.status_code == 422 and "not kept" in wrong.json()["error"]["message"]
    assert list(Manager.storage.images.iterdir()) == []
    sha = hashlib.sha256(data).hexdigest()
    assert client.put(f"/images/{sha}", content=data).status_code == 201
    kept = Manager.storage.cached(sha)
    assert kept.read_bytes() == data
    assert kept.stat().st_blocks * 512 < 1 << 20  # the zeros became a hole
    assert client.put("/images/not-a-sha", content=b"x").status_code == 400


def test_overlays_are_made_once_and_removed_with_the_vm(tmp_path):
    storage = Storage(tmp_path / "host")
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x11" * (1 << 20))
    sha = hashlib.sha256(base.read_bytes()).hexdigest()
    incoming = storage.incoming(sha)
    incoming.write(base.read_bytes())
    incoming.finish()
    vm_id, disk_id = "6f1c9c39-3a53-4bd1-8a4e-2b0b6ad7c3a1", "2d2b8f8e-6c55-4c0f-9d59-5b8a8f0a3e11"
    dev = {
        "type": "disk",
        "device": "disk",
        "imageID": sha,
        "volumeID": disk_id,
        "baseFormat": "raw",
        "path": "",
    }
    params = storage.prepare(vm_id, {"devices": [dev]})
    overlay = Path(params["devices"][0]["path"])
    assert overlay == storage.disks / vm_id / f"{disk_id}.qcow2" and overlay.exists()
    subprocess.run(["qemu-io", "-c", "write -P 0x22 0 4k", str(overlay)], check=True, capture_output=True)
    storage.prepare(vm_id, {"devices": [dev]})  # the next start reuses it as it is
    read = subprocess.run(
        ["qemu-io", "-r", "-c", "read -P 0x22 0 4k", str(overlay)], capture_output=True, text=True
    )
    assert "Pattern verification failed" not in read.stdout
    with pytest.raises(StorageError, match="not in this host's cache"):
        storage.prepare(vm_id, {"devices": [{**dev, "imageID": "f" * 64, "volumeID": vm_id}]})
    assert storage.remove_disks(vm_id) == [f"{disk_id}.qcow2"]
    assert not (storage.disks / vm_id).exists() and storage.cached(sha).exists()
