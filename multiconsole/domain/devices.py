"""Display devices as plain values: a VM has video cards and graphics framebuffers.

`video` is the emulated card (QXL, VGA, ...); `graphics` is the remote framebuffer
protocol (SPICE, VNC) that shows it. A VM may have one graphics device per type, so
SPICE and VNC can serve the same screen at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class GraphicsType(StrEnum):
    SPICE = "spice"
    VNC = "vnc"


class VideoModel(StrEnum):
    QXL = "qxl"
    VGA = "vga"
    CIRRUS = "cirrus"
    BOCHS = "bochs"
    VIRTIO = "virtio"
    NONE = "none"


# SPICE channels that may be forced onto the TLS port.
SPICE_CHANNELS = (
    "main",
    "display",
    "inputs",
    "cursor",
    "playback",
    "record",
    "smartcard",
    "usbredir",
)

# Every console starts locked: a placeholder password that expired long ago.
LOCKED_PASSWORD = "*****"
LOCKED_VALID_TO = "1970-01-01T00:00:01"

# VNC authentication is DES based: only 8 characters of a password count, and
# libvirt refuses longer ones.
VNC_PASSWORD_MAX = 8


@dataclass(frozen=True)
class PciAddress:
    domain: int
    bus: int
    slot: int
    function: int


@dataclass(frozen=True)
class Video:
    model: VideoModel
    vram: int | None = None  # KiB
    heads: int | None = None
    ram: int | None = None  # KiB, qxl only
    vgamem: int | None = None  # KiB, qxl only
    device_id: str | None = None
    address: PciAddress | None = None


@dataclass(frozen=True)
class Graphics:
    type: GraphicsType
    keymap: str | None = None
    listen_address: str | None = None  # an IP literal; None = the host's default
    listen_network: str | None = None  # a libvirt network name, instead of an address
    secure_channels: tuple[str, ...] = ()  # SPICE only
    copy_paste: bool = True  # SPICE only
    file_transfer: bool = True  # SPICE only
    image_compression: bool = True  # SPICE only; legacy display 'qxlnc' turns it off
    device_id: str | None = None


class DriveDevice(StrEnum):
    DISK = "disk"
    CDROM = "cdrom"


class DriveFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


class DriveBus(StrEnum):
    VIRTIO = "virtio"
    SATA = "sata"
    IDE = "ide"


# IDE has two channels of two units each.
IDE_MAX = 4


@dataclass(frozen=True)
class Drive:
    """A disk or CD-ROM: a host file of a declared format (QEMU never probes it)."""

    device: DriveDevice
    path: str | None  # absolute; None only for an empty CD-ROM tray
    format: DriveFormat = DriveFormat.RAW
    bus: DriveBus = DriveBus.VIRTIO
    readonly: bool = False  # always True for a CD-ROM
    boot_order: int | None = None  # 1 boots first; None: not a boot device
    device_id: str | None = None


@dataclass(frozen=True)
class VmSpec:
    """What the host needs to know to run a VM: identity, size, display devices and drives."""

    vm_id: str
    name: str
    memory_mib: int
    vcpus: int
    video: tuple[Video, ...] = ()
    # In the order the engine sent them: the first one is the "first console" of the
    # legacy VM.setTicket call.
    graphics: tuple[Graphics, ...] = field(default_factory=tuple)
    drives: tuple[Drive, ...] = ()

    @property
    def headless(self) -> bool:
        return not self.graphics

    def graphics_of(self, gtype: GraphicsType) -> Graphics | None:
        return next((g for g in self.graphics if g.type == gtype), None)

    @property
    def keymap(self) -> str | None:
        """The keyboard layout of the VM's consoles (the first one that names one)."""
        return next((g.keymap for g in self.graphics if g.keymap), None)
