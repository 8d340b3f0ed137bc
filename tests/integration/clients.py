"""Real console clients, each with a timeout and no stdin (several prompt or hang)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

VNCDOTOOL = str(Path(sys.executable).parent / "vncdotool")


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> int:
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        ).returncode
    except subprocess.TimeoutExpired:
        return -1


def vnc_capture(port: int, password: str, out: Path, host: str = "127.0.0.1") -> int:
    """vncdotool: 0 with the screen in `out`; 3 when the password is refused."""
    return _run([VNCDOTOOL, "-s", f"{host}::{port}", "-p", password, "capture", str(out)], 30)


def spice_capture(port: int, password: str, out: Path, host: str = "127.0.0.1") -> int:
    """spicy-screenshot: 0 with the screen in `out` (PNG); 1 when the password is refused."""
    ppm = out.with_suffix(".ppm")
    rc = _run(["spicy-screenshot", "-h", host, "-p", str(port), "-w", password, "-o", str(ppm)], 30)
    if rc == 0:
        Image.open(ppm).save(out)
    return rc


def have_spice_client() -> bool:
    return shutil.which("spicy-screenshot") is not None


def colours(path: Path) -> int:
    with Image.open(path) as im:
        return len(im.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def same_screen(a: Path, b: Path, tolerance: float = 0.02) -> bool:
    """True when two captures show the same picture (a blinking cursor may differ)."""
    with Image.open(a) as ia, Image.open(b) as ib:
        ia, ib = ia.convert("L"), ib.convert("L")
        if ia.size != ib.size:
            return False
        pa, pb = ia.tobytes(), ib.tobytes()
        differ = sum(1 for x, y in zip(pa, pb, strict=True) if abs(x - y) > 32)
        return differ / len(pa) <= tolerance


def capture_screen(capture, port: int, password: str, out: Path, seconds: float = 20) -> int:
    """Capture until the guest has drawn something (the BIOS needs a moment after start).

    Returns the client's exit code; on 0, `out` holds a picture of more than one colour.
    """
    import time

    deadline = time.monotonic() + seconds
    while True:
        rc = capture(port, password, out)
        if rc != 0 or colours(out) > 1 or time.monotonic() > deadline:
            return rc
        time.sleep(0.5)
