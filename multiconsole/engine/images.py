"""Images: boot media uploaded to the engine (ISO installers, raw and qcow2 disk images).

The pure rules (a name, a qcow2 header, what `qemu-img info` says) are separate from the
I/O (receiving an upload in constant memory, running qemu-img, the store's files). An
upload is refused whole: nothing of it is kept unless every check passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from multiconsole.engine.errors import EngineError

FORMATS = ("iso", "raw", "qcow2")
NAME_MAX = 128
# Where a CD's primary volume descriptor says "CD001" (ISO 9660: sector 16, byte 1).
ISO_MAGIC_OFFSET = 0x8001
ISO_MAGIC = b"CD001"
# The head of the upload kept in memory for the header checks: the ISO signature lies at 32 KiB.
HEAD_BYTES = 64 * 1024
QCOW2_MAGIC = b"QFI\xfb"
# qcow2 v3 incompatible feature bit 2: the guest data lives in an external file.
QCOW2_EXTERNAL_DATA = 1 << 2
# qemu-img on an untrusted file: bounded in time and memory (a crafted header can ask for much).
QEMU_IMG_CPU_SECONDS = 60
BACKING_FILE = "the qcow2 image names a backing file: a guest must never be handed a host file"
DATA_FILE = (
    "the qcow2 image keeps its data in an external data file: a guest must never be handed a host file"
)
QEMU_IMG_MEMORY = 1 << 30
TEMP_PREFIX = ".upload-"


class ImageRefused(EngineError):
    """What was uploaded is not an image the engine will hand a guest (400)."""

    status = 400


class TooLarge(EngineError):
    status = 413


class StoreFull(EngineError):
    """The engine's disk cannot take the image now (full, or failing): 503, try later."""

    status = 503

    def __init__(self, err: OSError):
        super().__init__("file", f"the engine could not store the image: {err.strerror or err}")
        self.headers = {"Retry-After": "60"}


# --- pure rules ------------------------------------------------------------------------


def check_name(name: str | None) -> str:
    """An image's name: shown in lists, used in no path; still, no path separators or '..'."""
    if not isinstance(name, str) or not name.strip():
        raise ImageRefused("name", "give the image a name")
    if "/" in name or "\\" in name or ".." in name:
        raise ImageRefused("name", f"{name!r} has a path separator or '..': an image name is not a path")
    if len(name) > NAME_MAX:
        raise ImageRefused("name", f"at most {NAME_MAX} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or name != name.strip():
        raise ImageRefused("name", "no control characters or leading/trailing spaces")
    return name


def check_declared(fmt: str | None) -> str | None:
    if fmt is None or fmt == "":
        return None
    if fmt not in FORMATS:
        raise ImageRefused("format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return fmt


def qcow2_header_problem(head: bytes) -> str | None:
    """Why a qcow2 header is refused (a backing file, an external data file), else None.

    Read from the bytes themselves, before qemu-img opens the file: qemu-img would open
    a named backing or data file on the engine's host."""
    if not head.startswith(QCOW2_MAGIC):
        return None
    if len(head) < 32:
        return "the qcow2 header is truncated"
    version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
    if backing_offset or backing_size:
        return BACKING_FILE
    if version >= 3:
        if len(head) < 80:
            return "the qcow2 header is truncated"
        (incompatible,) = struct.unpack(">Q", head[72:80])
        if incompatible & QCOW2_EXTERNAL_DATA:
            return DATA_FILE
    return None


def has_iso_signature(head: bytes) -> bool:
    return head[ISO_MAGIC_OFFSET : ISO_MAGIC_OFFSET + len(ISO_MAGIC)] == ISO_MAGIC


@dataclass(frozen=True)
class Facts:
    format: str  # iso, raw, qcow2
    virtual_size: int


def facts_from_info(info: dict, declared: str | None, iso_signature: bool) -> Facts:
    """The image's format and virtual size from `qemu-img info --output=json`, checked
    against the declared format; refuses what a guest must not get."""
    detected = info.get("format")
    if detected not in ("raw", "qcow2"):
        raise ImageRefused("format", f"qemu-img reads a {detected!r} image: only ISO, raw and qcow2 are kept")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageRefused("file", BACKING_FILE)
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise ImageRefused("file", DATA_FILE)
    if specific.get("corrupt"):
        raise ImageRefused("file", "the qcow2 image is marked corrupt")
    kind = "iso" if detected == "raw" and iso_signature else detected
    if declared is not None:
        if declared == "iso" and kind != "iso":
            what = "a qcow2 image" if detected == "qcow2" else "raw data without an ISO 9660 signature"
            raise ImageRefused("format", f"declared iso, but the file is {what}")
        if declared == "raw" and detected != "raw":
            raise ImageRefused("format", f"declared raw, but the file is a {detected} image")
        if declared == "qcow2" and detected != "qcow2":
            raise ImageRefused("format", "declared qcow2, but the file is raw data (no qcow2 header)")
        kind = declared
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise ImageRefused("file", "the image has no size")
    return Facts(kind, size)


def check_problem(returncode: int, report: dict | None) -> str | None:
    """What `qemu-img check` found wrong, else None (leaked clusters waste space, no more)."""
    if returncode in (0, 3):
        return None
    if report and report.get("corruptions"):
        return f"the qcow2 image is corrupt or truncated ({report['corruptions']} corruptions)"
    if report and report.get("check-errors"):
        return "the qcow2 image cannot be checked: it is truncated or damaged"
    return "the qcow2 image is corrupt or truncated"


# --- I/O -------------------------------------------------------------------------------


def _qemu_img(*args: str) -> subprocess.CompletedProcess:
    # prlimit(1) rather than a preexec_fn: the engine then spawns without fork()ing itself.
    limits = ["prlimit", f"--cpu={QEMU_IMG_CPU_SECONDS}", f"--as={QEMU_IMG_MEMORY}"]
    return subprocess.run(
        [*limits, "qemu-img", *args],
        capture_output=True,
        text=True,
        timeout=QEMU_IMG_CPU_SECONDS * 2,
        check=False,
    )


def inspect(path: Path, declared: str | None, head: bytes) -> Facts:
    """Check an uploaded file with qemu-img; raises ImageRefused naming the reason."""
    problem = qcow2_header_problem(head)
    if problem:
        raise ImageRefused("file", problem)
    # The format is given to qemu-img (never probed) once the header told us which it is.
    fmt = "qcow2" if head.startswith(QCOW2_MAGIC) else "raw"
    try:
        done = _qemu_img("info", "--output=json", "-f", fmt, str(path))
    except subprocess.TimeoutExpired:
        raise ImageRefused("file", "qemu-img took too long to read the image") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["unreadable"])[-1].removeprefix("qemu-img: ")
        raise ImageRefused("file", f"the image is truncated or corrupt: {why[:200]}")
    try:
        info = json.loads(done.stdout)
    except ValueError:
        raise ImageRefused("file", "qemu-img could not describe the image") from None
    facts = facts_from_info(info, declared, has_iso_signature(head))
    if fmt == "qcow2":
        try:
            checked = _qemu_img("check", "--output=json", "-f", "qcow2", str(path))
        except subprocess.TimeoutExpired:
            raise ImageRefused("file", "qemu-img took too long to check the image") from None
        try:
            report = json.loads(checked.stdout) if checked.stdout.strip() else None
        except ValueError:
            report = None
        problem = check_problem(checked.returncode, report)
        if problem:
            raise ImageRefused("file", problem)
    return facts


@dataclass
class Received:
    path: Path
    size: int
    sha256: str
    head: bytes


class Upload:
    """An upload being written to a temporary file in the store: hashed as it comes, zero
    blocks skipped (a sparse image stays sparse), the head kept for the header checks.
    Memory stays one buffer, whatever the size."""

    BUFFER = 1 << 20

    def __init__(self, store: ImageStore, limit: int):
        self.store = store
        self.limit = limit
        self.path = store.root / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        if self.size + len(data) > self.limit:
            raise TooLarge("file", f"the image is larger than the limit of {self.limit} bytes")
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]
        self._hash.update(data)
        if _all_zero(data):
            os.lseek(self._fd, len(data), os.SEEK_CUR)  # a hole: nothing to store
        else:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def finish(self) -> Received:
        os.ftruncate(self._fd, self.size)  # a file that ends in a hole keeps its length
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        return Received(self.path, self.size, self._hash.hexdigest(), bytes(self._head))

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


class ImageStore:
    """<data dir>/images: one file per image, named by its id; only the engine reads them."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._ready = False

    def ensure(self) -> None:
        """Made on first use (an engine that never stores an image has no directory)."""
        if not self._ready:
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            self.forget_uploads()
            self._ready = True

    def forget_uploads(self) -> None:
        """Uploads cut short by a crash leave temporary files: nothing refers to them."""
        for p in self.root.glob(f"{TEMP_PREFIX}*"):
            p.unlink(missing_ok=True)

    def path(self, image_id: str) -> Path:
        return self.root / str(uuid.UUID(image_id))  # an id, never a name from outside

    def upload(self, limit: int) -> Upload:
        self.ensure()
        return Upload(self, limit)

    def keep(self, received: Received, image_id: str) -> Path:
        final = self.path(image_id)
        os.chmod(received.path, 0o600)
        os.replace(received.path, final)
        return final

    def remove(self, image_id: str) -> None:
        self.path(image_id).unlink(missing_ok=True)


_ZEROS = bytes(1 << 20)


def _all_zero(data: bytes | memoryview) -> bool:
    """A block of zeros: a hole in the file. (Comparing bytes is a memcmp; memoryviews
    compare element by element, ten times slower.)"""
    n = len(data)
    return n <= len(_ZEROS) and bytes(data) == (_ZEROS if n == len(_ZEROS) else _ZEROS[:n])
