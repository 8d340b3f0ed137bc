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


def same_screen(a: Path, b: Path, tolerance: float = 0.002) -> bool:
    """True when two captures show the same picture: at most 0.2% of pixels differ, enough
    for a blinking cursor, too little for another VM (its UUID line differs)."""
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


class VirtualScreen:
    """An Xvfb display for desktop clients (remote-viewer), with screenshots of it."""

    def __init__(self, size: str = "1024x768x24"):
        import tempfile

        self._fd_file = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(self._fd_file.fileno()), "-screen", "0", size, "-nolisten", "tcp"],
            pass_fds=[self._fd_file.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import time

        deadline = time.monotonic() + 10
        while True:
            self._fd_file.seek(0)
            text = self._fd_file.read().decode().strip()
            if text:
                self.display = f":{text}"
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("Xvfb did not start")
            time.sleep(0.05)

    def run(self, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "DISPLAY": self.display},
            start_new_session=True,
        )

    def screenshot(self, out: Path) -> None:
        subprocess.run(
            ["import", "-display", self.display, "-window", "root", str(out)],
            check=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._fd_file.close()


def stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def shows_screen(window_shot: Path, screen: Path, tolerance: float = 0.002) -> bool:
    """True when `screen` (a console capture) appears unscaled inside `window_shot`.

    Lines the two up by the first bright pixel below the window's title bar, then
    compares the overlapping picture.
    """
    with Image.open(window_shot) as big, Image.open(screen) as small:
        big, small = big.convert("L"), small.convert("L")

        def first_bright(im: Image.Image, top: int) -> tuple[int, int] | None:
            w, h = im.size
            px = im.load()
            for y in range(top, h):
                for x in range(w):
                    if px[x, y] > 128:
                        return x, y
            return None

        a = first_bright(small, 0)
        # Skip remote-viewer's header bar: start below the first dark row after it.
        b = first_bright(big, 48)
        if a is None or b is None:
            return False
        dx, dy = b[0] - a[0], b[1] - a[1]
        region = big.crop((dx, dy, dx + small.width, dy + small.height))
        same = region.tobytes(), small.tobytes()
        differ = sum(1 for x, y in zip(*same, strict=True) if abs(x - y) > 64)
        return differ / len(same[1]) <= tolerance


def vnc_type(port: int, password: str, text: str, *keys: str, host: str = "127.0.0.1") -> int:
    """vncdotool types `text`, then presses each named key (e.g. "enter").

    QEMU turns a keysym into the key that bears it on the console's keymap but does not
    press Shift for it ('$' alone arrives as '4'); a real keyboard user, and a real VNC
    client, hold Shift: --force-caps makes vncdotool do so for upper case and for
    ~!@#$%^&*()_+{}|:"<>? (shifted on en-us; '$', '(', ')' and '*' are on de too)."""
    cmd = [VNCDOTOOL, "--force-caps", "-s", f"{host}::{port}", "-p", password, "type", text]
    for key in keys:
        cmd += ["key", key]
    return _run(cmd, 30)


def ocr(png: Path) -> str:
    """tesseract's readings of a VGA text screen (light text on black, 1-pixel strokes).

    Tesseract reads dark text on white best, and the VGA font's thin glyphs (6, 8, 3)
    best when scaled up smoothly (bicubic from grey: nearest-neighbour blocks make 8
    read as 6) and then thresholded. Two scalings misread different glyphs, so both
    readings are returned, one after the other: a check that a text is on the screen
    passes when one reading has it exactly.
    """
    from PIL import ImageOps

    readings = []
    with Image.open(png) as im:
        grey = im.convert("L")
    for scale in (2, 4):
        big = ImageOps.invert(
            grey.resize((grey.width * scale, grey.height * scale), Image.Resampling.BICUBIC)
        )
        clean = big.point(lambda v: 0 if v < 160 else 255)
        prepared = png.with_name(f"{png.stem}-ocr{scale}.png")
        ImageOps.expand(clean, border=20, fill=255).save(prepared)
        result = subprocess.run(
            ["tesseract", str(prepared), "stdout", "--psm", "6"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=True,
        )
        readings.append(result.stdout.decode(errors="replace"))
    return "\n".join(readings)
