"""Domain XML: build() parsed back with lxml, live XML readers, ticket edits."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from multiconsole.agent import domxml
from multiconsole.agent.domxml import HostDisplay
from multiconsole.domain.devices import LOCKED_PASSWORD, LOCKED_VALID_TO, GraphicsType
from multiconsole.wire.stats import LiveConsole
from multiconsole.wire.vmcreate import parse_vm_params

from .test_vmcreate import FEATURE_PAGE_CURRENT, FEATURE_PAGE_PROPOSAL

VM_ID = "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b01"
HOST = HostDisplay(virt_type="kvm", arch="x86_64", listen_address="0.0.0.0", spice_tls=False)
TLS_HOST = HostDisplay(virt_type="kvm", arch="x86_64", listen_address="0.0.0.0", spice_tls=True)
LOCKED = {"passwd": LOCKED_PASSWORD, "passwdValidTo": LOCKED_VALID_TO}

QXL = {"type": "video", "device": "qxl"}
SPICE = {"type": "graphics", "device": "spice"}
VNC = {"type": "graphics", "device": "vnc"}


def params(*devices: dict, **top) -> dict:
    return {"vmId": VM_ID, "vmName": "demo", "devices": list(devices), **top}


def build(p: dict, host: HostDisplay = HOST) -> etree._Element:
    xml = domxml.build(parse_vm_params(p), p, host)
    return etree.fromstring(xml.encode())


def graphics(root) -> list:
    return root.findall("devices/graphics")


def tags(root) -> list[str]:
    return [el.tag for el in root.find("devices")]


# --- build: the domain around the devices ------------------------------------------


def test_domain_identity_size_and_events():
    root = build(params(QXL, SPICE, memSize=512, smp=2))
    assert root.tag == "domain"
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "demo"
    assert root.findtext("uuid") == VM_ID
    assert root.find("memory").attrib == {"unit": "MiB"}
    assert root.findtext("memory") == "512"
    assert root.findtext("vcpu") == "2"
    assert root.find("os/type").attrib == {"arch": "x86_64"}
    assert root.findtext("os/type") == "hvm"
    assert [(e, root.findtext(e)) for e in ("on_poweroff", "on_reboot", "on_crash")] == [
        ("on_poweroff", "destroy"),
        ("on_reboot", "restart"),
        ("on_crash", "destroy"),
    ]


def test_both_consoles_device_order():
    root = build(params(QXL, SPICE, VNC))
    assert tags(root) == [
        "serial",
        "console",
        "input",
        "channel",
        "graphics",
        "graphics",
        "video",
        "memballoon",
    ]


# --- graphics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "devices",
    [(QXL, SPICE, VNC), (QXL, VNC, SPICE), (QXL, SPICE), (QXL, VNC)],
    ids=["spice-vnc", "vnc-spice", "spice", "vnc"],
)
def test_every_console_starts_locked(devices):
    root = build(params(*devices))
    assert len(graphics(root)) == len(devices) - 1
    for el in graphics(root):
        assert el.get("passwd") == "*****"
        assert el.get("passwdValidTo") == "1970-01-01T00:00:01"


@pytest.mark.parametrize("devices", [(QXL, SPICE, VNC), (QXL, VNC, SPICE)], ids=["spice-first", "vnc-first"])
def test_vnc_is_written_before_spice(devices):
    assert [g.get("type") for g in graphics(build(params(*devices)))] == ["vnc", "spice"]


def test_plain_graphics_attributes():
    vnc, spice = graphics(build(params(QXL, SPICE, VNC)))
    base = {"autoport": "yes", "listen": "0.0.0.0", **LOCKED}
    assert dict(vnc.attrib) == {"type": "vnc", **base}
    assert dict(spice.attrib) == {"type": "spice", **base}
    for el in (vnc, spice):
        assert [(c.tag, dict(c.attrib)) for c in el] == [
            ("listen", {"type": "address", "address": "0.0.0.0"})
        ]


def test_keymap_and_listen_address():
    spec_params = {"keyMap": "de", "displayIp": "10.0.0.5"}
    (vnc,) = graphics(build(params(QXL, {**VNC, "specParams": spec_params})))
    assert vnc.get("keymap") == "de"
    assert vnc.get("listen") == "10.0.0.5"
    assert dict(vnc.find("listen").attrib) == {"type": "address", "address": "10.0.0.5"}


def test_listen_on_host_address_by_default():
    host = HostDisplay(listen_address="192.0.2.1")
    (vnc,) = graphics(build(params(QXL, VNC), host))
    assert vnc.get("listen") == "192.0.2.1"


def test_display_network_listens_on_the_network():
    (spice,) = graphics(build(params(QXL, {**SPICE, "specParams": {"displayNetwork": "mgmt"}})))
    assert spice.get("listen") is None
    assert [(c.tag, dict(c.attrib)) for c in spice] == [("listen", {"type": "network", "network": "mgmt"})]


def test_spicevmc_channel_only_with_spice():
    def channels(devices):
        root = build(params(*devices))
        return [(dict(c.attrib), [dict(t.attrib) for t in c]) for c in root.findall("devices/channel")]

    agent = ({"type": "spicevmc"}, [{"type": "virtio", "name": "com.redhat.spice.0"}])
    assert channels((QXL, SPICE)) == [agent]
    assert channels((QXL, SPICE, VNC)) == [agent]
    assert channels((QXL, VNC)) == []
    assert channels(()) == []


def test_usb_tablet_only_with_vnc():
    def inputs(devices):
        return [dict(i.attrib) for i in build(params(*devices)).findall("devices/input")]

    tablet = {"type": "tablet", "bus": "usb"}
    assert inputs((QXL, VNC)) == [tablet]
    assert inputs((QXL, SPICE, VNC)) == [tablet]
    assert inputs((QXL, SPICE)) == []
    assert inputs(()) == []


SECURE = {"spiceSecureChannels": "smain,sinputs,scursor"}


def test_secure_channels_only_with_spice_tls():
    p = params(QXL, {**SPICE, "specParams": SECURE})
    (spice,) = graphics(build(p, TLS_HOST))
    assert [dict(c.attrib) for c in spice.findall("channel")] == [
        {"name": "main", "mode": "secure"},
        {"name": "inputs", "mode": "secure"},
        {"name": "cursor", "mode": "secure"},
    ]
    (plain,) = graphics(build(p, HOST))
    assert plain.findall("channel") == []


def test_vnc_never_gets_secure_channels():
    p = params(QXL, {**VNC, "specParams": SECURE})
    (vnc,) = graphics(build(p, TLS_HOST))
    assert [c.tag for c in vnc] == ["listen"]


def test_clipboard_and_file_transfer_elements_when_disabled():
    off = {"copyPasteEnable": "false", "fileTransferEnable": "false"}
    (spice,) = graphics(build(params(QXL, {**SPICE, "specParams": off})))
    assert [(c.tag, dict(c.attrib)) for c in spice][1:] == [
        ("clipboard", {"copypaste": "no"}),
        ("filetransfer", {"enable": "no"}),
    ]
    (default,) = graphics(build(params(QXL, SPICE)))
    assert default.find("clipboard") is None
    assert default.find("filetransfer") is None


def test_only_file_transfer_disabled():
    (spice,) = graphics(build(params(QXL, {**SPICE, "specParams": {"fileTransferEnable": "false"}})))
    assert spice.find("clipboard") is None
    assert dict(spice.find("filetransfer").attrib) == {"enable": "no"}


def test_image_compression_off_for_qxlnc():
    (spice,) = graphics(build({"vmId": VM_ID, "display": "qxlnc"}))
    assert dict(spice.find("image").attrib) == {"compression": "off"}
    (compressed,) = graphics(build({"vmId": VM_ID, "display": "qxl"}))
    assert compressed.find("image") is None


def test_headless_has_no_graphics_and_video_none():
    root = build({"vmId": VM_ID})
    assert graphics(root) == []
    assert [dict(m.attrib) for m in root.findall("devices/video/model")] == [{"type": "none"}]


# --- video ----------------------------------------------------------------------------


def test_video_attributes_and_pci_address():
    video = {
        "type": "video",
        "device": "qxl",
        "specParams": {"vram": "32768", "heads": "1", "ram": "65536", "vgamem": "16384"},
        "address": {"type": "pci", "domain": "0x0000", "bus": "0x00", "slot": "0x02"},
    }
    (el,) = build(params(video, SPICE)).findall("devices/video")
    assert [c.tag for c in el] == ["model", "address"]
    assert dict(el.find("model").attrib) == {
        "type": "qxl",
        "vram": "32768",
        "heads": "1",
        "ram": "65536",
        "vgamem": "16384",
    }
    assert dict(el.find("address").attrib) == {
        "type": "pci",
        "domain": "0x0000",
        "bus": "0x00",
        "slot": "0x02",
        "function": "0x0",
    }


def test_pci_address_hex_formatting():
    video = {**QXL, "address": {"type": "pci", "domain": 1, "bus": 255, "slot": 31, "function": 7}}
    (address,) = build(params(video)).findall("devices/video/address")
    assert dict(address.attrib) == {
        "type": "pci",
        "domain": "0x0001",
        "bus": "0xff",
        "slot": "0x1f",
        "function": "0x7",
    }


def test_first_of_several_video_cards_is_primary():
    models = build({"vmId": VM_ID, "display": "qxl", "spiceMonitors": 4}).findall("devices/video/model")
    assert [dict(m.attrib) for m in models] == [
        {"type": "qxl", "vram": "32768", "heads": "1", "primary": "yes"},
        {"type": "qxl", "vram": "32768", "heads": "1"},
        {"type": "qxl", "vram": "32768", "heads": "1"},
        {"type": "qxl", "vram": "32768", "heads": "1"},
    ]


def test_single_video_card_has_no_primary_flag():
    (model,) = build({"vmId": VM_ID, "display": "vnc"}).findall("devices/video/model")
    assert dict(model.attrib) == {"type": "cirrus"}


# --- the feature page's examples --------------------------------------------------------


def test_feature_page_current_example():
    root = build(FEATURE_PAGE_CURRENT | {"vmId": VM_ID})
    (vnc,) = graphics(root)
    assert dict(vnc.attrib) == {
        "type": "vnc",
        "autoport": "yes",
        "listen": "0.0.0.0",
        "passwd": "*****",
        "passwdValidTo": "1970-01-01T00:00:01",
    }
    (video,) = root.findall("devices/video")
    # The page's <video>: <address bus="0x00" domain="0x0000" function="0x0" slot="0x02"
    # type="pci"/> <model heads="1" type="cirrus" vram="32768"/>
    assert dict(video.find("model").attrib) == {"heads": "1", "type": "cirrus", "vram": "32768"}
    assert dict(video.find("address").attrib) == {
        "bus": "0x00",
        "domain": "0x0000",
        "function": "0x0",
        "slot": "0x02",
        "type": "pci",
    }
    assert [dict(i.attrib) for i in root.findall("devices/input")] == [{"type": "tablet", "bus": "usb"}]
    assert root.findall("devices/channel") == []


def test_feature_page_proposal_example():
    root = build(FEATURE_PAGE_PROPOSAL | {"vmId": VM_ID})
    assert [g.get("type") for g in graphics(root)] == ["vnc", "spice"]
    assert all(g.get("passwdValidTo") == LOCKED_VALID_TO for g in graphics(root))
    assert [c.get("type") for c in root.findall("devices/channel")] == ["spicevmc"]
    assert [i.get("type") for i in root.findall("devices/input")] == ["tablet"]
    assert [dict(m.attrib) for m in root.findall("devices/video/model")] == [
        {"type": "cirrus", "vram": "32768", "heads": "1"}
    ]


# --- metadata ---------------------------------------------------------------------------


def test_metadata_round_trips_through_stored_params():
    p = params(QXL, {**SPICE, "specParams": SECURE}, VNC, memSize="512")
    xml = domxml.build(parse_vm_params(p), p, HOST)
    assert domxml.stored_params(xml) == p
    meta = etree.fromstring(xml.encode()).find("metadata")
    (vm,) = meta
    assert vm.tag == "{urn:multiconsole:vm:1}vm"
    assert json.loads(vm.findtext("{urn:multiconsole:vm:1}params")) == p


@pytest.mark.parametrize(
    "value",
    [
        "</mc:params></mc:vm></metadata><devices/>",
        '"><graphics type="vnc" passwd=""/>',
        "&amp; &lt; &#0; ]]> <![CDATA[x]]>",
        "<!-- --> <?pi?> '\"",
        "ünïcødé ✓ \x01\x1f \t\n\r",
    ],
    ids=["close-tags", "attribute", "entities", "comment-pi", "unicode-control"],
)
def test_xml_special_characters_in_params_are_escaped(value):
    p = params(QXL, VNC, comment=value, **{"<key attr='1'>&": [value, {"nested": value}]})
    xml = domxml.build(parse_vm_params(p), p, HOST)
    root = etree.fromstring(xml.encode())  # still one well-formed document
    assert [g.get("type") for g in graphics(root)] == ["vnc"]
    assert graphics(root)[0].get("passwd") == LOCKED_PASSWORD
    assert root.find("devices/devices") is None
    assert len(root.find("metadata")) == 1
    assert domxml.stored_params(xml) == p


def test_stored_params_of_foreign_domains_is_none():
    assert domxml.stored_params("<domain><name>x</name></domain>") is None
    assert domxml.stored_params("<domain><metadata/></domain>") is None


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"x"', ""])
def test_stored_params_of_unreadable_metadata_is_none(text):
    xml = (
        '<domain><metadata><mc:vm xmlns:mc="urn:multiconsole:vm:1">'
        f"<mc:params>{text}</mc:params></mc:vm></metadata></domain>"
    )
    assert domxml.stored_params(xml) is None


# --- live XML -----------------------------------------------------------------------------

LIVE = """<domain type='kvm' id='7'>
  <name>demo</name>
  <devices>
    <graphics type='vnc' port='5900' autoport='yes' listen='10.0.0.5' keymap='de'
              passwdValidTo='1970-01-01T00:00:01'>
      <listen type='address' address='10.0.0.5'/>
    </graphics>
    <graphics type='sdl' display=':0'/>
    <graphics type='spice' port='5901' tlsPort='5902' autoport='yes' connected='keep'
              passwdValidTo='1970-01-01T00:00:01'>
      <listen type='network' address='192.0.2.7' network='vdsm-ovirtmgmt'/>
      <channel name='main' mode='secure'/>
      <channel name='inputs' mode='secure'/>
      <clipboard copypaste='no'/>
    </graphics>
    <video><model type='qxl' vram='32768' heads='1' primary='yes'/></video>
  </devices>
</domain>"""


def test_live_consoles_reads_ports_tls_port_and_listen():
    assert domxml.live_consoles(LIVE) == [
        LiveConsole(type=GraphicsType.VNC, port=5900, tls_port=None, address="10.0.0.5"),
        LiveConsole(type=GraphicsType.SPICE, port=5901, tls_port=5902, address="192.0.2.7"),
    ]


def test_live_consoles_without_ports_or_address():
    xml = """<domain><devices>
      <graphics type='spice' port='-1' tlsPort='5902'/>
      <graphics type='vnc' port='auto' tlsPort='5999'/>
    </devices></domain>"""
    assert domxml.live_consoles(xml) == [
        LiveConsole(type=GraphicsType.SPICE, port=-1, tls_port=5902, address=""),
        LiveConsole(type=GraphicsType.VNC, port=-1, tls_port=None, address=""),
    ]


def test_live_consoles_of_built_xml():
    p = params(QXL, SPICE, VNC)
    xml = domxml.build(parse_vm_params(p), p, HOST)
    assert domxml.live_consoles(xml) == [
        LiveConsole(type=GraphicsType.VNC, port=-1, tls_port=None, address="0.0.0.0"),
        LiveConsole(type=GraphicsType.SPICE, port=-1, tls_port=None, address="0.0.0.0"),
    ]


def test_live_consoles_of_headless_domain():
    assert domxml.live_consoles("<domain><devices/></domain>") == []


# --- tickets --------------------------------------------------------------------------------

VALID_TO = "2030-01-02T03:04:05"


def test_ticket_update_edits_only_spice_and_keeps_its_children():
    out = etree.fromstring(domxml.ticket_update(LIVE, GraphicsType.SPICE, "s3cr3t", VALID_TO, "disconnect"))
    assert out.tag == "graphics"
    assert dict(out.attrib) == {
        "type": "spice",
        "port": "5901",
        "tlsPort": "5902",
        "autoport": "yes",
        "connected": "disconnect",
        "passwd": "s3cr3t",
        "passwdValidTo": VALID_TO,
    }
    assert [(c.tag, dict(c.attrib)) for c in out] == [
        ("listen", {"type": "network", "address": "192.0.2.7", "network": "vdsm-ovirtmgmt"}),
        ("channel", {"name": "main", "mode": "secure"}),
        ("channel", {"name": "inputs", "mode": "secure"}),
        ("clipboard", {"copypaste": "no"}),
    ]


def test_ticket_update_of_vnc():
    text = domxml.ticket_update(LIVE, GraphicsType.VNC, "abcd1234", VALID_TO, None)
    assert not text.endswith("\n")  # no tail of the live document
    out = etree.fromstring(text)
    assert dict(out.attrib) == {
        "type": "vnc",
        "port": "5900",
        "autoport": "yes",
        "listen": "10.0.0.5",
        "keymap": "de",
        "passwd": "abcd1234",
        "passwdValidTo": VALID_TO,
    }
    assert [(c.tag, dict(c.attrib)) for c in out] == [("listen", {"type": "address", "address": "10.0.0.5"})]


def test_ticket_update_without_connected_drops_an_old_one():
    out = etree.fromstring(domxml.ticket_update(LIVE, GraphicsType.SPICE, "pw", VALID_TO, None))
    assert "connected" not in out.attrib
    assert out.get("passwd") == "pw"


def test_ticket_update_escapes_the_password():
    out = etree.fromstring(domxml.ticket_update(LIVE, GraphicsType.SPICE, "<'&\">", VALID_TO, "keep"))
    assert out.get("passwd") == "<'&\">"


def test_ticket_update_of_a_missing_console():
    p = params(QXL, VNC)
    xml = domxml.build(parse_vm_params(p), p, HOST)
    with pytest.raises(LookupError):
        domxml.ticket_update(xml, GraphicsType.SPICE, "pw", VALID_TO, "keep")


def test_ticket_update_of_built_xml_picks_by_type():
    p = params(QXL, SPICE, VNC)
    xml = domxml.build(parse_vm_params(p), p, HOST)
    out = etree.fromstring(domxml.ticket_update(xml, GraphicsType.SPICE, "pw", VALID_TO, "keep"))
    assert out.get("type") == "spice"
    assert out.get("passwd") == "pw"
    # The document itself is not changed: VNC stays locked.
    vnc = graphics(etree.fromstring(xml.encode()))[0]
    assert (vnc.get("passwd"), vnc.get("passwdValidTo")) == (LOCKED_PASSWORD, LOCKED_VALID_TO)


# --- drives, boot order, serial console, SMBIOS -------------------------------------

DISK = {"type": "disk", "device": "disk", "path": "/var/lib/mc/vm1.qcow2", "format": "qcow2"}
CDROM = {"type": "disk", "device": "cdrom", "path": "/var/cache/mc/tiny.iso", "format": "raw"}


def disks(root) -> list[tuple[dict, list]]:
    return [
        (dict(d.attrib), [(c.tag, dict(c.attrib), c.text) for c in d]) for d in root.findall("devices/disk")
    ]


def test_disks_with_format_target_boot_order_and_readonly():
    root = build(
        params(
            QXL,
            VNC,
            {**DISK, "bootOrder": "2", "deviceId": "0123456789abcdef0123456789"},
            {**CDROM, "iface": "sata", "bootOrder": "1"},
            {**DISK, "path": "/img/data.raw", "format": "raw", "iface": "sata", "readonly": "true"},
        )
    )
    assert disks(root) == [
        (
            {"type": "file", "device": "disk"},
            [
                ("driver", {"name": "qemu", "type": "qcow2"}, None),
                ("source", {"file": "/var/lib/mc/vm1.qcow2"}, None),
                ("target", {"dev": "vda", "bus": "virtio"}, None),
                ("boot", {"order": "2"}, None),
                ("serial", {}, "0123456789abcdef0123"),
            ],
        ),
        (
            {"type": "file", "device": "cdrom"},
            [
                ("driver", {"name": "qemu", "type": "raw"}, None),
                ("source", {"file": "/var/cache/mc/tiny.iso"}, None),
                ("target", {"dev": "sda", "bus": "sata"}, None),
                ("boot", {"order": "1"}, None),
                ("readonly", {}, None),
            ],
        ),
        (
            {"type": "file", "device": "disk"},
            [
                ("driver", {"name": "qemu", "type": "raw"}, None),
                ("source", {"file": "/img/data.raw"}, None),
                ("target", {"dev": "sdb", "bus": "sata"}, None),
                ("readonly", {}, None),
            ],
        ),
    ]
    # Per-device boot orders replace <os><boot> (libvirt refuses both).
    assert root.findall("os/boot") == []
    assert tags(root)[:3] == ["disk", "disk", "disk"]


def test_empty_cdrom_tray_has_no_source():
    root = build(params({"type": "disk", "device": "cdrom", "path": ""}))
    assert [c.tag for c in root.find("devices/disk")] == ["driver", "target", "readonly"]


def test_without_boot_orders_the_bios_tries_disk_then_cdrom():
    assert [b.get("dev") for b in build(params(QXL, VNC)).findall("os/boot")] == ["hd"]
    root = build(params(DISK, CDROM))
    assert [b.get("dev") for b in root.findall("os/boot")] == ["hd", "cdrom"]


def test_serial_port_and_console_on_a_pty():
    for root in (build(params(QXL, VNC, DISK)), build(params()), build({"vmId": VM_ID, "display": "vnc"})):
        serial, console = root.find("devices/serial"), root.find("devices/console")
        assert dict(serial.attrib) == {"type": "pty"}
        assert [(c.tag, dict(c.attrib)) for c in serial] == [("target", {"port": "0"})]
        assert dict(console.attrib) == {"type": "pty"}
        assert [(c.tag, dict(c.attrib)) for c in console] == [("target", {"type": "serial", "port": "0"})]


def test_smbios_names_the_vm_and_its_keymap():
    root = build(params(QXL, {**VNC, "specParams": {"keyMap": "de"}}, SPICE))
    assert root.find("os/smbios").attrib == {"mode": "sysinfo"}
    sysinfo = root.find("sysinfo")
    assert sysinfo.get("type") == "smbios"
    assert [(e.get("name"), e.text) for e in sysinfo.findall("system/entry")] == [
        ("manufacturer", "multiconsole"),
        ("product", "multiconsole VM"),
        ("family", "multiconsole"),
    ]
    assert [e.text for e in sysinfo.findall("oemStrings/entry")] == [
        "multiconsole:name=demo",
        "multiconsole:keymap=de",
    ]


def test_smbios_keymap_from_the_legacy_keyboard_layout_and_absent_without_one():
    legacy = build({"vmId": VM_ID, "vmName": "old", "display": "qxl", "keyboardLayout": "en-gb"})
    assert [e.text for e in legacy.findall("sysinfo/oemStrings/entry")] == [
        "multiconsole:name=old",
        "multiconsole:keymap=en-gb",
    ]
    plain = build(params(QXL, VNC))
    assert [e.text for e in plain.findall("sysinfo/oemStrings/entry")] == ["multiconsole:name=demo"]


def test_libvirt_validates_and_keeps_drives_serial_and_sysinfo():
    """libvirt's own schema check (VALIDATE) on the test driver, and the XML read back."""
    import libvirt

    p = params(
        QXL, {**VNC, "specParams": {"keyMap": "de"}}, {**DISK, "bootOrder": 1}, {**CDROM, "iface": "ide"}
    )
    conn = libvirt.open("test:///default")
    try:
        xml = domxml.build(parse_vm_params(p), p, HostDisplay(virt_type="test"))
        dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        back = etree.fromstring(dom.XMLDesc().encode())
        assert [d.find("target").get("dev") for d in back.findall("devices/disk")] == ["vda", "hda"]
        assert back.find("devices/disk/boot").get("order") == "1"
        assert back.find("devices/serial").get("type") == "pty"
        assert "multiconsole:keymap=de" in [e.text for e in back.findall("sysinfo/oemStrings/entry")]
        dom.undefine()
    finally:
        conn.close()
