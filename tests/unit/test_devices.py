"""domain/devices.py: the values every layer shares, pinned (they reach libvirt's XML and QEMU)."""

from __future__ import annotations

import dataclasses

import pytest

from multiconsole.domain.devices import (
    IDE_MAX,
    LOCKED_PASSWORD,
    LOCKED_VALID_TO,
    SPICE_CHANNELS,
    VNC_PASSWORD_MAX,
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


def test_constants():
    assert LOCKED_PASSWORD == "*****"
    assert LOCKED_VALID_TO == "1970-01-01T00:00:01"
    assert VNC_PASSWORD_MAX == 8
    assert IDE_MAX == 4
    assert SPICE_CHANNELS == (
        "main", "display", "inputs", "cursor", "playback", "record", "smartcard", "usbredir",
    )  # fmt: skip


def test_enum_values():
    assert [g.value for g in GraphicsType] == ["spice", "vnc"]
    assert [v.value for v in VideoModel] == ["qxl", "vga", "cirrus", "bochs", "virtio", "none"]
    assert [d.value for d in DriveDevice] == ["disk", "cdrom"]
    assert [f.value for f in DriveFormat] == ["raw", "qcow2"]
    assert [b.value for b in DriveBus] == ["virtio", "sata", "ide"]


def test_defaults():
    g = Graphics(GraphicsType.VNC)
    assert (g.keymap, g.listen_address, g.listen_network, g.secure_channels, g.device_id) == (
        None, None, None, (), None,
    )  # fmt: skip
    assert (g.copy_paste, g.file_transfer, g.image_compression) == (True, True, True)
    v = Video(VideoModel.QXL)
    assert (v.vram, v.heads, v.ram, v.vgamem, v.device_id, v.address) == (None,) * 6
    d = Drive(DriveDevice.DISK, "/x.qcow2")
    assert (d.format, d.bus, d.readonly, d.boot_order, d.device_id) == (
        DriveFormat.RAW, DriveBus.VIRTIO, False, None, None,
    )  # fmt: skip
    spec = VmSpec("id", "name", 256, 1)
    assert (spec.video, spec.graphics, spec.drives) == ((), (), ())


@pytest.mark.parametrize(
    "value",
    [
        PciAddress(0, 0, 2, 0),
        Video(VideoModel.QXL),
        Graphics(GraphicsType.SPICE),
        Drive(DriveDevice.CDROM, None),
        VmSpec("id", "name", 256, 1),
    ],
)
def test_values_are_frozen(value):
    field = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)


def test_spec_lookups():
    spice = Graphics(GraphicsType.SPICE, keymap=None)
    vnc = Graphics(GraphicsType.VNC, keymap="de")
    spec = VmSpec("id", "name", 256, 1, graphics=(spice, vnc))
    assert spec.graphics_of(GraphicsType.VNC) is vnc
    assert spec.graphics_of(GraphicsType.SPICE) is spice
    assert spec.keymap == "de"  # the first console that names a layout
    assert not spec.headless
    bare = VmSpec("id", "name", 256, 1)
    assert bare.headless and bare.keymap is None and bare.graphics_of(GraphicsType.VNC) is None
