"""Images (POST/GET/DELETE /api/v1/images) and VMs' drives, on SQLite and PostgreSQL, with a
host agent on libvirt's test driver whose image cache and disks are real files (qemu-img)."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from multiconsole.agent.images import Storage
from multiconsole.agent.vms import VmManager
from tests.engine.conftest import FakeHost, engine_client, error, ok
from tests.engine.test_api import setup_cluster


def make_qcow2(path: Path, size: str = "64M", *extra: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), size], check=True)
    return path


def make_iso(path: Path) -> Path:
    """A minimal ISO 9660 signature at 0x8001 on 64 KiB of raw data."""
    data = bytearray(64 * 1024)
    data[0x8000:0x8006] = b"\x01CD001"
    path.write_bytes(bytes(data))
    return path


def upload(api, path: Path, name: str, fmt: str | None = None):
    params = {"name": name}
    if fmt:
        params["format"] = fmt
    return api.post(
        "/api/v1/images",
        params=params,
        content=path.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )


@pytest.fixture
def images_dir(tmp_path):
    return tmp_path / "engine-images"


@pytest.fixture
def img_api(db_url, images_dir):
    with engine_client(db_url, images_dir=str(images_dir)) as client:
        yield client
    client.app.state.db_engine.dispose()


@pytest.fixture
def storage_host(tmp_path):
    storage = Storage(tmp_path / "host-storage")
    host = FakeHost(tmp_path, manager_cls=functools.partial(VmManager, storage=storage))
    yield host
    host.stop()


def stored(images_dir: Path) -> list[str]:
    return sorted(p.name for p in images_dir.iterdir()) if images_dir.exists() else []


def test_upload_list_show_delete(img_api, images_dir, tmp_path):
    disk = make_qcow2(tmp_path / "d.qcow2")
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 1M", str(disk)], check=True, capture_output=True)
    image = ok(upload(img_api, disk, "tiny disk", "qcow2"), 201)
    assert image["format"] == "qcow2" and image["virtual_size"] == 64 << 20
    assert image["sha256"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert image["size"] == disk.stat().st_size
    assert stored(images_dir) == [image["id"]]
    assert (images_dir / image["id"]).stat().st_mode & 0o777 == 0o600
    assert images_dir.stat().st_mode & 0o777 == 0o700
    # Detected when not declared: an ISO is raw data with the ISO 9660 signature.
    iso = ok(upload(img_api, make_iso(tmp_path / "x.iso"), "installer"), 201)
    assert iso["format"] == "iso"
    assert [i["name"] for i in ok(img_api.get("/api/v1/images"))] == ["installer", "tiny disk"]
    assert ok(img_api.get("/api/v1/images/installer"))["id"] == iso["id"]
    # The same name again: 409, and nothing more kept.
    error(upload(img_api, disk, "tiny disk"), 409, "name")
    assert len(stored(images_dir)) == 2
    assert img_api.delete("/api/v1/images/installer").status_code == 204
    assert stored(images_dir) == [image["id"]]
    error(img_api.get(f"/api/v1/images/{iso['id']}"), 404, "image")


@pytest.mark.parametrize(
    "case",
    [
        "backing file",
        "data file",
        "raw declared qcow2",
        "qcow2 declared raw",
        "truncated",
        "name ../x",
        "not iso",
    ],
)
def test_refusals_name_the_reason_and_keep_nothing(sqlite_url, images_dir, tmp_path, case):
    name, fmt, expect = "img", None, None
    if case == "backing file":
        base = make_qcow2(tmp_path / "base.qcow2")
        path = make_qcow2(tmp_path / "o.qcow2", "64M", "-b", str(base), "-F", "qcow2")
        expect = "backing file"
    elif case == "data file":
        path = make_qcow2(tmp_path / "df.qcow2", "16M", "-o", f"data_file={tmp_path / 'ext.raw'}")
        expect = "external data file"
    elif case == "raw declared qcow2":
        path = tmp_path / "r.raw"
        path.write_bytes(b"\x01" * 65536)
        fmt, expect = "qcow2", "declared qcow2, but the file is raw"
    elif case == "qcow2 declared raw":
        path = make_qcow2(tmp_path / "q.qcow2")
        fmt, expect = "raw", "declared raw, but the file is a qcow2"
    elif case == "truncated":
        full = make_qcow2(tmp_path / "full.qcow2")
        subprocess.run(["qemu-io", "-c", "write -P 0x11 0 4M", str(full)], check=True, capture_output=True)
        path = tmp_path / "trunc.qcow2"
        path.write_bytes(full.read_bytes()[:200_000])
        expect = "corrupt or truncated"
    elif case == "name ../x":
        path = make_iso(tmp_path / "x.iso")
        name, expect = "../x", "path separator"
    else:
        path = tmp_path / "r.raw"
        path.write_bytes(b"\x01" * 65536)
        fmt, expect = "iso", "without an ISO 9660 signature"
    with engine_client(sqlite_url, images_dir=str(images_dir)) as api:
        body = error(upload(api, path, name, fmt), 400)
        assert expect in body["reason"], body
        assert body["field"] in ("file", "format", "name")
        assert stored(images_dir) == []  # not even a temporary file
        assert ok(api.get("/api/v1/images")) == []


def test_upload_limit(sqlite_url, images_dir, tmp_path):
    disk = make_qcow2(tmp_path / "d.qcow2")
    with engine_client(sqlite_url, images_dir=str(images_dir), image_max_bytes=1000) as api:
        reply = upload(api, disk, "big")
        error(reply, 413)  # refused as it arrives, by the body cap or by the upload itself
        reason = reply.json()["error"]["reason"]
        assert "larger than" in reason and "1000 bytes" in reason
        assert stored(images_dir) == []


def test_only_admins_upload_and_operators_read(img_api, tmp_path):
    ok(img_api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    ok(img_api.post("/api/v1/users", json={"name": "op", "password": "op-password-1"}), 201)
    ok(img_api.post("/api/v1/users", json={"name": "nobody", "password": "nobody-password-1"}), 201)
    ok(
        img_api.post(
            "/api/v1/permissions",
            json={"user": "op", "role": "vm_operator", "object_type": "cluster", "object": "prod"},
        ),
        201,
    )
    ok(upload(img_api, make_iso(tmp_path / "x.iso"), "installer"), 201)
    op, nobody = ("op", "op-password-1"), ("nobody", "nobody-password-1")
    assert [i["name"] for i in ok(img_api.get("/api/v1/images", auth=op))] == ["installer"]
    error(img_api.get("/api/v1/images", auth=nobody), 403)
    error(
        img_api.post("/api/v1/images", params={"name": "x"}, content=b"\0" * 10, auth=op),
        403,
    )
    error(img_api.delete("/api/v1/images/installer", auth=op), 403)


def _agent_has(storage_host, sha: str) -> Path:
    return storage_host.manager.storage.cached(sha)


def test_vm_drives_reach_the_host_and_its_disk_stays_there(img_api, storage_host, tmp_path):
    setup_cluster(img_api, storage_host)
    disk_image = make_qcow2(tmp_path / "d.qcow2")
    subprocess.run(["qemu-io", "-c", "write -P 0x42 0 1M", str(disk_image)], check=True, capture_output=True)
    disk = ok(upload(img_api, disk_image, "disk"), 201)
    iso = ok(upload(img_api, make_iso(tmp_path / "x.iso"), "installer"), 201)
    vm = ok(
        img_api.post(
            "/api/v1/vms",
            json={
                "name": "d1",
                "cluster": "prod",
                "memory_mib": 64,
                "cdrom": "installer",
                "disks": [{"image": "disk"}, {"size_gib": 1}],
                "boot": ["disk", "cdrom"],
            },
        ),
        201,
    )
    assert vm["drives"]["cdrom"]["name"] == "installer" and vm["drives"]["boot"] == ["disk", "cdrom"]
    assert [d["image"]["name"] if d["image"] else d["size_gib"] for d in vm["drives"]["disks"]] == ["disk", 1]
    assert vm["pinned_to_host"] is None
    # In use: not removable.
    body = error(img_api.delete("/api/v1/images/disk"), 409, "image")
    assert "VM d1" in body["reason"]

    storage: Storage = storage_host.manager.storage
    assert not storage.images.exists()  # an empty cache
    vm = ok(img_api.post("/api/v1/vms/d1/start"))
    assert vm["status"] == "Up" and vm["pinned_to_host"] == "h-prod"
    # The host got both images from the engine, checked against their sha256.
    for image in (disk, iso):
        cached = _agent_has(storage_host, image["sha256"])
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == image["sha256"]
        assert cached.stat().st_mode & 0o777 == 0o640
    # vmCreate carried vdsm-style drives, with the paths the host filled in.
    xml = storage_host.manager.conn.get().lookupByUUIDString(vm["id"]).XMLDesc(0)
    params = json.loads(xml.split("<mc:params>")[1].split("</mc:params>")[0].replace("&quot;", '"'))
    drives = [d for d in params["devices"] if d["type"] == "disk"]
    by_device = {d["device"]: d for d in drives}
    assert by_device["cdrom"]["path"] == str(_agent_has(storage_host, iso["sha256"]))
    assert by_device["cdrom"]["bootOrder"] == "2" and by_device["cdrom"]["format"] == "raw"
    overlay = Path(drives[1]["path"])
    assert drives[1]["bootOrder"] == "1" and drives[1]["imageID"] == disk["sha256"]
    assert overlay == storage.disks / vm["id"] / f"{vm['drives']['disks'][0]['id']}.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(overlay)], capture_output=True, check=True
        ).stdout
    )
    assert info["backing-filename"] == str(_agent_has(storage_host, disk["sha256"]))
    empty = Path(drives[2]["path"])
    assert "imageID" not in drives[2] and empty.exists()

    # What the guest wrote (here: qemu-io on the overlay) is there after a stop and a start.
    ok(img_api.post("/api/v1/vms/d1/stop"))
    subprocess.run(["qemu-io", "-c", "write -P 0x77 0 64k", str(overlay)], check=True, capture_output=True)
    # A corrupted cached image is noticed by its hash and sent again.
    cached = _agent_has(storage_host, disk["sha256"])
    with cached.open("r+b") as f:
        f.seek(4096)
        f.write(b"corrupt!")
    ok(img_api.post("/api/v1/vms/d1/start"))
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == disk["sha256"]
    read = subprocess.run(
        ["qemu-io", "-r", "-U", "-c", "read -P 0x77 0 64k", "-c", "read -P 0x42 64k 64k", str(overlay)],
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout
    ok(img_api.post("/api/v1/vms/d1/stop"))
    # Naming the same disks again keeps them (and what they hold); a new one is a new disk.
    same = ok(img_api.patch("/api/v1/vms/d1", json={"disks": [{"image": "disk"}, {"size_gib": 2}]}))
    assert same["drives"]["disks"][0]["id"] == vm["drives"]["disks"][0]["id"]
    assert same["drives"]["disks"][1]["id"] != vm["drives"]["disks"][1]["id"]

    # Removing the VM removes its own disks on the host, never the cached images.
    assert img_api.delete("/api/v1/vms/d1").status_code == 204
    assert not overlay.exists() and not (storage.disks / vm["id"]).exists()
    assert cached.exists()
    assert img_api.delete("/api/v1/images/disk").status_code == 204


def test_template_drives_go_to_new_vms(img_api, storage_host, tmp_path):
    setup_cluster(img_api, storage_host)
    ok(upload(img_api, make_qcow2(tmp_path / "d.qcow2"), "disk"), 201)
    t = ok(
        img_api.post(
            "/api/v1/templates", json={"name": "tiny", "disks": [{"image": "disk"}], "boot": ["disk"]}
        ),
        201,
    )
    assert t["drives"]["disks"][0]["id"] is None and t["drives"]["disks"][0]["image"]["name"] == "disk"
    a = ok(img_api.post("/api/v1/vms", json={"name": "a", "cluster": "prod", "template": "tiny"}), 201)
    b = ok(img_api.post("/api/v1/vms", json={"name": "b", "cluster": "prod", "template": "tiny"}), 201)
    ids = {a["drives"]["disks"][0]["id"], b["drives"]["disks"][0]["id"]}
    assert len(ids) == 2 and None not in ids  # each VM its own disk
    body = error(img_api.delete("/api/v1/images/disk"), 409, "image")
    assert "template tiny" in body["reason"]


def test_drive_refusals(img_api, storage_host, tmp_path):
    setup_cluster(img_api, storage_host)
    ok(upload(img_api, make_qcow2(tmp_path / "d.qcow2"), "disk"), 201)
    base = {"name": "x", "cluster": "prod"}
    error(img_api.post("/api/v1/vms", json={**base, "cdrom": "disk"}), 422, "cdrom")
    error(img_api.post("/api/v1/vms", json={**base, "cdrom": "nope"}), 404, "cdrom")
    error(img_api.post("/api/v1/vms", json={**base, "boot": ["cdrom"]}), 422, "boot")
    error(img_api.post("/api/v1/vms", json={**base, "disks": [{}]}), 422, "disks.0")
    error(img_api.post("/api/v1/vms", json={**base, "disks": [{"image": "nope"}]}), 404, "disks.0.image")
    assert ok(img_api.get("/api/v1/vms")) == []


def test_a_shared_directory_keeps_disks_and_frees_the_vm_from_its_host(img_api, storage_host, tmp_path):
    shared = tmp_path / "shared"
    ok(img_api.post("/api/v1/clusters", json={"name": "prod", "shared_dir": str(shared)}), 201)
    ok(
        img_api.post(
            "/api/v1/hosts",
            json={
                "name": "h1",
                "address": "127.0.0.1",
                "port": storage_host.port,
                "cluster": "prod",
                "insecure": True,
            },
        ),
        201,
    )
    error(img_api.post("/api/v1/clusters", json={"name": "bad", "shared_dir": "rel/dir"}), 422, "shared_dir")
    ok(upload(img_api, make_qcow2(tmp_path / "d.qcow2"), "disk"), 201)
    vm = ok(
        img_api.post("/api/v1/vms", json={"name": "s1", "cluster": "prod", "disks": [{"image": "disk"}]}), 201
    )
    vm = ok(img_api.post("/api/v1/vms/s1/start"))
    assert vm["pinned_to_host"] is None  # any host of the cluster may run it
    overlay = shared / "disks" / vm["id"] / f"{vm['drives']['disks'][0]['id']}.qcow2"
    assert overlay.exists()
    ok(img_api.post("/api/v1/vms/s1/stop"))
    assert img_api.delete("/api/v1/vms/s1").status_code == 204
    assert not overlay.exists()


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MiB filesystem (tmpfs) for the engine's images: it fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_a_503_and_keeps_nothing(sqlite_url, small_fs, tmp_path):
    images_dir = small_fs / "images"
    data = tmp_path / "big.raw"
    data.write_bytes(bytes(range(256)) * (16 << 12))  # 16 MiB, no zeros to skip
    with engine_client(sqlite_url, images_dir=str(images_dir)) as api:
        reply = api.post("/api/v1/images", params={"name": "big"}, content=data.read_bytes())
        body = error(reply, 503, "file")
        assert "could not store the image" in body["reason"] and reply.headers["Retry-After"]
        assert stored(images_dir) == []
        # Room again: the next upload works.
        ok(upload(api, make_iso(tmp_path / "x.iso"), "small"), 201)
