"""vmCreate parameters for a VM, in the form its cluster level calls for (pure).

From 3.4 graphics travel as devices; below, as the legacy top-level `display`
field (one console), which old hosts understand.
"""

from __future__ import annotations

from multiconsole.domain.devices import GraphicsType, VideoModel
from multiconsole.domain.display import DisplayConfig, multi_console

# The video card's own defaults (KiB), as oVirt sends them.
VIDEO_DEFAULTS = {
    VideoModel.QXL: {"vram": 32768, "ram": 65536, "vgamem": 16384},
    VideoModel.VGA: {"vram": 16384},
    VideoModel.CIRRUS: {"vram": 16384},
    VideoModel.BOCHS: {"vram": 16384},
    VideoModel.VIRTIO: {},
    VideoModel.NONE: {},
}
SECURE_CHANNEL_PREFIX = "s"


def _video_device(d: DisplayConfig) -> dict:
    spec = {k: str(v) for k, v in VIDEO_DEFAULTS[d.video].items()}
    if d.vram is not None and d.video != VideoModel.NONE:
        spec["vram"] = str(d.vram)
    if d.video != VideoModel.NONE:
        spec["heads"] = str(d.monitors)
    dev = {"type": "video", "device": d.video.value, "specParams": spec}
    if "video" in d.device_ids:
        dev["deviceId"] = d.device_ids["video"]
    return dev


def _graphics_spec(d: DisplayConfig, g: GraphicsType) -> dict:
    spec: dict[str, str] = {}
    if d.keyboard_layout:
        spec["keyMap"] = d.keyboard_layout
    if g == GraphicsType.SPICE:
        spec["copyPasteEnable"] = str(d.copy_paste).lower()
        spec["fileTransferEnable"] = str(d.file_transfer).lower()
        if d.spice_secure_channels:
            spec["spiceSecureChannels"] = ",".join(SECURE_CHANNEL_PREFIX + c for c in d.spice_secure_channels)
    return spec


def drive_devices(
    drives: dict | None, images: dict[str, tuple[str, str]], disk_dir: str | None = None
) -> list[dict]:
    """vdsm-style `disk` devices for a VM's drives. `images`: image id -> (sha256, format).

    The host fills in each `path`: a CD-ROM's from its cache of `imageID` (a sha256); a
    disk's is the VM's own overlay `volumeID` of `imageID` (or an empty disk of `size`
    GiB), under `diskDir` when the cluster shares one, else on the host."""
    if not drives:
        return []
    boot = list(drives.get("boot") or [])
    order = iter(range(1, 100))
    devices = []
    if drives.get("cdrom"):
        sha, _fmt = images[drives["cdrom"]]
        dev = {"type": "disk", "device": "cdrom", "iface": "sata", "format": "raw", "readonly": "true"}
        dev.update(imageID=sha, path="")
        devices.append(dev)
    for d in drives.get("disks", []):
        dev = {"type": "disk", "device": "disk", "iface": "virtio", "format": "qcow2", "path": ""}
        dev.update(volumeID=d["id"], deviceId=d["id"])
        if d.get("image"):
            sha, fmt = images[d["image"]]
            dev.update(imageID=sha, baseFormat="raw" if fmt == "iso" else fmt)
        else:
            dev["size"] = str(d["size_gib"])
        if disk_dir:
            dev["diskDir"] = disk_dir
        devices.append(dev)
    # bootOrder as vdsm sends it: the CD-ROM, then the disks, in the order asked for.
    for kind in boot:
        for dev in devices:
            if dev["device"] == kind:
                dev["bootOrder"] = str(next(order))
                if kind == "disk":
                    break  # the first disk boots; BIOSes try the others on their own
    return devices


def vm_create(
    *,
    vm_id: str,
    name: str,
    memory_mib: int,
    vcpus: int,
    display: DisplayConfig,
    cluster_level: str,
    drives: list[dict] | None = None,
) -> dict:
    params: dict = {"vmId": vm_id, "vmName": name, "memSize": memory_mib, "smp": str(vcpus)}
    devices = [_video_device(display), *(drives or [])]
    if multi_console(cluster_level):
        for g in display.graphics:
            dev = {"type": "graphics", "device": g.value, "specParams": _graphics_spec(display, g)}
            if g.value in display.device_ids:
                dev["deviceId"] = display.device_ids[g.value]
            devices.append(dev)
        params["devices"] = devices
        return params

    # Legacy form: at most one console (the rules refuse more below 3.4).
    params["devices"] = devices
    if display.graphics:
        g = display.graphics[0]
        params["display"] = "qxl" if g == GraphicsType.SPICE else "vnc"
        params["displayPort"] = -1
        params["displaySecurePort"] = -1
        legacy = _graphics_spec(display, g)
        if "keyMap" in legacy:
            params["keyboardLayout"] = legacy.pop("keyMap")
        params.update(legacy)
        if g == GraphicsType.SPICE:
            params["spiceMonitors"] = str(display.monitors)
    return params
