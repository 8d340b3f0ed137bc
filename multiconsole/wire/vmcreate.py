"""Parse and validate `vmCreate` parameters in both protocol generations.

New form (cluster level >= 3.4): graphics are regular entries of ``devices``.
Legacy form: no graphics device, a top-level ``display`` of ``vnc``, ``qxl`` or
``qxlnc`` (both SPICE; ``nc`` = no image compression), absent = headless.
Graphics devices, when present, win over ``display``.
Drives come the way vdsm sends them, in both forms: ``devices`` entries of type ``disk``
with ``device`` ``disk`` or ``cdrom``, an absolute ``path``, a ``format``, an ``iface``
and a ``bootOrder``.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import uuid
from typing import Any

from multiconsole.domain.devices import (
    IDE_MAX,
    SPICE_CHANNELS,
    Drive,
    DriveBus,
    DriveDevice,
    DriveFormat,
    Graphics,
    GraphicsType,
    PciAddress,
    Video,
    VideoModel,
    VmSpec,
)
from multiconsole.domain.errors import FieldError

LEGACY_DISPLAYS = ("vnc", "qxl", "qxlnc")
DEVICE_TYPES = ("video", "graphics", "disk")
# vdsm names qcow2 "cow".
DRIVE_FORMATS = {"raw": DriveFormat.RAW, "qcow2": DriveFormat.QCOW2, "cow": DriveFormat.QCOW2}
MAX_DRIVES = 16
BOOT_ORDER = (1, 64)
PATH_MAX = 4096
# oVirt's engine names a SPICE framebuffer "qxl" in the feature page's proposal.
GRAPHICS_ALIASES = {"spice": GraphicsType.SPICE, "qxl": GraphicsType.SPICE, "vnc": GraphicsType.VNC}

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEYMAP_RE = re.compile(r"^[a-z]{2,3}(-[a-z]{2,8})?$")
NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,49}$")
# The engine's device ids: UUIDs in practice, but the feature page sends 'blah', so any
# short opaque token is kept as given.
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

MEMORY_MIB = (16, 1024 * 1024)
VCPUS = (1, 256)
VRAM_KIB = (1024, 1024 * 1024)
HEADS = (1, 4)
MAX_VIDEO = 4
MONITORS = (1, 4)


def parse_vm_params(params: Any, vm_id: str | None = None) -> VmSpec:
    """Turn ``vmParams`` into a VmSpec, or raise FieldError naming the first bad field."""
    if not isinstance(params, dict):
        raise FieldError("vmParams", "must be an object")
    vm_id = _vm_id(params, vm_id)
    name = params.get("vmName", f"vm-{vm_id[:8]}")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FieldError(
            "vmName",
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    memory = _int(params.get("memSize", 256), "memSize", *MEMORY_MIB)
    vcpus = _int(params.get("smp", 1), "smp", *VCPUS)

    display = params.get("display")
    if display is not None and display not in LEGACY_DISPLAYS:
        raise FieldError("display", f"unknown value {display!r}: expected one of vnc, qxl, qxlnc")
    for key in ("displayPort", "displaySecurePort"):
        if key in params:
            _int(params[key], key, -1, 65535)

    if "devices" in params:
        devices = params["devices"]
        if not isinstance(devices, list):
            raise FieldError("devices", "must be a list of device objects")
        video, graphics, drives = _devices(devices)
        if not graphics and display is not None:
            graphics = (_legacy_graphics(params, display),)
    else:
        graphics = (_legacy_graphics(params, display),) if display is not None else ()
        video = _default_video(params, display)
        drives = ()

    if graphics and video and video[0].model == VideoModel.NONE:
        raise FieldError("devices", "video 'none' cannot show a graphics console: pick another video")
    return VmSpec(
        vm_id=vm_id,
        name=name,
        memory_mib=memory,
        vcpus=vcpus,
        video=video,
        graphics=graphics,
        drives=drives,
    )


def _vm_id(params: dict, vm_id: str | None) -> str:
    given = params.get("vmId", vm_id)
    field = "vmId" if "vmId" in params else "vmID"
    if not isinstance(given, str):
        raise FieldError(field, "must be a UUID string")
    try:
        canonical = str(uuid.UUID(given))
    except ValueError:
        raise FieldError(field, f"{given!r} is not a UUID") from None
    if vm_id is not None and "vmId" in params:
        try:
            other = str(uuid.UUID(vm_id))
        except ValueError:
            raise FieldError("vmID", f"{vm_id!r} is not a UUID") from None
        if other != canonical:
            raise FieldError("vmParams.vmId", "differs from the vmID of the call")
    return canonical


def _devices(devices: list) -> tuple[tuple[Video, ...], tuple[Graphics, ...], tuple[Drive, ...]]:
    video: list[Video] = []
    graphics: list[Graphics] = []
    drives: list[tuple[str, Drive]] = []
    for i, dev in enumerate(devices):
        where = f"devices[{i}]"
        if not isinstance(dev, dict):
            raise FieldError(where, "must be an object")
        dtype = dev.get("type")
        if dtype not in DEVICE_TYPES:
            raise FieldError(
                f"{where}.type", f"unknown device type {dtype!r}: expected video, graphics or disk"
            )
        spec = dev.get("specParams", {})
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise FieldError(f"{where}.specParams", "must be an object")
        device_id = _device_id(dev, where)
        if dtype == "disk":
            drives.append((where, _drive(dev, where, device_id)))
        elif dtype == "video":
            video.append(_video(dev, spec, where, device_id))
        else:
            g = _graphics(dev, spec, where, device_id)
            if any(other.type == g.type for other in graphics):
                raise FieldError(
                    f"{where}.device",
                    f"only one graphics device per type: a second {g.type} device",
                )
            graphics.append(g)
    if len(video) > MAX_VIDEO:
        raise FieldError("devices", f"at most {MAX_VIDEO} video devices")
    if len(video) > 1 and any(v.model == VideoModel.NONE for v in video):
        raise FieldError("devices", "video 'none' cannot stand beside other video devices")
    _check_drives(drives)
    return tuple(video), tuple(graphics), tuple(d for _, d in drives)


def _drive(dev: dict, where: str, device_id: str | None) -> Drive:
    """One vdsm disk entry: {"type": "disk", "device": "disk"|"cdrom", "path", "format", ...}."""
    device = dev.get("device", "disk")
    if device not in ("disk", "cdrom"):
        raise FieldError(f"{where}.device", f"unknown drive {device!r}: expected disk or cdrom")
    device = DriveDevice(device)
    cdrom = device == DriveDevice.CDROM

    path = dev.get("path")
    if path in (None, "") and cdrom:
        path = None  # an empty tray
    else:
        path = _drive_path(path, f"{where}.path")

    fmt = dev.get("format")
    if fmt in (None, "") and cdrom:
        fmt = "raw"
    if not isinstance(fmt, str) or fmt not in DRIVE_FORMATS:
        raise FieldError(f"{where}.format", f"unknown format {fmt!r}: expected raw or qcow2")
    fmt = DRIVE_FORMATS[fmt]
    if cdrom and fmt != DriveFormat.RAW:
        raise FieldError(f"{where}.format", "a cdrom is a raw ISO image")

    iface = dev.get("iface")
    if iface in (None, ""):
        iface = "ide" if cdrom else "virtio"
    if iface not in DriveBus.__members__.values():
        raise FieldError(f"{where}.iface", f"unknown bus {iface!r}: expected virtio, sata or ide")
    bus = DriveBus(iface)
    if cdrom and bus == DriveBus.VIRTIO:
        raise FieldError(f"{where}.iface", "a cdrom sits on sata or ide, not virtio")

    readonly = _bool(dev.get("readonly", False), f"{where}.readonly", default=False) or cdrom
    order = dev.get("bootOrder")
    boot_order = None if order in (None, "") else _int(order, f"{where}.bootOrder", *BOOT_ORDER)
    return Drive(
        device=device,
        path=path,
        format=fmt,
        bus=bus,
        readonly=readonly,
        boot_order=boot_order,
        device_id=device_id,
    )


def _drive_path(path: Any, field: str) -> str:
    """An absolute, normalised host path: it reaches the domain XML and QEMU as it is."""
    if not isinstance(path, str) or not path:
        raise FieldError(field, "must be the absolute path of an image file")
    if len(path) > PATH_MAX or any(ord(c) < 32 or c == "\x7f" for c in path):
        raise FieldError(field, "must be a path without control characters, at most 4096 long")
    if not path.startswith("/"):
        raise FieldError(field, f"{path!r} is not an absolute path")
    # normpath drops every '..' of an absolute path, so this refuses them too.
    if posixpath.normpath(path) != path:
        raise FieldError(field, f"{path!r} is not a normalised path (no '..', '.' or '//')")
    return path


def _check_drives(drives: list[tuple[str, Drive]]) -> None:
    """Rules across drives: how many, unique boot orders, a writable file used once."""
    if len(drives) > MAX_DRIVES:
        raise FieldError("devices", f"at most {MAX_DRIVES} disk devices")
    if sum(d.bus == DriveBus.IDE for _, d in drives) > IDE_MAX:
        raise FieldError("devices", f"at most {IDE_MAX} drives on ide")
    orders: dict[int, str] = {}
    paths: dict[str, tuple[str, Drive]] = {}
    for where, d in drives:
        if d.boot_order is not None:
            if d.boot_order in orders:
                raise FieldError(
                    f"{where}.bootOrder", f"bootOrder {d.boot_order} is already {orders[d.boot_order]}'s"
                )
            orders[d.boot_order] = where
        if d.path is None:
            continue
        if d.path in paths:
            other_where, other = paths[d.path]
            if not (d.readonly and other.readonly):
                raise FieldError(
                    f"{where}.path", f"{other_where} uses the same file: only read-only drives may share one"
                )
        paths[d.path] = (where, d)


def _device_id(dev: dict, where: str) -> str | None:
    value = dev.get("deviceId")
    if value is None:
        return None
    if not isinstance(value, str) or not DEVICE_ID_RE.fullmatch(value):
        raise FieldError(
            f"{where}.deviceId",
            f"{value!r} is not a device id: 1-64 letters, digits, '-' or '_' (a UUID)",
        )
    return value


def _video(dev: dict, spec: dict, where: str, device_id: str | None) -> Video:
    model = dev.get("device")
    if model not in VideoModel.__members__.values():
        allowed = ", ".join(m.value for m in VideoModel)
        raise FieldError(f"{where}.device", f"unknown video model {model!r}: expected one of {allowed}")
    model = VideoModel(model)
    sp = f"{where}.specParams"
    values = {
        key: _int(spec[key], f"{sp}.{key}", *(HEADS if key == "heads" else VRAM_KIB))
        for key in ("vram", "heads", "ram", "vgamem")
        if spec.get(key) not in (None, "")
    }
    if model == VideoModel.NONE and values:
        raise FieldError(sp, "video 'none' takes no parameters")
    for key in ("ram", "vgamem"):
        if key in values and model != VideoModel.QXL:
            raise FieldError(f"{sp}.{key}", f"only qxl video has {key!r}")
    address = _pci_address(dev.get("address"), f"{where}.address")
    return Video(model=model, device_id=device_id, address=address, **values)


def _pci_address(value: Any, where: str) -> PciAddress | None:
    if value in (None, {}, ""):
        return None
    if not isinstance(value, dict):
        raise FieldError(where, "must be an object with type, domain, bus, slot and function")
    if value.get("type") != "pci":
        raise FieldError(f"{where}.type", "only 'pci' addresses are supported for video")
    limits = {"domain": 0xFFFF, "bus": 0xFF, "slot": 0x1F, "function": 0x7}
    parts = {}
    for key, top in limits.items():
        raw = value.get(key, "0x0" if key in ("domain", "function") else None)
        if not isinstance(raw, str | int) or isinstance(raw, bool):
            raise FieldError(f"{where}.{key}", "must be a number such as '0x02'")
        try:
            number = int(raw, 0) if isinstance(raw, str) else raw
        except ValueError:
            raise FieldError(f"{where}.{key}", f"{raw!r} is not a number") from None
        if not 0 <= number <= top:
            raise FieldError(f"{where}.{key}", f"must be between 0 and {top:#x}")
        parts[key] = number
    return PciAddress(**parts)


def _graphics(dev: dict, spec: dict, where: str, device_id: str | None) -> Graphics:
    device = dev.get("device")
    if not isinstance(device, str) or device not in GRAPHICS_ALIASES:
        raise FieldError(f"{where}.device", f"unknown graphics type {device!r}: expected spice or vnc")
    gtype = GRAPHICS_ALIASES[device]
    return _graphics_options(gtype, spec, f"{where}.specParams", device_id=device_id)


def _graphics_options(
    gtype: GraphicsType,
    spec: dict,
    where: str,
    *,
    device_id: str | None = None,
    names: dict[str, str] | None = None,
    image_compression: bool = True,
) -> Graphics:
    """Read a graphics device's options; `names` maps our keys to the caller's field names."""
    names = {
        "keyMap": "keyMap",
        "spiceSecureChannels": "spiceSecureChannels",
        "copyPasteEnable": "copyPasteEnable",
        "fileTransferEnable": "fileTransferEnable",
        "displayNetwork": "displayNetwork",
        "displayIp": "displayIp",
    } | (names or {})

    def fld(key: str) -> str:
        return f"{where}.{names[key]}" if where else names[key]

    def get(key: str) -> Any:
        return spec.get(names[key])

    keymap = get("keyMap")
    if keymap in ("", None):
        keymap = None
    elif not isinstance(keymap, str) or not KEYMAP_RE.fullmatch(keymap):
        raise FieldError(fld("keyMap"), f"{keymap!r} is not a keyboard layout such as 'en-us'")

    network = get("displayNetwork")
    if network in ("", None):
        network = None
    elif not isinstance(network, str) or not NETWORK_RE.fullmatch(network):
        raise FieldError(fld("displayNetwork"), f"{network!r} is not a network name")

    address = get("displayIp")
    if address in ("", None):
        address = None
    else:
        # Only text: ip_address(5) would be 0.0.0.5. No IPv6 scope ("fe80::1%eth0"): its
        # free text would reach the domain XML.
        try:
            if not isinstance(address, str) or "%" in address:
                raise ValueError(address)
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise FieldError(fld("displayIp"), f"{address!r} is not an IP address") from None
    if address and network:
        raise FieldError(fld("displayIp"), "give displayIp or displayNetwork, not both")

    channels: tuple[str, ...] = ()
    copy_paste = file_transfer = True
    if gtype == GraphicsType.SPICE:
        channels = _secure_channels(get("spiceSecureChannels"), fld("spiceSecureChannels"))
        copy_paste = _bool(get("copyPasteEnable"), fld("copyPasteEnable"))
        file_transfer = _bool(get("fileTransferEnable"), fld("fileTransferEnable"))
    return Graphics(
        type=gtype,
        keymap=keymap,
        listen_address=address,
        listen_network=network,
        secure_channels=channels,
        copy_paste=copy_paste,
        file_transfer=file_transfer,
        image_compression=image_compression,
        device_id=device_id,
    )


def _secure_channels(value: Any, field: str) -> tuple[str, ...]:
    if value in (None, ""):
        return ()
    if not isinstance(value, str):
        raise FieldError(field, "must be a comma-separated list such as 'smain,sinputs'")
    out: list[str] = []
    for raw in value.split(","):
        name = raw.strip()
        # oVirt prefixes each channel with 's' (smain, sinputs, ...): drop it.
        if name.startswith("s") and name[1:] in SPICE_CHANNELS:
            name = name[1:]
        if name not in SPICE_CHANNELS:
            allowed = ", ".join(SPICE_CHANNELS)
            raise FieldError(field, f"unknown SPICE channel {raw.strip()!r}: expected some of {allowed}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _legacy_graphics(params: dict, display: str) -> Graphics:
    """The one console of the legacy form, from the top-level display fields."""
    gtype = GraphicsType.VNC if display == "vnc" else GraphicsType.SPICE
    return _graphics_options(
        gtype,
        params,
        "",
        names={"keyMap": "keyboardLayout"},
        image_compression=display != "qxlnc",
    )


def _default_video(params: dict, display: str | None) -> tuple[Video, ...]:
    """Video cards the host adds itself when the engine sent no `devices` at all."""
    if display is None:
        return (Video(model=VideoModel.NONE),)
    if display == "vnc":
        return (Video(model=VideoModel.CIRRUS),)
    monitors = _int(params.get("spiceMonitors", 1), "spiceMonitors", *MONITORS)
    vram = 65536 if monitors <= 2 else 32768
    return tuple(Video(model=VideoModel.QXL, vram=vram, heads=1) for _ in range(monitors))


def _int(value: Any, field: str, low: int, high: int) -> int:
    """Integers arrive as numbers or as strings of digits (oVirt sends specParams as strings)."""
    if isinstance(value, bool):
        raise FieldError(field, "must be a whole number, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"-?\d{1,12}", text):
            raise FieldError(field, f"{value!r} is not a whole number")
        value = int(text)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise FieldError(field, "must be a whole number")
    if not low <= value <= high:
        raise FieldError(field, f"{value} is out of range {low}..{high}")
    return value


def _bool(value: Any, field: str, default: bool = True) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise FieldError(field, f"{value!r} is not 'true' or 'false'")
