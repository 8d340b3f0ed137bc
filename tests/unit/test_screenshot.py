"""VM.screenshot on libvirt's test driver, and the PPM -> PNG conversion.

The test driver implements screenshots (it streams a fixed 1120x832 PNG for any running
domain and any screen), so the whole path runs here; what QEMU sends (PPM) is generated.
"""

from __future__ import annotations

import base64
import io
import uuid

import libvirt
import pytest
from PIL import Image

from multiconsole.agent import api, vms
from multiconsole.agent.screenshot import NotAnImage, scaled_size, to_png
from multiconsole.agent.vms import AgentError, VmManager
from multiconsole.wire.errors import ErrorCode

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEST_DRIVER_SIZE = (1120, 832)


def ppm(width: int, height: int) -> bytes:
    """A P6 PPM as QEMU's screendump writes it: left half red, right half blue, a white row."""
    row = bytes([255, 0, 0]) * (width // 2) + bytes([0, 0, 255]) * (width - width // 2)
    rows = [bytes([255, 255, 255]) * width if y == height // 2 else row for y in range(height)]
    return f"P6\n{width} {height}\n255\n".encode() + b"".join(rows)


def params(vm_id: str, *consoles: str, video: str = "qxl", **spec) -> dict:
    return {
        "vmId": vm_id,
        "vmName": f"shot-{vm_id[:8]}",
        "memSize": 64,
        "devices": [{"type": "video", "device": video, "specParams": spec}]
        + [{"type": "graphics", "device": c, "specParams": {}} for c in consoles],
    }


def running(manager: VmManager, *consoles: str, video: str = "qxl", **spec) -> str:
    vm_id = str(uuid.uuid4())
    manager.create(vm_id, params(vm_id, *consoles, video=video, **spec))
    return vm_id


def image(reply: dict) -> Image.Image:
    data = base64.b64decode(reply["png"], validate=True)
    assert data.startswith(PNG_MAGIC)
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.size == (reply["width"], reply["height"])
    return im


def code_of(call, *args) -> AgentError:
    with pytest.raises(AgentError) as err:
        call(*args)
    return err.value


# --- conversion ----------------------------------------------------------------------


def test_ppm_becomes_a_png_with_the_same_pixels():
    png = to_png(ppm(720, 400))
    assert png.data.startswith(PNG_MAGIC) and (png.width, png.height) == (720, 400)
    im = Image.open(io.BytesIO(png.data)).convert("RGB")
    assert im.size == (720, 400)
    assert im.getpixel((0, 0)) == (255, 0, 0) and im.getpixel((719, 0)) == (0, 0, 255)
    assert im.getpixel((360, 200)) == (255, 255, 255)
    assert im.tobytes() == Image.open(io.BytesIO(ppm(720, 400))).tobytes()


@pytest.mark.parametrize(
    ("max_width", "size"),
    [(360, (360, 200)), (100, (100, 56)), (16, (16, 9)), (720, (720, 400)), (4096, (720, 400))],
)
def test_downscaling_keeps_the_aspect_ratio_and_never_enlarges(max_width, size):
    png = to_png(ppm(720, 400), max_width)
    assert (png.width, png.height) == size
    im = Image.open(io.BytesIO(png.data)).convert("RGB")
    assert im.size == size
    # Still red on the left and blue on the right.
    assert im.getpixel((0, 0))[0] > 200 and im.getpixel((size[0] - 1, 0))[2] > 200


def test_scaled_size_of_a_tall_or_thin_screen():
    assert scaled_size(1024, 768, None) == (1024, 768)
    assert scaled_size(1024, 768, 256) == (256, 192)
    assert scaled_size(4000, 10, 16) == (16, 1)  # never 0 rows


def test_greyscale_and_png_input():
    grey = b"P5\n4 2\n255\n" + bytes([0, 64, 128, 255] * 2)
    png = to_png(grey)
    assert Image.open(io.BytesIO(png.data)).mode == "L"
    again = to_png(png.data, 2)
    assert (again.width, again.height) == (2, 1)


@pytest.mark.parametrize("data", [b"", b"not an image", b"P6\n720 400\n255\n" + b"\0" * 10])
def test_what_is_not_an_image_is_refused(data):
    with pytest.raises(NotAnImage):
        to_png(data)


# --- VmManager.screenshot on the test driver ------------------------------------------


def test_screenshot_of_a_running_vm(manager):
    vm_id = running(manager, "spice", "vnc")
    reply = manager.screenshot(vm_id)
    assert reply["mimeType"] == "image/png"
    assert (reply["width"], reply["height"]) == TEST_DRIVER_SIZE
    im = image(reply).convert("RGB")
    assert len(im.getcolors(maxcolors=1 << 20) or []) > 1

    small = manager.screenshot(vm_id, 0, 320)
    assert (small["width"], small["height"]) == (320, round(832 * 320 / 1120))
    image(small)
    # A VM with a video device but no console still has a screen.
    assert manager.screenshot(running(manager, video="vga"))["width"] == TEST_DRIVER_SIZE[0]


def test_screens_are_the_heads_of_the_video_device(manager):
    vm_id = running(manager, "spice", heads="2")
    assert manager.screenshot(vm_id, 1)["width"] == TEST_DRIVER_SIZE[0]
    err = code_of(manager.screenshot, vm_id, 2)
    assert err.code == ErrorCode.NO_SUCH_DEVICE and "has 2 screens: no screen 2" in err.message
    err = code_of(manager.screenshot, running(manager, "vnc", video="vga"), 1)
    assert err.code == ErrorCode.NO_SUCH_DEVICE and "has 1 screen: no screen 1" in err.message


def test_screenshot_refusals(manager):
    err = code_of(manager.screenshot, str(uuid.uuid4()))
    assert err.code == ErrorCode.NO_SUCH_VM

    headless = running(manager, video="none")
    err = code_of(manager.screenshot, headless)
    assert err.code == ErrorCode.NO_SUCH_DEVICE and "headless" in err.message

    stopped = running(manager, "vnc")
    manager.conn.get().lookupByUUIDString(stopped).destroy()  # still defined, not running
    err = code_of(manager.screenshot, stopped)
    assert err.code == ErrorCode.VM_NOT_RUNNING and "not running" in err.message

    # A domain the agent does not manage is not its to show, even running with a screen.
    foreign = manager.conn.get().createXML(FOREIGN_XML, 0)
    assert code_of(manager.screenshot, foreign.UUIDString()).code == ErrorCode.NO_SUCH_VM


FOREIGN_XML = """<domain type='test'><name>foreign</name><memory>65536</memory>
<os><type>hvm</type></os><devices><video><model type='vga'/></video></devices></domain>"""


@pytest.mark.parametrize(
    ("screen", "max_width", "field"),
    [
        (-1, None, "screen"),
        (4, None, "screen"),
        (True, None, "screen"),
        (0, 15, "maxWidth"),
        (0, 4097, "maxWidth"),
    ],
)
def test_manager_checks_its_arguments(manager, screen, max_width, field):
    err = code_of(manager.screenshot, running(manager, "vnc"), screen, max_width)
    assert err.code == ErrorCode.INVALID_PARAMS and err.data["field"] == field


class _LibvirtError(libvirt.libvirtError):
    def __init__(self, code: int):
        super().__init__("boom")
        self.code = code

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return "boom"


class _FailingDomain:
    def __init__(self, code: int, active: bool = True):
        self.code, self.active = code, active

    def isActive(self) -> bool:  # noqa: N802 (libvirt's name)
        return self.active

    def screenshot(self, _stream, _screen, _flags) -> str:
        raise _LibvirtError(self.code)


@pytest.mark.parametrize(
    ("libvirt_code", "active", "code"),
    [
        (libvirt.VIR_ERR_INTERNAL_ERROR, True, ErrorCode.LIBVIRT_FAILURE),
        (libvirt.VIR_ERR_OPERATION_FAILED, True, ErrorCode.LIBVIRT_FAILURE),
        (libvirt.VIR_ERR_OPERATION_INVALID, True, ErrorCode.LIBVIRT_FAILURE),
        (libvirt.VIR_ERR_OPERATION_INVALID, False, ErrorCode.VM_NOT_RUNNING),
        (libvirt.VIR_ERR_NO_DOMAIN, True, ErrorCode.NO_SUCH_VM),
        (libvirt.VIR_ERR_INVALID_ARG, True, ErrorCode.NO_SUCH_DEVICE),
    ],
)
def test_libvirt_failures_get_stable_codes(manager, libvirt_code, active, code):
    vm_id = running(manager, "vnc")
    err = code_of(manager._screendump, _FailingDomain(libvirt_code, active), vm_id, 0)
    assert err.code == code
    if code == ErrorCode.LIBVIRT_FAILURE:
        assert err.message == "taking the screenshot: boom"


def test_what_libvirt_streams_must_be_an_image(manager, monkeypatch):
    vm_id = running(manager, "vnc")
    monkeypatch.setattr(manager, "_screendump", lambda *_a: b"garbage")
    err = code_of(manager.screenshot, vm_id)
    assert err.code == ErrorCode.LIBVIRT_FAILURE and "not a readable image" in err.message


def test_an_oversized_stream_is_cut(manager, monkeypatch):
    vm_id = running(manager, "vnc")
    monkeypatch.setattr(vms, "SCREENSHOT_MAX_BYTES", 1000)
    err = code_of(manager.screenshot, vm_id)
    assert err.code == ErrorCode.LIBVIRT_FAILURE and "larger than 1000 bytes" in err.message
    monkeypatch.undo()
    assert manager.screenshot(vm_id)["width"] == TEST_DRIVER_SIZE[0]  # the connection still works


# --- VM.screenshot over JSON-RPC -------------------------------------------------------


def test_jsonrpc_screenshot(manager, rpc):
    vm_id = running(manager, "spice", "vnc")
    reply = rpc.result("VM.screenshot", {"vmID": vm_id})
    assert set(reply) == {"png", "width", "height", "mimeType"}
    assert image(reply).size == TEST_DRIVER_SIZE
    reply = rpc.result("VM.screenshot", {"vmID": vm_id, "screen": 0, "maxWidth": 160})
    assert image(reply).size == (160, round(832 * 160 / 1120))
    # By position, in the order the schema lists them.
    assert rpc.result("VM.screenshot", [vm_id, 0, 200])["width"] == 200
    assert rpc.result("VM.screenshot", {"vmID": vm_id, "maxWidth": None})["width"] == TEST_DRIVER_SIZE[0]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"screen": 4}, "screen"),
        ({"screen": -1}, "screen"),
        ({"screen": True}, "screen"),
        ({"screen": 0.5}, "screen"),
        ({"screen": "one"}, "screen"),
        ({"maxWidth": 15}, "maxWidth"),
        ({"maxWidth": 4097}, "maxWidth"),
        ({"maxWidth": False}, "maxWidth"),
        ({"maxWidth": "wide"}, "maxWidth"),
        ({"format": "jpeg"}, "format"),
        ({"vmID": "not-a-uuid"}, "vmID"),
    ],
)
def test_jsonrpc_params_are_validated(manager, rpc, extra, field):
    vm_id = running(manager, "vnc")
    err = rpc.error("VM.screenshot", {"vmID": vm_id, **extra})
    assert err["code"] == ErrorCode.INVALID_PARAMS and err["data"]["field"] == field


def test_jsonrpc_errors(manager, rpc):
    err = rpc.error("VM.screenshot", {})
    assert err["code"] == ErrorCode.INVALID_PARAMS and err["data"]["field"] == "vmID"
    assert rpc.error("VM.screenshot", {"vmID": str(uuid.uuid4())})["code"] == ErrorCode.NO_SUCH_VM
    headless = rpc.error("VM.screenshot", {"vmID": running(manager, video="none")})
    assert headless["code"] == ErrorCode.NO_SUCH_DEVICE and "headless" in headless["message"]
    stopped = running(manager, "vnc")
    manager.conn.get().lookupByUUIDString(stopped).destroy()
    assert rpc.error("VM.screenshot", {"vmID": stopped})["code"] == ErrorCode.VM_NOT_RUNNING


def test_schema_lists_the_method(rpc):
    schema = rpc.client.get("/jsonrpc/schema").json()
    method = schema["methods"]["VM.screenshot"]
    props = method["params"]["properties"]
    assert list(props) == ["vmID", "screen", "maxWidth"]
    assert method["params"]["required"] == ["vmID"]
    assert (props["screen"]["minimum"], props["screen"]["maximum"], props["screen"]["default"]) == (0, 3, 0)
    width = next(s for s in props["maxWidth"]["anyOf"] if s.get("type") == "integer")
    assert (width["minimum"], width["maximum"]) == (16, 4096)
    result = method["result"]
    assert set(result["required"]) == {"png", "width", "height", "mimeType"}
    assert result["properties"]["mimeType"]["const"] == "image/png"
    assert "VM.screenshot" in api.METHODS
