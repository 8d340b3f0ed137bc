"""GET /api/v1/vms/{key}/screenshot.png with hosts on libvirt's test driver
(whose screenshot is a fixed 1120x832 PNG)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from multiconsole.agent.vms import AgentError, VmManager
from multiconsole.wire.errors import ErrorCode
from tests.engine.conftest import FakeHost, error, ok
from tests.engine.test_api import VM, setup_cluster

SIZE = (1120, 832)


def png_of(reply) -> Image.Image:
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    assert reply.headers["cache-control"] == "no-store"
    im = Image.open(io.BytesIO(reply.content))
    assert im.format == "PNG"
    return im


def test_screenshot_of_a_running_vm(api, fake_host):
    setup_cluster(api, fake_host)
    ok(api.post("/api/v1/vms", json=VM), 201)
    error(api.get("/api/v1/vms/web1/screenshot.png"), 409, "status")  # not started yet
    vm = ok(api.post("/api/v1/vms/web1/start"))

    im = png_of(api.get("/api/v1/vms/web1/screenshot.png"))
    assert im.size == SIZE
    assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 1
    assert png_of(api.get(f"/api/v1/vms/{vm['id']}/screenshot.png?width=320")).size == (320, 238)
    assert png_of(api.get("/api/v1/vms/web1/screenshot.png?width=4096")).size == SIZE  # never enlarged

    for query in ("width=15", "width=4097", "width=wide", "screen=4", "screen=-1"):
        error(api.get(f"/api/v1/vms/web1/screenshot.png?{query}"), 422, query.split("=")[0])
    body = error(api.get("/api/v1/vms/web1/screenshot.png?screen=1"), 409, "video")
    assert "no screen 1" in body["reason"]
    error(api.get("/api/v1/vms/nope/screenshot.png"), 404, "vm")
    error(api.get("/api/v1/vms/web1/screenshot.png", auth=None), 401)

    ok(api.post("/api/v1/vms/web1/stop"))
    body = error(api.get("/api/v1/vms/web1/screenshot.png"), 409, "status")
    assert body["reason"] == "VM 'web1' is Down: screenshots only while it runs"


def test_the_host_lost_the_vm_or_its_agent_is_gone(sqlite_api, tmp_path):
    api = sqlite_api
    host = FakeHost(tmp_path)
    try:
        setup_cluster(api, host)
        ok(api.post("/api/v1/vms", json=VM), 201)
        vm = ok(api.post("/api/v1/vms/web1/start"))
        # Stopped behind the engine's back, before the monitor noticed.
        host.manager.conn.get().lookupByUUIDString(vm["id"]).destroy()
        body = error(api.get("/api/v1/vms/web1/screenshot.png"), 409, "status")
        assert "not running on host h-prod" in body["reason"]
    finally:
        host.stop()
    body = error(api.get("/api/v1/vms/web1/screenshot.png"), 502, "host")
    assert body["reason"].startswith("host h-prod did not answer")


def test_a_headless_vm_has_no_screen(sqlite_api, fake_host):
    api = sqlite_api
    setup_cluster(api, fake_host)
    ok(api.post("/api/v1/vms", json={**VM, "consoles": [], "video": "none"}), 201)
    ok(api.post("/api/v1/vms/web1/start"))
    body = error(api.get("/api/v1/vms/web1/screenshot.png"), 409, "video")
    assert "headless" in body["reason"]


class _OldManager(VmManager):
    def screenshot(self, vm_id, screen=0, max_width=None):
        raise AgentError(ErrorCode.METHOD_NOT_FOUND, "no such method: VM.screenshot")


class _BrokenManager(VmManager):
    def screenshot(self, vm_id, screen=0, max_width=None):
        raise AgentError(ErrorCode.LIBVIRT_FAILURE, "taking the screenshot: qemu said no")


@pytest.mark.parametrize(
    ("manager_cls", "status", "reason"),
    [
        (_OldManager, 409, "host h-prod cannot take screenshots (its agent is older)"),
        (
            _BrokenManager,
            502,
            "host h-prod could not take the screenshot: taking the screenshot: qemu said no",
        ),
    ],
)
def test_hosts_that_cannot_answer(sqlite_api, tmp_path, manager_cls, status, reason):
    api = sqlite_api
    host = FakeHost(tmp_path, manager_cls=manager_cls)
    try:
        setup_cluster(api, host)
        ok(api.post("/api/v1/vms", json=VM), 201)
        ok(api.post("/api/v1/vms/web1/start"))
        assert error(api.get("/api/v1/vms/web1/screenshot.png"), status, "host")["reason"] == reason
    finally:
        host.stop()
