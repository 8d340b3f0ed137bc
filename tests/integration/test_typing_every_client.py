"""Typing through every real client reaches the guest, read back from its screen by OCR.

One VM, booted by the engine from a copy-on-write overlay of the demo guest (tiny-linux: a
root shell on the VGA console), with qxl video, SPICE and VNC. Without restarting it, four
clients in turn type `echo $((6*7))` + Enter into the shell on tty1:

1. vncdotool on the VNC console (a ticket from the engine);
2. remote-viewer under Xvfb on the SPICE console (the engine's .vv), keys sent to its window
   with xdotool (XTEST: real key events, as a user's keyboard makes them);
3. Chromium (Playwright) on the engine's noVNC page /console/{vm}, typing into the canvas;
4. POST /api/v1/vms/{vm}/keys with the text.

Before each step the screen is cleared (POST .../keys "clear") and OCR must NOT find a line
"42" on it; after the step OCR must find one. So each step's 42 is its own: it can only come
from the shell evaluating what that client typed. The screen is read by vncdotool captures
of the VNC console (a separate connection, independent of the typing client for steps 2-4)
and tesseract; the clients' own views (remote-viewer's window, the noVNC canvas) are saved to
artifacts/ too.
"""

from __future__ import annotations

import random
import re
import string
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from multiconsole.engine.app import Settings, make_app
from tests.conftest import artifacts_dir
from tests.engine.conftest import ADMIN
from tests.integration.clients import VirtualScreen, capture_screen, ocr, stop, vnc_capture, vnc_type
from tests.integration.guest import DISK_IMAGE, ensure_image
from tests.integration.test_browser_console import CHROMIUM_ARGS
from tests.support.servers import ThreadServer, free_port

pytestmark = pytest.mark.integration
BOOT_TIMEOUT = 120
COMMAND = "echo $((6*7))"
ANSWER = re.compile(r"^\s*42\s*$", re.M)


@pytest.fixture
def stack(tmp_path, log_dir, system_conn):
    """The engine (HTTP, its websocket proxy for noVNC, the images store) and a real agent with
    its own storage directory on qemu:///system."""
    from tests.integration.conftest import AgentProcess

    ensure_image()
    storage = Path(f"/var/lib/multiconsole/it-typing-{random.getrandbits(32):08x}")
    agent = AgentProcess(log_dir, extra=("--storage-dir", storage)).start()
    port = free_port()
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor_interval=1,
            proxy_port=free_port(),
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(tmp_path / "pki"),
            images_dir=str(tmp_path / "images"),
            allowed_origins=[f"http://127.0.0.1:{port}"],
        )
    )
    server = ThreadServer(app, port=port).start()
    http = httpx.Client(base_url=server.url, auth=ADMIN, timeout=120)
    try:
        assert http.post("/api/v1/clusters", json={"name": "c"}).status_code == 201
        host = {"name": "h", "address": "127.0.0.1", "port": agent.port, "cluster": "c", "insecure": True}
        assert http.post("/api/v1/hosts", json=host).status_code == 201
        with DISK_IMAGE.open("rb") as f:
            reply = http.post("/api/v1/images", params={"name": "tiny-linux", "format": "raw"}, content=f)
        assert reply.status_code == 201, reply.text
        yield server, http, system_conn
    finally:
        for vm in http.get("/api/v1/vms").json():
            if vm["status"] != "Down":
                http.post(f"/api/v1/vms/{vm['name']}/stop")
            http.delete(f"/api/v1/vms/{vm['name']}")
        http.close()
        server.stop()
        agent.kill(15)
        app.state.db_engine.dispose()
        subprocess.run(["rm", "-rf", str(storage)], check=False)


def unique_name() -> str:
    # Letters only: no digit of the VM's name (in the prompt) can make OCR see "42".
    return "typing-" + "".join(random.choice(string.ascii_lowercase) for _ in range(8))


class Screen:
    """The guest's VGA screen read through vncdotool captures (a fresh engine ticket each time)."""

    def __init__(self, http: httpx.Client, vm: str, out: Path):
        self.http, self.vm, self.out = http, vm, out
        self.n = 0

    def vnc_ticket(self) -> tuple[int, str]:
        reply = self.http.post(f"/api/v1/vms/{self.vm}/consoles/vnc/ticket", json={"ttl": 120})
        assert reply.status_code == 200, reply.text
        t = reply.json()
        return t["port"], t["password"]

    def read(self, label: str) -> tuple[str, Path]:
        self.n += 1
        shot = self.out / f"{self.n:02d}-{label}.png"
        port, password = self.vnc_ticket()
        assert capture_screen(vnc_capture, port, password, shot) == 0
        return ocr(cropped(shot)), shot

    def wait(self, label: str, want, seconds: float = 40) -> tuple[str, Path]:
        """OCR the screen until `want(text)` holds or time is up; returns the last reading."""
        deadline = time.monotonic() + seconds
        while True:
            text, shot = self.read(label)
            if want(text) or time.monotonic() > deadline:
                return text, shot
            time.sleep(1)


def cropped(shot: Path) -> Path:
    """The screen cut to the text on it, plus a margin: tesseract reads a few lines on a
    small page better than a few lines lost in a large black one."""
    with Image.open(shot) as im:
        grey = im.convert("L")
    box = grey.point(lambda v: 255 if v > 96 else 0).getbbox()
    if box is None:
        return shot
    left, top, right, bottom = box
    out = shot.with_name(f"{shot.stem}-crop.png")
    grey.crop((max(0, left - 16), max(0, top - 16), right + 16, bottom + 16)).save(out)
    return out


def keys(http: httpx.Client, vm: str, body: dict) -> None:
    reply = http.post(f"/api/v1/vms/{vm}/keys", json=body)
    assert reply.status_code == 200, reply.text


def cleared(http: httpx.Client, screen: Screen, vm: str, step: str) -> None:
    """Clear the screen and make sure no "42" is left on it: what comes next is the step's own."""
    keys(http, vm, {"text": "clear\n"})
    text, shot = screen.wait(f"{step}-before", lambda t: not ANSWER.search(t) and "#" in t)
    assert not ANSWER.search(text), f"42 still on the screen before {step}: {text!r}"
    save(shot, f"typing-{step}-before.png")


def proven(screen: Screen, step: str) -> None:
    text, shot = screen.wait(step, ANSWER.search)
    save(shot, f"typing-{step}.png")
    assert ANSWER.search(text), f"{step}: no line '42' on the screen: {text!r}"


def save(shot: Path, name: str) -> None:
    (artifacts_dir() / name).write_bytes(shot.read_bytes())


def xdotool(screen: VirtualScreen, *args: str) -> str:
    run = subprocess.run(
        ["xdotool", *args],
        env={"DISPLAY": screen.display, "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr.decode()
    return run.stdout.decode().strip()


def shown(screen: VirtualScreen, shot: Path, seconds: float = 30) -> None:
    """Wait until remote-viewer's window shows the guest's text (below its header bar)."""
    deadline = time.monotonic() + seconds
    while True:
        screen.screenshot(shot)
        with Image.open(shot) as im:
            # The shell's prompt: light pixels in the window's display area (x < 700, y 60-120).
            lit = im.convert("L").crop((8, 60, 700, 120)).point(lambda v: 255 if v > 128 else 0)
            if lit.getbbox() is not None:
                return
        assert time.monotonic() < deadline, "remote-viewer never showed the guest's screen"
        time.sleep(0.5)


def type_in_remote_viewer(http: httpx.Client, vm: str, tmp_path: Path) -> None:
    vv = tmp_path / "spice.vv"
    reply = http.get(f"/api/v1/vms/{vm}/consoles/spice.vv", params={"ttl": 120})
    assert reply.status_code == 200, reply.text
    vv.write_text(reply.text)
    screen = VirtualScreen()
    viewer = screen.run("remote-viewer", str(vv))
    try:
        window = xdotool(screen, "search", "--sync", "--onlyvisible", "--class", "remote-viewer").split()[0]
        # No window manager on Xvfb: give the window the input focus ourselves, and put the
        # pointer over it (spice-gtk sends keys while its display widget has the focus).
        xdotool(screen, "windowfocus", "--sync", window)
        xdotool(screen, "mousemove", "--window", window, "200", "200")
        # Keys sent before the SPICE channels connect are lost: wait for the guest's screen.
        shown(screen, tmp_path / "remote-viewer-before.png")
        time.sleep(1)
        # XTEST key events, with Shift pressed for '$', '(', ')' and '*' as a keyboard would.
        xdotool(screen, "type", "--delay", "120", COMMAND)
        xdotool(screen, "key", "--delay", "120", "Return")
        time.sleep(2)
        screen.screenshot(tmp_path / "remote-viewer.png")
        save(tmp_path / "remote-viewer.png", "typing-2-remote-viewer-window.png")
    finally:
        stop(viewer)
        screen.close()


# Playwright's keyboard.type("$") sends a keydown for "$" without pressing Shift, and noVNC
# passes on just the keysym; QEMU turns it into the key that bears it (4) and, with no Shift
# held, the guest reads "4". A user's keyboard presses Shift: so do we, for the US layout's
# shifted characters of the command.
SHIFTED_US = {"$": "Digit4", "(": "Digit9", ")": "Digit0", "*": "Digit8"}


def browser_type(page, text: str) -> None:
    for ch in text:
        if ch in SHIFTED_US:
            page.keyboard.press(f"Shift+{SHIFTED_US[ch]}")
        else:
            page.keyboard.press(ch)
        time.sleep(0.08)


def type_in_novnc(server: ThreadServer, vm: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(
                http_credentials={"username": ADMIN[0], "password": ADMIN[1]},
                viewport={"width": 1000, "height": 700},
            ).new_page()
            page.goto(f"{server.url}/console/{vm}")
            page.wait_for_selector("body[data-state=connected]", timeout=30000)
            canvas = page.locator("#screen canvas")
            canvas.wait_for(timeout=10000)
            canvas.click()
            browser_type(page, COMMAND)
            page.keyboard.press("Enter")
            time.sleep(2)
            canvas.screenshot(path=str(tmp_path / "novnc-canvas.png"))
            save(tmp_path / "novnc-canvas.png", "typing-3-novnc-canvas.png")
        finally:
            browser.close()


def test_typing_through_every_client_reaches_the_guest(stack, tmp_path):
    server, http, conn = stack
    vm = unique_name()
    body = {
        "name": vm,
        "cluster": "c",
        "memory_mib": 128,
        "video": "qxl",
        "consoles": ["spice", "vnc"],
        "disks": [{"image": "tiny-linux"}],
        "boot": ["disk"],
    }
    reply = http.post("/api/v1/vms", json=body)
    assert reply.status_code == 201, reply.text
    reply = http.post(f"/api/v1/vms/{vm}/start")
    assert reply.status_code == 200 and reply.json()["status"] == "Up", reply.text
    vm_id = reply.json()["id"]
    # libvirt numbers each run of a domain: the same number at the end means no restart.
    run_id = conn.lookupByUUIDString(vm_id).ID()
    screen = Screen(http, vm, tmp_path)

    # Booted to the shell on tty1: the banner, then the prompt. (OCR misreads letters of the
    # VM's name now and then; the prompt's end reads reliably.)
    def booted(t: str) -> bool:
        return "multiconsole" in t and "root#" in t

    text, shot = screen.wait("boot", booted, BOOT_TIMEOUT)
    save(shot, "typing-0-booted.png")
    assert booted(text), text

    # 1. vncdotool on the VNC console.
    cleared(http, screen, vm, "1-vncdotool")
    port, password = screen.vnc_ticket()
    assert vnc_type(port, password, COMMAND, "enter") == 0
    proven(screen, "1-vncdotool")

    # 2. remote-viewer on the SPICE console, keys from xdotool.
    cleared(http, screen, vm, "2-remote-viewer")
    type_in_remote_viewer(http, vm, tmp_path)
    proven(screen, "2-remote-viewer")

    # 3. noVNC in Chromium on the engine's console page.
    cleared(http, screen, vm, "3-novnc")
    type_in_novnc(server, vm, tmp_path)
    proven(screen, "3-novnc")

    # 4. The engine's own typing: POST .../keys.
    cleared(http, screen, vm, "4-post-keys")
    keys(http, vm, {"text": COMMAND + "\n"})
    proven(screen, "4-post-keys")

    # All on the same run of the VM: never restarted.
    assert http.get(f"/api/v1/vms/{vm}").json()["status"] == "Up"
    assert conn.lookupByUUIDString(vm_id).ID() == run_id
