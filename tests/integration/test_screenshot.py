"""Screenshots on real QEMU: VM.screenshot through an agent process, and the engine's
GET /api/v1/vms/{key}/screenshot.png, compared with what a VNC client sees.

The VMs have no disk: SeaBIOS stops at "No bootable device." in VGA text mode (720x400).
"""

from __future__ import annotations

import base64
import io
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from multiconsole.engine.broker import AgentCallError
from tests.conftest import artifacts_dir
from tests.engine.conftest import engine_client, error, ok
from tests.integration.clients import (
    VNCDOTOOL,
    capture_screen,
    colours,
    same_screen,
    spice_capture,
    vnc_capture,
)
from tests.integration.conftest import ports, ticket

TEXT_MODE = (720, 400)


def decode(reply: dict) -> bytes:
    assert reply["mimeType"] == "image/png"
    png = base64.b64decode(reply["png"], validate=True)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (reply["width"], reply["height"])
    return png


def text_shown(png: bytes) -> bool:
    with Image.open(io.BytesIO(png)) as im:
        return im.size == TEXT_MODE and len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 1


def wait_for_bios_text(take: Callable[[], bytes], seconds: float = 60) -> bytes:
    """Screenshots until the BIOS has switched to text mode and written something."""
    deadline = time.monotonic() + seconds
    while True:
        png = take()
        if text_shown(png):
            return png
        assert time.monotonic() < deadline, "the BIOS text never showed"
        time.sleep(0.5)


def agent_shot(agent, vm_id: str, **params) -> bytes:
    return decode(agent.call("VM.screenshot", vmID=vm_id, **params))


def size_of(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def shows_same_as(capture: Path, *shots: bytes, tmp_path: Path) -> bool:
    """The VNC capture matches one of the screenshots taken around it (the cursor blinks)."""
    for i, png in enumerate(shots):
        path = tmp_path / f"around-{i}.png"
        path.write_bytes(png)
        if same_screen(capture, path):
            return True
    return False


# --- the agent -----------------------------------------------------------------------


def test_agent_screenshot_of_the_bios_text(agent, vms, tmp_path):
    stats = vms.create(vms.params("spice", "vnc", video="qxl"))
    vm_id = stats["vmId"]
    png = wait_for_bios_text(lambda: agent_shot(agent, vm_id))
    assert size_of(png) == TEXT_MODE
    (tmp_path / "bios.png").write_bytes(png)
    assert colours(tmp_path / "bios.png") > 1
    (artifacts_dir() / "screenshot-agent-bios.png").write_bytes(png)

    reply = agent.call("VM.screenshot", vmID=vm_id, screen=0, maxWidth=360)
    assert (reply["width"], reply["height"]) == (360, 200)
    assert size_of(decode(reply)) == (360, 200)
    assert size_of(agent_shot(agent, vm_id, maxWidth=100)) == (100, 56)
    assert size_of(agent_shot(agent, vm_id, maxWidth=4096)) == TEXT_MODE  # never enlarged

    # What a VNC client sees is what the screenshot shows.
    ticket(agent, vm_id, "vnc", "shotVnc1")
    before = agent_shot(agent, vm_id)
    assert capture_screen(vnc_capture, ports(stats)["vnc"], "shotVnc1", tmp_path / "vnc.png") == 0
    after = agent_shot(agent, vm_id)
    assert shows_same_as(tmp_path / "vnc.png", before, after, tmp_path=tmp_path)


def test_agent_screenshot_refusals(agent, vms, system_conn):
    stats = vms.create(vms.params("vnc", video="vga"))
    vm_id = stats["vmId"]
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.screenshot", vmID=vm_id, screen=1)
    assert err.value.code == 101 and "no screen 1" in err.value.message
    for bad in ({"screen": 4}, {"maxWidth": 8}, {"maxWidth": 5000}, {"maxWidth": True}):
        with pytest.raises(AgentCallError) as err:
            agent.call("VM.screenshot", vmID=vm_id, **bad)
        assert err.value.code == -32602 and err.value.data["field"] == next(iter(bad))

    headless = vms.create(vms.params(video="none"))
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.screenshot", vmID=headless["vmId"])
    assert err.value.code == 101 and "headless" in err.value.message

    system_conn.lookupByUUIDString(vm_id).destroy()  # stopped, still defined
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.screenshot", vmID=vm_id)
    assert err.value.code == 102
    agent.call("VM.destroy", vmID=vm_id)
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.screenshot", vmID=vm_id)
    assert err.value.code == 1


def test_screenshots_do_not_disturb_a_connected_console(agent, vms, tmp_path):
    stats = vms.create(vms.params("spice", "vnc", video="qxl"))
    vm_id, p = stats["vmId"], ports(stats)
    wait_for_bios_text(lambda: agent_shot(agent, vm_id))
    ticket(agent, vm_id, "vnc", "holdVnc1")
    ticket(agent, vm_id, "spice", "holdSpc1")
    # A VNC client that connects, stays 6 seconds, then captures over the same connection.
    held = tmp_path / "held.png"
    client = subprocess.Popen(
        [VNCDOTOOL, "-s", f"127.0.0.1::{p['vnc']}", "-p", "holdVnc1", "pause", "6", "capture", str(held)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not agent.call("VM.getStats", vmID=vm_id)[0]["consoleClients"]:
            assert time.monotonic() < deadline, "the VNC client did not connect"
            time.sleep(0.1)
        shots = [agent_shot(agent, vm_id, maxWidth=320 if i % 2 else None) for i in range(10)]
        # Still connected, still the only client.
        clients = agent.call("VM.getStats", vmID=vm_id)[0]["consoleClients"]
        assert [c["type"] for c in clients] == ["vnc"]
        assert client.wait(30) == 0
    finally:
        if client.poll() is None:
            client.kill()
    assert shows_same_as(held, *[s for s in shots if size_of(s) == TEXT_MODE], tmp_path=tmp_path)
    # SPICE, opened after all these screenshots, shows the same screen too.
    assert capture_screen(spice_capture, p["spice"], "holdSpc1", tmp_path / "spice.png") == 0
    assert shows_same_as(tmp_path / "spice.png", agent_shot(agent, vm_id), shots[-2], tmp_path=tmp_path)


# --- the engine ----------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path):
    with engine_client(f"sqlite:///{tmp_path / 'engine.db'}") as api:
        yield api
        for vm in ok(api.get("/api/v1/vms")):
            if vm["status"] != "Down":
                api.post(f"/api/v1/vms/{vm['id']}/stop")


def engine_shot(api, name: str, query: str = "") -> bytes:
    reply = api.get(f"/api/v1/vms/{name}/screenshot.png{query}")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["cache-control"] == "no-store"
    return reply.content


def test_engine_screenshot_png(engine, agent_proc, tmp_path):
    api = engine
    ok(api.post("/api/v1/clusters", json={"name": "shots", "compat_level": "4.7"}), 201)
    ok(
        api.post(
            "/api/v1/hosts",
            json={
                "name": "shothost",
                "address": "127.0.0.1",
                "port": agent_proc.port,
                "cluster": "shots",
                "insecure": True,
            },
        ),
        201,
    )
    name = f"it-shot-{time.monotonic_ns() % 10**8}"
    vm = {"name": name, "cluster": "shots", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}
    ok(api.post("/api/v1/vms", json=vm), 201)
    body = error(api.get(f"/api/v1/vms/{name}/screenshot.png"), 409, "status")
    assert "Down" in body["reason"]
    ok(api.post(f"/api/v1/vms/{name}/start"))

    png = wait_for_bios_text(lambda: engine_shot(api, name))
    (artifacts_dir() / "screenshot-engine-bios.png").write_bytes(png)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        darkest, brightest = im.convert("L").getextrema()
        assert darkest < brightest  # not a uniform picture
    thumb = engine_shot(api, name, "?width=320")
    assert size_of(thumb) == (320, 178)
    error(api.get(f"/api/v1/vms/{name}/screenshot.png?width=1"), 422, "width")

    # The same screen as a VNC client of a ticket from the engine.
    t = ok(api.post(f"/api/v1/vms/{name}/consoles/vnc/ticket", json={"ttl": 60}))
    before = engine_shot(api, name)
    assert capture_screen(vnc_capture, t["port"], t["password"], tmp_path / "vnc.png") == 0
    after = engine_shot(api, name)
    assert shows_same_as(tmp_path / "vnc.png", before, after, tmp_path=tmp_path)

    ok(api.post(f"/api/v1/vms/{name}/stop"))
    body = error(api.get(f"/api/v1/vms/{name}/screenshot.png"), 409, "status")
    assert body["reason"] == f"VM {name!r} is Down: screenshots only while it runs"
