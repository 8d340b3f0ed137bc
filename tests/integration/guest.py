"""The demo guest (tiny-linux) for real-QEMU tests: its image, copy-on-write overlays, and
its serial console (ttyS0) read through the pty libvirt gives the VM's <serial>.

The image is built by scripts/build-guest.sh (run by scripts/setup.sh): a Debian kernel and
busybox on a syslinux disk with an ext4 /data partition, and an isolinux ISO. The guest
prints a banner naming its VM (from SMBIOS) and runs a root shell on tty1 and ttyS0 with
the prompt "NAME:CWD# ".
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import tty
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("MULTICONSOLE_GUEST_DIR", "/var/cache/multiconsole/guest"))
DISK_IMAGE = GUEST_DIR / "tiny-linux.img"
ISO_IMAGE = GUEST_DIR / "tiny-linux.iso"


def ensure_image() -> None:
    """Build the guest if it is missing or stale (idempotent, about 20 s the first time)."""
    builder = REPO / "scripts" / "build-guest.sh"
    subprocess.run([str(builder)], check=True, stdin=subprocess.DEVNULL, timeout=600)


class Overlays:
    """qcow2 overlays over the built image, in a directory QEMU (libvirt-qemu) can enter."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mc-guest-", dir="/var/tmp"))
        self.dir.chmod(0o755)

    def new(self, name: str, base: Path = DISK_IMAGE) -> Path:
        path = self.dir / f"{name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(path)],
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        return path

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def serial_pty(dom) -> str:
    """The host end of the guest's ttyS0, from the live XML."""
    root = etree.fromstring(dom.XMLDesc().encode())
    source = root.find("devices/serial/source")
    assert source is not None and source.get("path"), "the VM has no serial pty"
    return source.get("path")


class SerialConsole:
    """A raw terminal on the guest's serial port. QEMU drops output while no one holds the
    pty open, so the shell is woken with Enter until its prompt shows."""

    def __init__(self, pty_path: str, vm_name: str):
        self.fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        # Raw: no echo back to the guest, no line editing on our side.
        tty.setraw(self.fd)
        self.prompt = re.compile(re.escape(vm_name).encode() + rb":/[^\s#]*# ")
        self.seen = b""
        self._count = 0

    def close(self) -> None:
        os.close(self.fd)

    def _read(self, seconds: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if not ready:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return b""
        self.seen += data
        return data

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait_for_shell(self, seconds: float) -> None:
        """Press Enter every second until the guest's shell prompt comes back."""
        deadline = time.monotonic() + seconds
        got = b""
        while time.monotonic() < deadline:
            self.write("\r")
            end = time.monotonic() + 1
            while time.monotonic() < end:
                got += self._read(max(0.0, end - time.monotonic()))
                if self.prompt.search(got):
                    return
        raise AssertionError(f"no shell prompt on the serial console in {seconds} s: {got[-400:]!r}")

    def run(self, command: str, seconds: float = 30) -> str:
        """Run a shell command and return what it printed (without the echoed command)."""
        self._count += 1
        n = self._count
        # The echoed line holds "$((n*1000+7))" literally; only the shell's output has the number.
        marker = f"__done_{n * 1000 + 7}__"
        echoed = f"__done_$(({n}*1000+7))__"
        self.write(f"{command}; echo {echoed}\r")
        got = b""
        deadline = time.monotonic() + seconds
        while marker.encode() not in got:
            assert time.monotonic() < deadline, f"{command!r} did not finish: {got[-400:]!r}"
            got += self._read(0.5)
        text = got.decode(errors="replace").replace("\r", "")
        body = text.split(marker)[0]
        # Drop the echoed command line (the shell may have wrapped it over lines).
        body = body.split(echoed, 1)[-1]
        return body.split("\n", 1)[1] if "\n" in body else ""
