"""Domain XML: build it from a VmSpec, read consoles back from live XML, edit tickets.

Built with lxml only. Devices are written in a fixed order: drives, the serial console,
then VNC before SPICE, because QEMU has one audio backend and libvirt hands it to the last
graphics device. The guest learns its VM's name and keyboard layout from SMBIOS OEM
strings ("multiconsole:name=...", "multiconsole:keymap=..."; the demo guest reads them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lxml import etree

from multiconsole.domain.devices import (
    LOCKED_PASSWORD,
    LOCKED_VALID_TO,
    SPICE_CHANNELS,
    Drive,
    DriveBus,
    DriveDevice,
    Graphics,
    GraphicsType,
    Video,
    VideoModel,
    VmSpec,
)
from multiconsole.wire.stats import LiveConsole

METADATA_NS = "urn:multiconsole:vm:1"
METADATA_TAG = f"{{{METADATA_NS}}}vm"
OEM_PREFIX = "multiconsole:"
# Target device names by bus: vda, sda, hda, ...
TARGET_PREFIX = {DriveBus.VIRTIO: "vd", DriveBus.SATA: "sd", DriveBus.IDE: "hd"}


@dataclass(frozen=True)
class HostDisplay:
    """What the host decides about consoles, beyond what the engine sent."""

    virt_type: str = "qemu"  # kvm, qemu or test
    arch: str = "x86_64"
    listen_address: str = "0.0.0.0"
    spice_tls: bool = False


def build(spec: VmSpec, params: dict, host: HostDisplay) -> str:
    """The persistent domain definition for a VM, with its vmParams kept in metadata."""
    dom = etree.Element("domain", type=host.virt_type)
    etree.SubElement(dom, "name").text = spec.name
    etree.SubElement(dom, "uuid").text = spec.vm_id
    meta = etree.SubElement(dom, "metadata")
    vm = etree.SubElement(meta, METADATA_TAG, nsmap={"mc": METADATA_NS})
    etree.SubElement(vm, f"{{{METADATA_NS}}}params").text = json.dumps(params, sort_keys=True)
    etree.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mib)
    etree.SubElement(dom, "vcpu").text = str(spec.vcpus)
    dom.append(_sysinfo(spec))
    os_el = etree.SubElement(dom, "os")
    etree.SubElement(os_el, "type", arch=host.arch).text = "hvm"
    # libvirt refuses <os><boot> beside per-device boot orders: one or the other.
    if not any(d.boot_order for d in spec.drives):
        etree.SubElement(os_el, "boot", dev="hd")
        if any(d.device == DriveDevice.CDROM for d in spec.drives):
            etree.SubElement(os_el, "boot", dev="cdrom")
    etree.SubElement(os_el, "smbios", mode="sysinfo")
    features = etree.SubElement(dom, "features")
    etree.SubElement(features, "acpi")
    etree.SubElement(dom, "clock", offset="utc")
    for event, action in (
        ("on_poweroff", "destroy"),
        ("on_reboot", "restart"),
        ("on_crash", "destroy"),
    ):
        etree.SubElement(dom, event).text = action

    devices = etree.SubElement(dom, "devices")
    for drive, target in zip(spec.drives, _targets(spec.drives), strict=True):
        devices.append(_disk(drive, target))
    # A serial port on a pty, with the console on it: the guest's ttyS0, to stream later.
    serial = etree.SubElement(devices, "serial", type="pty")
    etree.SubElement(serial, "target", port="0")
    console = etree.SubElement(devices, "console", type="pty")
    etree.SubElement(console, "target", type="serial", port="0")
    graphics = sorted(spec.graphics, key=lambda g: g.type == GraphicsType.SPICE)
    if spec.graphics_of(GraphicsType.VNC):
        # An absolute pointer: without it the VNC cursor drifts from the guest's.
        etree.SubElement(devices, "input", type="tablet", bus="usb")
    if spec.graphics_of(GraphicsType.SPICE):
        channel = etree.SubElement(devices, "channel", type="spicevmc")
        etree.SubElement(channel, "target", type="virtio", name="com.redhat.spice.0")
    for g in graphics:
        devices.append(_graphics(g, host))
    for i, video in enumerate(spec.video):
        devices.append(_video(video, primary=i == 0 and len(spec.video) > 1))
    etree.SubElement(devices, "memballoon", model="none")
    return etree.tostring(dom, encoding="unicode")


def _sysinfo(spec: VmSpec) -> etree._Element:
    """SMBIOS tables: who made the machine, and OEM strings naming the VM and its layout."""
    el = etree.Element("sysinfo", type="smbios")
    system = etree.SubElement(el, "system")
    for name, value in (
        ("manufacturer", "multiconsole"),
        ("product", "multiconsole VM"),
        ("family", "multiconsole"),
    ):
        etree.SubElement(system, "entry", name=name).text = value
    oem = etree.SubElement(el, "oemStrings")
    etree.SubElement(oem, "entry").text = f"{OEM_PREFIX}name={spec.name}"
    if spec.keymap:
        etree.SubElement(oem, "entry").text = f"{OEM_PREFIX}keymap={spec.keymap}"
    return el


def _targets(drives: tuple[Drive, ...]) -> list[str]:
    """Guest device names in the order the engine sent the drives, counted per bus."""
    used: dict[DriveBus, int] = {}
    out = []
    for d in drives:
        n = used.get(d.bus, 0)
        used[d.bus] = n + 1
        out.append(TARGET_PREFIX[d.bus] + chr(ord("a") + n))  # at most 16 drives: a..p
    return out


def _disk(d: Drive, target: str) -> etree._Element:
    el = etree.Element("disk", type="file", device=d.device.value)
    # The format is always declared: QEMU must never probe it (a raw image could pose as qcow2).
    etree.SubElement(el, "driver", name="qemu", type=d.format.value)
    if d.path is not None:
        etree.SubElement(el, "source", file=d.path)
    etree.SubElement(el, "target", dev=target, bus=d.bus.value)
    if d.boot_order is not None:
        etree.SubElement(el, "boot", order=str(d.boot_order))
    if d.readonly:
        etree.SubElement(el, "readonly")
    if d.device_id:
        etree.SubElement(el, "serial").text = d.device_id[:20]
    return el


def _graphics(g: Graphics, host: HostDisplay) -> etree._Element:
    el = etree.Element("graphics", type=g.type.value, autoport="yes")
    el.set("passwd", LOCKED_PASSWORD)
    el.set("passwdValidTo", LOCKED_VALID_TO)
    if g.keymap:
        el.set("keymap", g.keymap)
    if g.listen_network:
        etree.SubElement(el, "listen", type="network", network=g.listen_network)
    else:
        address = g.listen_address or host.listen_address
        el.set("listen", address)
        etree.SubElement(el, "listen", type="address", address=address)
    if g.type == GraphicsType.SPICE:
        # Secure channels need a TLS port, which libvirt gives only when the host has
        # SPICE TLS certificates; without them the channels stay on the plain port.
        if host.spice_tls:
            # Every channel secure: a TLS-only console (no plain port at all).
            if set(SPICE_CHANNELS) <= set(g.secure_channels):
                el.set("defaultMode", "secure")
            for name in g.secure_channels:
                etree.SubElement(el, "channel", name=name, mode="secure")
        if not g.image_compression:
            etree.SubElement(el, "image", compression="off")
        if not g.copy_paste:
            etree.SubElement(el, "clipboard", copypaste="no")
        if not g.file_transfer:
            etree.SubElement(el, "filetransfer", enable="no")
    return el


def _video(v: Video, primary: bool) -> etree._Element:
    el = etree.Element("video")
    model = etree.SubElement(el, "model", type=v.model.value)
    if v.model != VideoModel.NONE:
        for attr in ("vram", "heads", "ram", "vgamem"):
            value = getattr(v, attr)
            if value is not None:
                model.set(attr, str(value))
        if primary:
            model.set("primary", "yes")
    if v.address is not None:
        a = v.address
        etree.SubElement(
            el,
            "address",
            type="pci",
            domain=f"{a.domain:#06x}",
            bus=f"{a.bus:#04x}",
            slot=f"{a.slot:#04x}",
            function=f"{a.function:#x}",
        )
    return el


# --- reading live XML ------------------------------------------------------------


def _int_attr(el: etree._Element, name: str) -> int | None:
    value = el.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def live_consoles(xml: str) -> list[LiveConsole]:
    """Graphics devices of a domain in document order, with their ports and address."""
    root = etree.fromstring(xml.encode())
    out = []
    for el in root.iterfind("devices/graphics"):
        try:
            gtype = GraphicsType(el.get("type"))
        except ValueError:
            continue  # sdl, rdp, ...: not ours to report
        listen = el.find("listen")
        address = el.get("listen") or (listen.get("address") if listen is not None else None)
        port = _int_attr(el, "port")
        tls = _int_attr(el, "tlsPort") if gtype == GraphicsType.SPICE else None
        out.append(
            LiveConsole(
                type=gtype,
                port=port if port is not None else -1,
                tls_port=tls,
                address=address or "",
            )
        )
    return out


OWNER_MARK = f'<mc:vm xmlns:mc="{METADATA_NS}"'


def is_ours(xml: str) -> bool:
    """Cheap test for our metadata element (libvirt keeps its prefix and namespace as written;
    text content cannot hold this string since libvirt escapes quotes and angle brackets)."""
    return OWNER_MARK in xml


def stored_params(xml: str) -> dict | None:
    """The vmParams the agent kept in the domain's metadata; None for foreign domains."""
    root = etree.fromstring(xml.encode())
    el = root.find(f"metadata/{METADATA_TAG}/{{{METADATA_NS}}}params")
    if el is None or not el.text:
        return None
    try:
        params = json.loads(el.text)
    except ValueError:
        return None
    return params if isinstance(params, dict) else None


def ticket_update(
    xml: str,
    gtype: GraphicsType,
    password: str,
    valid_to: str,
    connected: str | None,
) -> str:
    """The live <graphics> element of `gtype`, with a new password: what updateDeviceFlags takes.

    libvirt wants the whole live element (listen, ports, channels) or it refuses the
    update, so this edits that element rather than writing a new one.
    """
    root = etree.fromstring(xml.encode())
    for el in root.iterfind("devices/graphics"):
        if el.get("type") == gtype.value:
            el.set("passwd", password)
            el.set("passwdValidTo", valid_to)
            if connected:
                el.set("connected", connected)
            elif "connected" in el.attrib:
                del el.attrib["connected"]
            el.tail = None
            return etree.tostring(el, encoding="unicode")
    raise LookupError(gtype)


def screens(xml: str) -> int:
    """How many screens a domain shows: the heads of its video devices (model 'none' has none)."""
    root = etree.fromstring(xml.encode())
    total = 0
    for model in root.iterfind("devices/video/model"):
        if model.get("type") in (None, VideoModel.NONE.value):
            continue
        heads = _int_attr(model, "heads")
        total += heads if heads and heads > 0 else 1
    return total
