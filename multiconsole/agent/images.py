"""The host's images and VM disks: a content-addressed cache of the engine's images, and
each VM's own disks (copy-on-write overlays of a cached image, or empty disks).

    <root>/images/<sha256>               what the engine sent, kept only if it hashed right
    <root>/disks/<vm id>/<disk id>.qcow2 a VM's disk: made at its first start, kept across
                                         stops and starts, removed with the VM

QEMU runs as libvirt-qemu:kvm: directories are root:kvm 0750, cached images root:kvm 0640
(read-only to QEMU), a VM's disks root:kvm 0660; nothing else on the host is readable to it
through here; the directories above (the agent's data directory, often 0700) let it pass
(group kvm, g+x: through, not list). libvirt (dynamic_ownership) still relabels a running
VM's files to libvirt-qemu and gives them back when it stops.

The root is <data dir>/host by default: beside, not inside, the engine's own <data dir>/images
when both run on one machine.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import re
import subprocess
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DIR_MODE = 0o750
IMAGE_MODE = 0o640
DISK_MODE = 0o660
QEMU_GROUP = "kvm"
TEMP_PREFIX = ".incoming-"
HASH_CHUNK = 1 << 20


class StorageError(Exception):
    """A request about images or disks that cannot be served (the message says why)."""


class HashMismatch(StorageError):
    pass


def _qemu_gid() -> int | None:
    try:
        return grp.getgrnam(QEMU_GROUP).gr_gid
    except KeyError:
        return None


def _own(path: Path, mode: int) -> None:
    """root:kvm (when we may) and `mode`: QEMU reads through its group, nobody else."""
    gid = _qemu_gid()
    if gid is not None and os.geteuid() == 0:
        os.chown(path, 0, gid)
    os.chmod(path, mode)


def _managed(dev: dict) -> bool:
    """Whether a drive is one of the engine's (an image, a volume or an empty disk's size)
    rather than a file given by `path`."""
    return any(k in dev for k in ("imageID", "volumeID", "size"))


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise StorageError(f"{what} {value!r} is not a UUID") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(HASH_CHUNK):
            h.update(data)
    return h.hexdigest()


class Incoming:
    """An image arriving from the engine: hashed as it is written, kept only if it matches."""

    def __init__(self, storage: Storage, sha256: str):
        self.storage, self.sha256 = storage, sha256
        self.path = storage.images / f"{TEMP_PREFIX}{sha256}-{uuid.uuid4().hex[:8]}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        if _all_zero(data):
            os.lseek(self._fd, len(data), os.SEEK_CUR)  # keep sparse images sparse
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def finish(self) -> Path:
        try:
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1
        got = self._hash.hexdigest()
        if got != self.sha256:
            self.path.unlink(missing_ok=True)
            raise HashMismatch(f"what arrived hashes to {got}, not {self.sha256}: not kept")
        final = self.storage.cached(self.sha256)
        _own(self.path, IMAGE_MODE)
        os.replace(self.path, final)
        self.storage.remember(final)
        log.info("image cached sha256=%s bytes=%d", self.sha256, self.size)
        return final

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class Storage:
    def __init__(self, root: Path, own_parents_below: Path | None = None):
        """`own_parents_below`: the agent's data directory; directories from there down to
        `root` are the agent's own, and it lets QEMU through them (see `reachable`)."""
        self.root = Path(root)
        self.own_parents_below = Path(own_parents_below) if own_parents_below else None
        self.images = self.root / "images"
        self.disks = self.root / "disks"
        # Files whose hash was checked, by (size, mtime, inode): a change means a new check.
        self._verified: dict[str, tuple[int, int, int]] = {}

    def _dir(self, path: Path) -> Path:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            _own(path, DIR_MODE)
        return path

    def ensure(self) -> None:
        self._dir(self.root)
        self._dir(self.images)
        self._dir(self.disks)
        self.reachable()

    def reachable(self) -> list[str]:
        """QEMU (libvirt-qemu, in the group kvm) must walk down to the files: every directory
        above them must let it through. The agent's own (its data directory, often 0700
        root) get the group kvm and g+x: through, not list; others it only names. Returns
        the directories QEMU cannot pass."""
        gid = _qemu_gid()
        if gid is None or os.geteuid() != 0:
            return []
        blocked = []
        for d in [*reversed(self.root.parents), self.root]:
            st = d.stat()
            if st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010):
                continue
            own = self.own_parents_below is not None and (
                d == self.own_parents_below or self.own_parents_below in d.parents
            )
            if own and st.st_uid == 0:
                os.chown(d, 0, gid)
                os.chmod(d, (st.st_mode & 0o7777) | 0o010)
                log.info("let QEMU through %s (group kvm, g+x)", d)
                continue
            blocked.append(str(d))
        if blocked:
            log.warning(
                "QEMU (libvirt-qemu:kvm) cannot pass %s: VMs cannot use images under %s",
                ", ".join(blocked),
                self.root,
            )
        return blocked

    # --- the cache -------------------------------------------------------------------

    def cached(self, sha256: str) -> Path:
        if not SHA256_RE.fullmatch(sha256 or ""):
            raise StorageError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        return self.images / sha256

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def remember(self, path: Path) -> None:
        self._verified[path.name] = self._stamp(path)

    def verify(self, sha256: str) -> bool:
        """Whether the cache holds the image intact. A file changed since it was last
        checked is hashed again; one that no longer matches its name is removed."""
        path = self.cached(sha256)
        if not path.is_file():
            return False
        if self._verified.get(sha256) == self._stamp(path):
            return True
        if file_sha256(path) != sha256:
            log.warning("cached image sha256=%s is corrupt: removed, the engine sends it again", sha256)
            path.unlink(missing_ok=True)
            self._verified.pop(sha256, None)
            return False
        self.remember(path)
        return True

    def present(self, sha256s: list[str]) -> list[str]:
        return [s for s in dict.fromkeys(sha256s) if self.verify(s)]

    def incoming(self, sha256: str) -> Incoming:
        self.cached(sha256)  # a valid name
        self.ensure()
        return Incoming(self, sha256)

    # --- VMs' disks ------------------------------------------------------------------

    def vm_dir(self, vm_id: str, disk_dir: str | None = None) -> Path:
        base = self.disks
        if disk_dir:
            shared = Path(disk_dir)
            if not shared.is_absolute() or ".." in shared.parts:
                raise StorageError(f"diskDir {disk_dir!r} must be an absolute path without '..'")
            base = shared / "disks"
        return base / _uuid(vm_id, "vmID")

    def prepare(self, vm_id: str, params: dict) -> dict:
        """vmParams with the `path` of each drive filled in; a VM's missing disks are made
        (an overlay of its cached image, or an empty disk), existing ones reused as they are."""
        devices = params.get("devices")
        if not isinstance(devices, list) or not any(
            isinstance(d, dict) and d.get("type") == "disk" for d in devices
        ):
            return params
        self.ensure()
        filled = []
        for dev in devices:
            # A drive that names its file itself (vdsm's `path` form) is used as it is; the
            # engine names images and volumes, and this host finds or makes their files.
            if isinstance(dev, dict) and dev.get("type") == "disk" and _managed(dev):
                dev = self._drive(vm_id, dict(dev))
            filled.append(dev)
        return {**params, "devices": filled}

    def _drive(self, vm_id: str, dev: dict) -> dict:
        if dev.get("device") == "cdrom":
            path = self.cached(str(dev.get("imageID", "")))
            if not path.is_file():
                raise StorageError(f"image {dev.get('imageID')} is not in this host's cache")
            dev["path"] = str(path)
            return dev
        if dev.get("device") != "disk":
            raise StorageError(f"a disk device is 'disk' or 'cdrom', not {dev.get('device')!r}")
        disk_id = _uuid(dev.get("volumeID", ""), "volumeID")
        vm_dir = self.vm_dir(vm_id, dev.get("diskDir"))
        self._dir(self.disks if not dev.get("diskDir") else vm_dir.parent)
        self._dir(vm_dir)
        path = vm_dir / f"{disk_id}.qcow2"
        if not path.exists():
            if dev.get("imageID"):
                base = self.cached(str(dev["imageID"]))
                if not base.is_file():
                    raise StorageError(f"image {dev['imageID']} is not in this host's cache")
                base_format = dev.get("baseFormat", "raw")
                if base_format not in ("raw", "qcow2"):
                    raise StorageError(f"baseFormat must be raw or qcow2, not {base_format!r}")
                cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base)]
                self._make(cmd, path)
            else:
                size = str(dev.get("size", ""))
                if not size.isdigit() or not 0 < int(size) <= 4096:
                    raise StorageError(f"an empty disk needs a size of 1..4096 GiB, not {size!r}")
                self._make(["qemu-img", "create", "-q", "-f", "qcow2"], path, f"{size}G")
            log.info("disk made vm_id=%s disk=%s base=%s", vm_id, disk_id, dev.get("imageID") or "empty")
        dev["path"] = str(path)
        dev["format"] = "qcow2"
        return dev

    @staticmethod
    def _make(cmd: list[str], path: Path, *tail: str) -> None:
        tmp = path.with_name(f".new-{path.name}")
        done = subprocess.run([*cmd, str(tmp), *tail], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"could not make the disk: {done.stderr.strip()[:300]}")
        _own(tmp, DISK_MODE)
        os.replace(tmp, path)

    def remove_disks(self, vm_id: str, disk_dir: str | None = None) -> list[str]:
        """Remove a VM's own disks (never a cached image); returns the files removed."""
        vm_dir = self.vm_dir(vm_id, disk_dir)
        removed = []
        if vm_dir.is_dir():
            for p in sorted(vm_dir.iterdir()):
                p.unlink()
                removed.append(p.name)
            vm_dir.rmdir()
            log.info("disks removed vm_id=%s files=%d", vm_id, len(removed))
        return removed


_ZEROS = bytes(1 << 20)


def _all_zero(data: bytes | memoryview) -> bool:
    """A block of zeros: a hole in the file. (Comparing bytes is a memcmp; memoryviews
    compare element by element, ten times slower.)"""
    n = len(data)
    return n <= len(_ZEROS) and bytes(data) == (_ZEROS if n == len(_ZEROS) else _ZEROS[:n])
