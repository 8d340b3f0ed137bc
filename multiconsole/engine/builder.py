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


def vm_create(
    *,
    vm_id: str,
    name: str,
    memory_mib: int,
    vcpus: int,
    display: DisplayConfig,
    cluster_level: str,
) -> dict:
    params: dict = {"vmId": vm_id, "vmName": name, "memSize": memory_mib, "smp": str(vcpus)}
    devices = [_video_device(display)]
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
