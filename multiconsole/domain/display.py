"""A VM's (or template's) display configuration as the engine keeps it, and its rules.

The rules (the feature page's "which video goes with which console", one console per
protocol, monitors, headless) live here, in one place, and every entry point (REST API,
CLI, web UI, oVirt API) goes through `violations`: each broken rule is a FieldError
naming the field, all of them at once, so a form can explain each beside its field.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from multiconsole.domain.devices import GraphicsType, VideoModel
from multiconsole.domain.errors import FieldError

LEVEL_MULTI_CONSOLE = (3, 4)
CLUSTER_LEVELS = ("3.3", "3.4", "4.0", "4.7")
ARCHES = ("x86_64", "ppc64")
KEYMAP_RE = re.compile(r"^[a-z]{2,3}(-[a-z]{2,8})?$")
SPICE_MONITORS = (1, 2, 4)


class DisconnectAction(StrEnum):
    NONE = "NONE"
    LOCK_SCREEN = "LOCK_SCREEN"
    LOGOUT = "LOGOUT"
    SHUTDOWN = "SHUTDOWN"
    REBOOT = "REBOOT"


_DEFAULT_PAIRS = frozenset(
    {
        (GraphicsType.SPICE, VideoModel.QXL),
        (GraphicsType.VNC, VideoModel.VGA),
        (GraphicsType.VNC, VideoModel.QXL),
        (GraphicsType.VNC, VideoModel.CIRRUS),
        (GraphicsType.VNC, VideoModel.BOCHS),
    }
)
_PPC_PAIRS = frozenset({(GraphicsType.VNC, VideoModel.VGA)})


@dataclass(frozen=True)
class OsType:
    name: str
    label: str
    arch: str
    pairs: frozenset  # allowed (graphics, video) pairs, as osinfo's graphics/video list


OS_TYPES = {
    o.name: o
    for o in (
        OsType("other", "Other OS", "x86_64", _DEFAULT_PAIRS),
        OsType("other_linux", "Linux", "x86_64", _DEFAULT_PAIRS),
        OsType("debian_12", "Debian 12", "x86_64", _DEFAULT_PAIRS),
        OsType("rhel_9x64", "Red Hat Enterprise Linux 9.x x64", "x86_64", _DEFAULT_PAIRS),
        OsType("ubuntu_24_04", "Ubuntu 24.04", "x86_64", _DEFAULT_PAIRS),
        OsType("windows_11", "Windows 11", "x86_64", _DEFAULT_PAIRS),
        OsType("windows_2022", "Windows Server 2022", "x86_64", _DEFAULT_PAIRS),
        OsType("other_ppc64", "Other OS (ppc64)", "ppc64", _PPC_PAIRS),
        OsType("other_linux_ppc64", "Linux (ppc64)", "ppc64", _PPC_PAIRS),
        OsType("rhel_9_ppc64", "Red Hat Enterprise Linux 9.x (ppc64)", "ppc64", _PPC_PAIRS),
    )
}


def level_tuple(level: str) -> tuple[int, int]:
    major, minor = level.split(".")
    return int(major), int(minor)


def multi_console(level: str) -> bool:
    """Clusters from 3.4 on send graphics as devices and allow SPICE and VNC together."""
    return level_tuple(level) >= LEVEL_MULTI_CONSOLE


@dataclass(frozen=True)
class DisplayConfig:
    video: VideoModel = VideoModel.QXL
    graphics: tuple[GraphicsType, ...] = (GraphicsType.SPICE, GraphicsType.VNC)
    monitors: int = 1
    vram: int | None = None  # KiB; None = the video model's default
    keyboard_layout: str | None = None
    copy_paste: bool = True
    file_transfer: bool = True
    spice_secure_channels: tuple[str, ...] = ()
    disconnect_action: DisconnectAction = DisconnectAction.LOCK_SCREEN
    allow_reconnect: bool = False
    # Stable device ids, so the host sees the same device across restarts.
    device_ids: dict[str, str] = field(default_factory=dict)

    @property
    def headless(self) -> bool:
        return not self.graphics

    def to_json(self) -> dict:
        data = asdict(self)
        data["video"] = self.video.value
        data["graphics"] = [g.value for g in self.graphics]
        data["spice_secure_channels"] = list(self.spice_secure_channels)
        data["disconnect_action"] = self.disconnect_action.value
        return data

    @classmethod
    def from_json(cls, data: dict) -> DisplayConfig:
        return cls(
            video=VideoModel(data["video"]),
            graphics=tuple(GraphicsType(g) for g in data.get("graphics", ())),
            monitors=data.get("monitors", 1),
            vram=data.get("vram"),
            keyboard_layout=data.get("keyboard_layout"),
            copy_paste=data.get("copy_paste", True),
            file_transfer=data.get("file_transfer", True),
            spice_secure_channels=tuple(data.get("spice_secure_channels", ())),
            disconnect_action=DisconnectAction(data.get("disconnect_action", "LOCK_SCREEN")),
            allow_reconnect=data.get("allow_reconnect", False),
            device_ids=dict(data.get("device_ids", {})),
        )

    def with_console(self, gtype: GraphicsType) -> DisplayConfig:
        """Add a console; a headless VM gets a video card that can show it."""
        if gtype in self.graphics:
            raise FieldError("protocol", f"the VM already has a {gtype.value} console")
        video = self.video
        if video == VideoModel.NONE or (gtype == GraphicsType.SPICE and video != VideoModel.QXL):
            video = VideoModel.QXL if gtype == GraphicsType.SPICE else VideoModel.VGA
        return replace(self, video=video, graphics=(*self.graphics, gtype))

    def without_console(self, gtype: GraphicsType) -> DisplayConfig:
        """Remove a console; removing the last one makes the VM headless."""
        if gtype not in self.graphics:
            raise FieldError("protocol", f"the VM has no {gtype.value} console")
        graphics = tuple(g for g in self.graphics if g != gtype)
        if not graphics:
            return replace(self, graphics=(), video=VideoModel.NONE, monitors=1)
        return replace(self, graphics=graphics)


def violations(display: DisplayConfig, os_type: str, cluster_level: str, arch: str) -> list[FieldError]:
    """Every rule the configuration breaks, each naming its field."""
    out: list[FieldError] = []
    os = OS_TYPES.get(os_type)
    if os is None:
        out.append(FieldError("os_type", f"unknown OS type {os_type!r}"))
    elif os.arch != arch:
        out.append(FieldError("os_type", f"{os.label} runs on {os.arch}, the cluster is {arch}"))
    if cluster_level not in CLUSTER_LEVELS:
        out.append(FieldError("cluster", f"unknown compatibility level {cluster_level!r}"))
        return out

    graphics = display.graphics
    if len(set(graphics)) != len(graphics):
        out.append(FieldError("graphics", "only one console per protocol"))
    if len(graphics) > 1 and not multi_console(cluster_level):
        out.append(
            FieldError("graphics", f"clusters below 3.4 allow one console (this one is {cluster_level})")
        )
    if graphics and display.video == VideoModel.NONE:
        out.append(FieldError("video", "video 'none' is headless: it cannot show a console"))
    if display.headless and display.video != VideoModel.NONE:
        out.append(FieldError("video", "a VM without consoles is headless: its video must be 'none'"))
    if os is not None:
        for g in dict.fromkeys(graphics):
            if (g, display.video) not in os.pairs:
                out.append(FieldError("video", _pair_reason(g, display.video, os)))
    if GraphicsType.VNC in graphics and display.monitors != 1:
        out.append(FieldError("monitors", "VNC allows one monitor"))
    elif display.monitors not in SPICE_MONITORS:
        out.append(FieldError("monitors", "SPICE allows 1, 2 or 4 monitors"))
    elif display.monitors > 1 and display.headless:
        out.append(FieldError("monitors", "a headless VM has no monitors"))
    if display.keyboard_layout is not None and not KEYMAP_RE.fullmatch(display.keyboard_layout):
        out.append(FieldError("keyboard_layout", f"{display.keyboard_layout!r} is not a layout like en-us"))
    return out


def _pair_reason(g: GraphicsType, video: VideoModel, os: OsType) -> str:
    fits = sorted(v.value for gg, v in os.pairs if gg == g)
    if not fits:
        return f"{os.label} does not support {g.value.upper()}"
    if g == GraphicsType.SPICE:
        return f"SPICE needs QXL video (not {video.value})"
    return f"{g.value.upper()} on {os.label} needs video {' or '.join(fits)} (not {video.value})"
