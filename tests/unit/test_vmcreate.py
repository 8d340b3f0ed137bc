"""parse_vm_params: both vmCreate generations, exact VmSpecs, and errors naming field and rule."""

from __future__ import annotations

import copy

import pytest

from multiconsole.domain.devices import (
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
from multiconsole.wire.vmcreate import parse_vm_params

VM_ID = "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b01"
# The address of the feature page's <video> XML.
PAGE_ADDRESS = {"bus": "0x00", "domain": "0x0000", "function": "0x0", "slot": "0x02", "type": "pci"}
PAGE_PCI = PciAddress(domain=0, bus=0, slot=2, function=0)

# Feature page, "Current situation": the legacy vmCreate of an old engine.
FEATURE_PAGE_CURRENT = {
    "display": "vnc",
    "displayPort": -1,
    "displaySecurePort": -1,
    # engine -> vdsm video device
    "devices": [
        {
            "device": "cirrus",
            "type": "video",
            "deviceId": "0ec7c2b9-62c9-4578-b096-f453b5cfc677",
            "address": PAGE_ADDRESS,
            "specParams": {"vram": "32768", "heads": "1"},
        }
    ],
}

# Feature page, "Proposal": graphics sent as regular devices.
FEATURE_PAGE_PROPOSAL = {
    "devices": [
        {
            "device": "cirrus",
            "type": "video",
            "deviceId": "blah",
            "address": PAGE_ADDRESS,
            "specParams": {"vram": "32768", "heads": "1"},
        },
        {"device": "qxl", "type": "graphics", "specParams": {}},  # send graphics as a device
        {"device": "vnc", "type": "graphics", "specParams": {}},  # dtto
    ]
}


def spec(**kw) -> VmSpec:
    base = {"vm_id": VM_ID, "name": "vm-6c1b7a8e", "memory_mib": 256, "vcpus": 1}
    return VmSpec(**(base | kw))


def parse(params: dict, vm_id: str | None = VM_ID) -> VmSpec:
    return parse_vm_params(params, vm_id)


def fails(params, vm_id: str | None = VM_ID) -> FieldError:
    with pytest.raises(FieldError) as info:
        parse_vm_params(params, vm_id)
    return info.value


def new_form(*devices: dict, **top) -> dict:
    return {"vmId": VM_ID, "devices": list(devices), **top}


QXL = {"type": "video", "device": "qxl"}
SPICE = {"type": "graphics", "device": "spice"}
VNC = {"type": "graphics", "device": "vnc"}


# --- the feature page's examples ------------------------------------------------


def test_feature_page_current_example_is_one_vnc_console():
    assert parse(FEATURE_PAGE_CURRENT) == spec(
        video=(
            Video(
                model=VideoModel.CIRRUS,
                vram=32768,
                heads=1,
                device_id="0ec7c2b9-62c9-4578-b096-f453b5cfc677",
                address=PAGE_PCI,
            ),
        ),
        graphics=(Graphics(type=GraphicsType.VNC),),
    )


def test_feature_page_proposal_example_is_spice_and_vnc():
    parsed = parse(FEATURE_PAGE_PROPOSAL)
    assert parsed == spec(
        video=(
            Video(
                model=VideoModel.CIRRUS,
                vram=32768,
                heads=1,
                device_id="blah",
                address=PAGE_PCI,
            ),
        ),
        graphics=(Graphics(type=GraphicsType.SPICE), Graphics(type=GraphicsType.VNC)),
    )
    assert parsed.graphics_of(GraphicsType.SPICE) == Graphics(type=GraphicsType.SPICE)
    assert not parsed.headless


def test_parsing_does_not_modify_the_params():
    params = copy.deepcopy(FEATURE_PAGE_PROPOSAL)
    parse(params)
    assert params == FEATURE_PAGE_PROPOSAL


# --- identity and size -----------------------------------------------------------


def test_identity_and_size_from_params():
    parsed = parse(
        {"vmId": VM_ID.upper(), "vmName": "web-1.example_a", "memSize": "1024", "smp": 4},
        VM_ID,
    )
    assert (parsed.vm_id, parsed.name, parsed.memory_mib, parsed.vcpus) == (
        VM_ID,
        "web-1.example_a",
        1024,
        4,
    )


def test_vm_id_from_the_call_when_params_lack_it():
    assert parse({}, VM_ID.upper()).vm_id == VM_ID


def test_default_name_is_derived_from_the_id():
    assert parse({}).name == "vm-6c1b7a8e"


# --- legacy form -------------------------------------------------------------------


def test_legacy_vnc_gets_cirrus_video():
    assert parse({"display": "vnc"}) == spec(
        video=(Video(model=VideoModel.CIRRUS),), graphics=(Graphics(type=GraphicsType.VNC),)
    )


def test_legacy_qxl_is_spice_with_one_qxl_per_monitor():
    assert parse({"display": "qxl"}) == spec(
        video=(Video(model=VideoModel.QXL, vram=65536, heads=1),),
        graphics=(Graphics(type=GraphicsType.SPICE),),
    )


def test_legacy_qxlnc_turns_image_compression_off():
    parsed = parse({"display": "qxlnc"})
    assert parsed.graphics == (Graphics(type=GraphicsType.SPICE, image_compression=False),)
    assert parsed.video == (Video(model=VideoModel.QXL, vram=65536, heads=1),)


@pytest.mark.parametrize(
    ("monitors", "vram"),
    [(1, 65536), ("2", 65536), (3, 32768), (4, 32768)],
)
def test_legacy_spice_monitors(monitors, vram):
    parsed = parse({"display": "qxl", "spiceMonitors": monitors})
    assert parsed.video == tuple(
        Video(model=VideoModel.QXL, vram=vram, heads=1) for _ in range(int(monitors))
    )


def test_legacy_spice_monitors_out_of_range():
    err = fails({"display": "qxl", "spiceMonitors": 5})
    assert err.field == "spiceMonitors"
    assert "out of range" in err.reason


def test_legacy_keyboard_layout_becomes_keymap():
    assert parse({"display": "vnc", "keyboardLayout": "de-ch"}).graphics == (
        Graphics(type=GraphicsType.VNC, keymap="de-ch"),
    )


def test_legacy_spice_options():
    parsed = parse(
        {
            "display": "qxl",
            "spiceSecureChannels": "smain,sinputs",
            "copyPasteEnable": "false",
            "fileTransferEnable": "False",
            "displayNetwork": "ovirtmgmt",
        }
    )
    assert parsed.graphics == (
        Graphics(
            type=GraphicsType.SPICE,
            secure_channels=("main", "inputs"),
            copy_paste=False,
            file_transfer=False,
            listen_network="ovirtmgmt",
        ),
    )


def test_secure_channels_without_prefix_and_repeated():
    parsed = parse({"display": "qxl", "spiceSecureChannels": "display, sdisplay,scursor"})
    assert parsed.graphics[0].secure_channels == ("display", "cursor")


def test_secure_channels_are_ignored_for_vnc():
    assert parse({"display": "vnc", "spiceSecureChannels": "smain"}).graphics == (
        Graphics(type=GraphicsType.VNC),
    )


def test_legacy_display_ip():
    assert parse({"display": "vnc", "displayIp": "10.0.0.5"}).graphics == (
        Graphics(type=GraphicsType.VNC, listen_address="10.0.0.5"),
    )


def test_no_display_and_no_devices_is_headless_with_video_none():
    parsed = parse({})
    assert parsed == spec(video=(Video(model=VideoModel.NONE),), graphics=())
    assert parsed.headless


def test_devices_without_graphics_and_no_display_are_headless():
    parsed = parse(new_form({"type": "video", "device": "none"}))
    assert parsed.graphics == ()
    assert parsed.video == (Video(model=VideoModel.NONE),)


def test_legacy_display_beside_devices_without_graphics():
    # An old engine sending its video devices: the console still comes from 'display',
    # the video from the devices (no defaults added).
    parsed = parse(new_form({"type": "video", "device": "vga"}, display="qxl"))
    assert parsed.graphics == (Graphics(type=GraphicsType.SPICE),)
    assert parsed.video == (Video(model=VideoModel.VGA),)


def test_graphics_devices_take_precedence_over_display():
    parsed = parse(new_form(QXL, SPICE, display="vnc", keyboardLayout="fr"))
    assert parsed.graphics == (Graphics(type=GraphicsType.SPICE),)


def test_display_ports_are_checked_but_ignored():
    assert parse({"display": "vnc", "displayPort": "5900", "displaySecurePort": -1}).graphics == (
        Graphics(type=GraphicsType.VNC),
    )
    err = fails({"display": "vnc", "displayPort": 70000})
    assert err.field == "displayPort"
    assert "out of range" in err.reason


# --- new form ------------------------------------------------------------------------


def test_reference_new_form_with_every_option():
    params = new_form(
        {
            "type": "video",
            "device": "qxl",
            "deviceId": "9b7b7e51-2f0a-4c53-b1a8-8d9e5f1c2a3b",
            "specParams": {"vram": "32768", "heads": "1", "ram": "65536", "vgamem": "16384"},
        },
        {
            "type": "graphics",
            "device": "spice",
            "deviceId": "c5a4c1c2-1111-4222-8333-944455556666",
            "specParams": {
                "keyMap": "en-us",
                "spiceSecureChannels": "smain,sinputs,scursor,splayback,srecord,sdisplay,"
                "ssmartcard,susbredir",
                "copyPasteEnable": "true",
                "fileTransferEnable": "true",
                "displayNetwork": "ovirtmgmt",
            },
        },
        {"type": "graphics", "device": "vnc", "deviceId": "vnc_1", "specParams": {"keyMap": "de"}},
        vmName="both",
        memSize=256,
        smp="1",
    )
    assert parse(params) == VmSpec(
        vm_id=VM_ID,
        name="both",
        memory_mib=256,
        vcpus=1,
        video=(
            Video(
                model=VideoModel.QXL,
                vram=32768,
                heads=1,
                ram=65536,
                vgamem=16384,
                device_id="9b7b7e51-2f0a-4c53-b1a8-8d9e5f1c2a3b",
            ),
        ),
        graphics=(
            Graphics(
                type=GraphicsType.SPICE,
                keymap="en-us",
                listen_network="ovirtmgmt",
                secure_channels=(
                    "main",
                    "inputs",
                    "cursor",
                    "playback",
                    "record",
                    "display",
                    "smartcard",
                    "usbredir",
                ),
                device_id="c5a4c1c2-1111-4222-8333-944455556666",
            ),
            Graphics(type=GraphicsType.VNC, keymap="de", device_id="vnc_1"),
        ),
    )


def test_graphics_keep_the_order_the_engine_sent():
    assert [g.type for g in parse(new_form(QXL, VNC, SPICE)).graphics] == [
        GraphicsType.VNC,
        GraphicsType.SPICE,
    ]


def test_spice_alias_and_null_spec_params():
    parsed = parse(new_form({"type": "graphics", "device": "spice", "specParams": None}))
    assert parsed.graphics == (Graphics(type=GraphicsType.SPICE),)
    assert parsed.video == ()


def test_video_numbers_as_ints_and_empty_strings():
    parsed = parse(new_form({"type": "video", "device": "vga", "specParams": {"vram": 16384, "heads": ""}}))
    assert parsed.video == (Video(model=VideoModel.VGA, vram=16384),)


def test_device_ids_are_opaque_tokens_kept_as_given():
    parsed = parse(new_form({**QXL, "deviceId": "A-b_9"}, {**VNC, "deviceId": "x" * 64}))
    assert parsed.video[0].device_id == "A-b_9"
    assert parsed.graphics[0].device_id == "x" * 64


def test_pci_address_as_integers_and_defaults():
    parsed = parse(new_form({**QXL, "address": {"type": "pci", "bus": 1, "slot": "0x1f"}}))
    assert parsed.video[0].address == PciAddress(domain=0, bus=1, slot=31, function=0)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [None, [], "display=vnc", 5])
def test_params_must_be_an_object(params):
    err = fails(params)
    assert err.field == "vmParams"
    assert "object" in err.reason


def test_devices_must_be_a_list():
    err = fails({"devices": {"type": "video"}})
    assert err.field == "devices"
    assert "list" in err.reason


def test_device_must_be_an_object():
    err = fails(new_form(QXL, "vnc"))
    assert err.field == "devices[1]"
    assert "object" in err.reason


@pytest.mark.parametrize("dtype", ["nic", None, "Graphics", ["graphics"]])
def test_unknown_device_type(dtype):
    err = fails(new_form(QXL, {"type": dtype, "device": "vnc"}))
    assert err.field == "devices[1].type"
    assert "unknown device type" in err.reason


@pytest.mark.parametrize(
    "devices",
    [(QXL, SPICE, VNC, VNC), (QXL, SPICE, VNC, {"type": "graphics", "device": "qxl"})],
)
def test_two_graphics_of_one_type(devices):
    err = fails(new_form(*devices))
    assert err.field == "devices[3].device"
    assert "only one graphics device per type" in err.reason


@pytest.mark.parametrize("device", ["sdl", "rdp", "", None, ["spice"], {"vnc": 1}, 5])
def test_unknown_graphics_type(device):
    err = fails(new_form({"type": "graphics", "device": device}))
    assert err.field == "devices[0].device"
    assert "unknown graphics type" in err.reason


@pytest.mark.parametrize("model", ["QXL", "virtio-gpu", None, ["qxl"]])
def test_unknown_video_model(model):
    err = fails(new_form({"type": "video", "device": model}))
    assert err.field == "devices[0].device"
    assert "unknown video model" in err.reason


@pytest.mark.parametrize("display", ["spice", "VNC", "", 1, ["vnc"]])
def test_unknown_display_value(display):
    err = fails({"display": display})
    assert err.field == "display"
    assert "unknown value" in err.reason


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("vram", "big", "not a whole number"),
        ("vram", "32768.5", "not a whole number"),
        ("vram", 32768.5, "whole number"),
        ("vram", "1e6", "not a whole number"),
        ("vram", "512", "out of range"),
        ("vram", 2**31, "out of range"),
        ("vram", "-32768", "out of range"),
        ("heads", "two", "not a whole number"),
        ("heads", "0", "out of range"),
        ("heads", 5, "out of range"),
        ("vram", True, "boolean"),
        ("heads", False, "boolean"),
        ("vram", ["32768"], "whole number"),
    ],
)
def test_bad_video_numbers(key, value, word):
    err = fails(new_form({"type": "video", "device": "qxl", "specParams": {key: value}}))
    assert err.field == f"devices[0].specParams.{key}"
    assert word in err.reason


@pytest.mark.parametrize("key", ["ram", "vgamem"])
def test_ram_and_vgamem_only_on_qxl(key):
    err = fails(new_form({"type": "video", "device": "vga", "specParams": {key: "65536"}}))
    assert err.field == f"devices[0].specParams.{key}"
    assert "only qxl" in err.reason


def test_video_none_takes_no_parameters():
    err = fails(new_form({"type": "video", "device": "none", "specParams": {"vram": "1024"}}))
    assert err.field == "devices[0].specParams"
    assert "none" in err.reason


def test_video_none_beside_graphics():
    err = fails(new_form({"type": "video", "device": "none"}, VNC))
    assert err.field == "devices"
    assert "none" in err.reason


def test_video_none_beside_legacy_display():
    err = fails(new_form({"type": "video", "device": "none"}, display="vnc"))
    assert err.field == "devices"
    assert "none" in err.reason


def test_video_none_beside_other_video():
    err = fails(new_form(QXL, {"type": "video", "device": "none"}))
    assert err.field == "devices"
    assert "beside" in err.reason


def test_at_most_four_video_devices():
    err = fails(new_form(*([QXL] * 5)))
    assert err.field == "devices"
    assert "at most 4" in err.reason


@pytest.mark.parametrize(
    ("where", "spec_params"),
    [
        ("legacy", {"display": "qxl", "spiceSecureChannels": "smain,sfoo"}),
        ("device", {"spiceSecureChannels": "main,tunnel"}),
        ("device", {"spiceSecureChannels": ["smain"]}),
        ("device", {"spiceSecureChannels": "smain,"}),
    ],
)
def test_unknown_secure_channel(where, spec_params):
    if where == "legacy":
        err = fails(spec_params)
        assert err.field == "spiceSecureChannels"
    else:
        err = fails(new_form(QXL, {**SPICE, "specParams": spec_params}))
        assert err.field == "devices[1].specParams.spiceSecureChannels"
    assert "channel" in err.reason or "comma-separated" in err.reason


@pytest.mark.parametrize("keymap", ["EN-US", "en_us", "en-us\n", '"en"', "<en>", 5, "e"])
def test_bad_keymap(keymap):
    err = fails(new_form(QXL, {**VNC, "specParams": {"keyMap": keymap}}))
    assert err.field == "devices[1].specParams.keyMap"
    assert "keyboard layout" in err.reason


def test_bad_legacy_keyboard_layout_names_its_own_field():
    err = fails({"display": "vnc", "keyboardLayout": "en-us\n"})
    assert err.field == "keyboardLayout"
    assert "keyboard layout" in err.reason


@pytest.mark.parametrize(
    "name",
    ['a"b', "a'b", "a<b", "b>a", "a\n", "\na", "a b", "", "-a", "x" * 65, 5, None, "a&b"],
)
def test_bad_vm_name(name):
    err = fails({"vmName": name})
    assert err.field == "vmName"
    assert "letters, digits" in err.reason


@pytest.mark.parametrize("network", ["net\n", "a b", "<n>", 7, "x" * 51])
def test_bad_display_network(network):
    err = fails(new_form(QXL, {**SPICE, "specParams": {"displayNetwork": network}}))
    assert err.field == "devices[1].specParams.displayNetwork"
    assert "network name" in err.reason


@pytest.mark.parametrize("ip", ["10.0.0.256", "fe80::1%eth0", "host", 5, ["10.0.0.1"], True])
def test_bad_display_ip(ip):
    err = fails(new_form(QXL, {**SPICE, "specParams": {"displayIp": ip}}))
    assert err.field == "devices[1].specParams.displayIp"
    assert "not an IP address" in err.reason


def test_display_ip_and_network_together():
    err = fails(new_form({**VNC, "specParams": {"displayIp": "::1", "displayNetwork": "n"}}))
    assert err.field == "devices[0].specParams.displayIp"
    assert "not both" in err.reason


@pytest.mark.parametrize("value", ["yes", 1, "TRUE ", []])
def test_bad_boolean_option(value):
    err = fails(new_form(QXL, {**SPICE, "specParams": {"copyPasteEnable": value}}))
    assert err.field == "devices[1].specParams.copyPasteEnable"
    assert "'true' or 'false'" in err.reason


@pytest.mark.parametrize("vm_id", ["not-a-uuid", "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b0", ""])
def test_bad_vm_id_in_params(vm_id):
    err = fails({"vmId": vm_id}, None)
    assert err.field == "vmId"
    assert "not a UUID" in err.reason


def test_non_string_vm_id():
    err = fails({"vmId": 5}, None)
    assert err.field == "vmId"
    assert "UUID string" in err.reason


def test_bad_vm_id_of_the_call():
    err = fails({}, "nope")
    assert err.field == "vmID"
    assert "not a UUID" in err.reason


def test_missing_vm_id():
    err = fails({}, None)
    assert err.field == "vmID"
    assert "UUID" in err.reason


def test_vm_id_differing_from_vm_id_of_the_call():
    err = fails({"vmId": "0ec7c2b9-62c9-4578-b096-f453b5cfc677"}, VM_ID)
    assert err.field == "vmParams.vmId"
    assert "differs" in err.reason


@pytest.mark.parametrize("device_id", ["a b", "x" * 65, "<id>", "id\n", "", "ünï", 5, ["blah"], {"id": 1}])
def test_bad_device_id(device_id):
    err = fails(new_form(QXL, {**VNC, "deviceId": device_id}))
    assert err.field == "devices[1].deviceId"
    assert "not a device id" in err.reason


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [
        ("memSize", True, "boolean"),
        ("memSize", 8, "out of range"),
        ("memSize", "lots", "not a whole number"),
        ("smp", False, "boolean"),
        ("smp", 0, "out of range"),
        ("smp", 257, "out of range"),
        ("smp", 1.5, "whole number"),
    ],
)
def test_bad_size(key, value, word):
    err = fails({key: value})
    assert err.field == key
    assert word in err.reason


@pytest.mark.parametrize(
    ("address", "field", "word"),
    [
        ("pci", "devices[0].address", "object"),
        ({"type": "isa", "slot": "0x02"}, "devices[0].address.type", "pci"),
        ({"type": "pci", "bus": 0, "slot": "0x20"}, "devices[0].address.slot", "between"),
        ({"type": "pci", "bus": 0, "slot": "two"}, "devices[0].address.slot", "not a number"),
        ({"type": "pci"}, "devices[0].address.bus", "number"),
        ({"type": "pci", "bus": 0, "slot": True}, "devices[0].address.slot", "number"),
    ],
)
def test_bad_pci_address(address, field, word):
    err = fails(new_form({**QXL, "address": address}))
    assert err.field == field
    assert word in err.reason


def test_spec_params_must_be_an_object():
    err = fails(new_form({**QXL, "specParams": "vram=1"}))
    assert err.field == "devices[0].specParams"
    assert "object" in err.reason


def test_error_text_names_field_and_reason():
    err = fails({"display": "sdl"})
    assert str(err) == "display: unknown value 'sdl': expected one of vnc, qxl, qxlnc"


# --- drives (vdsm disk entries) -----------------------------------------------------

DISK = {"type": "disk", "device": "disk", "path": "/var/lib/mc/vm1.qcow2", "format": "qcow2"}
CDROM = {"type": "disk", "device": "cdrom", "path": "/var/cache/mc/tiny.iso", "format": "raw"}


def test_vdsm_disk_and_cdrom_entries_become_drives():
    got = parse(
        new_form(
            QXL,
            VNC,
            {**DISK, "iface": "virtio", "bootOrder": "2", "readonly": "False", "deviceId": "d-1"},
            {**CDROM, "iface": "sata", "bootOrder": "1"},
        )
    )
    assert got.drives == (
        Drive(
            device=DriveDevice.DISK,
            path="/var/lib/mc/vm1.qcow2",
            format=DriveFormat.QCOW2,
            bus=DriveBus.VIRTIO,
            readonly=False,
            boot_order=2,
            device_id="d-1",
        ),
        Drive(
            device=DriveDevice.CDROM,
            path="/var/cache/mc/tiny.iso",
            format=DriveFormat.RAW,
            bus=DriveBus.SATA,
            readonly=True,
            boot_order=1,
        ),
    )
    assert got.graphics == (Graphics(type=GraphicsType.VNC),)


def test_drive_defaults_and_vdsm_names():
    """vdsm's 'cow' is qcow2; an entry without 'device' is a disk, on virtio; a cdrom is on
    ide and read-only, and without a path it is an empty tray."""
    bare = {"type": "disk", "path": "/img/a.qcow2", "format": "cow"}
    disk, cdrom = parse(new_form(bare, {"type": "disk", "device": "cdrom", "path": ""})).drives
    assert disk.device == DriveDevice.DISK
    assert (disk.format, disk.bus, disk.readonly, disk.boot_order) == (
        DriveFormat.QCOW2,
        DriveBus.VIRTIO,
        False,
        None,
    )
    assert (cdrom.path, cdrom.format, cdrom.bus, cdrom.readonly) == (
        None,
        DriveFormat.RAW,
        DriveBus.IDE,
        True,
    )


def test_legacy_display_keeps_working_beside_drives():
    got = parse({"vmId": VM_ID, "display": "qxl", "devices": [DISK]})
    assert [g.type for g in got.graphics] == [GraphicsType.SPICE]
    assert got.drives[0].path == DISK["path"]


def test_without_devices_there_are_no_drives():
    assert parse({"vmId": VM_ID, "display": "vnc"}).drives == ()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"path": "vm1.qcow2"}, "path", "not an absolute path"),
        ({"path": "/var/lib/../../etc/shadow"}, "path", "normalised"),
        ({"path": "/var/lib//x"}, "path", "normalised"),
        ({"path": "/var/lib/x\n"}, "path", "control characters"),
        ({"path": None}, "path", "absolute path"),
        ({"path": ["/x"]}, "path", "absolute path"),
        ({"path": "/" + "a" * 5000}, "path", "4096"),
        ({"format": "vmdk"}, "format", "expected raw or qcow2"),
        ({"format": None}, "format", "expected raw or qcow2"),
        ({"device": "floppy"}, "device", "expected disk or cdrom"),
        ({"iface": "scsi"}, "iface", "expected virtio, sata or ide"),
        ({"iface": ["virtio"]}, "iface", "expected virtio, sata or ide"),
        ({"device": {"disk": 1}}, "device", "expected disk or cdrom"),
        ({"format": ["raw"]}, "format", "expected raw or qcow2"),
        ({"bootOrder": "first"}, "bootOrder", "not a whole number"),
        ({"bootOrder": 0}, "bootOrder", "out of range"),
        ({"readonly": "yes"}, "readonly", "'true' or 'false'"),
    ],
)
def test_bad_disk_entry_names_the_field(change, field, words):
    err = fails(new_form(QXL, {**DISK, **change}))
    assert err.field == f"devices[1].{field}"
    assert words in err.reason


def test_cdrom_rules():
    err = fails(new_form({**CDROM, "format": "qcow2"}))
    assert (err.field, err.reason) == ("devices[0].format", "a cdrom is a raw ISO image")
    err = fails(new_form({**CDROM, "iface": "virtio"}))
    assert err.field == "devices[0].iface"
    assert "sata or ide" in err.reason


def test_boot_orders_are_unique():
    err = fails(new_form({**DISK, "bootOrder": "1"}, {**CDROM, "bootOrder": 1}))
    assert err.field == "devices[1].bootOrder"
    assert "devices[0]" in err.reason


def test_a_writable_file_is_used_once():
    err = fails(new_form(DISK, {**DISK, "readonly": "true"}))
    assert err.field == "devices[1].path"
    assert "devices[0]" in err.reason
    # Two read-only users of one ISO are fine.
    assert len(parse(new_form(CDROM, {**CDROM, "iface": "sata"})).drives) == 2


def test_drive_counts():
    many = [{**DISK, "path": f"/img/{i}.qcow2"} for i in range(17)]
    assert fails(new_form(*many)).reason == "at most 16 disk devices"
    ide = [{**DISK, "path": f"/img/{i}.qcow2", "iface": "ide"} for i in range(5)]
    assert fails(new_form(*ide)).reason == "at most 4 drives on ide"


# --- exact fields and messages (mutation testing: a changed text must fail a test) --------

ALLOWED_CHANNELS = "main, display, inputs, cursor, playback, record, smartcard, usbredir"
DISK0 = {"type": "disk", "device": "disk", "path": "/img/a.qcow2", "format": "qcow2"}


def disk(**kw) -> dict:
    return new_form({**DISK0, **kw})


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        (None, "vmParams", "must be an object"),
        (
            {"vmName": 5},
            "vmName",
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        (
            {"vmName": "-x"},
            "vmName",
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        ({"memSize": True}, "memSize", "must be a whole number, not a boolean"),
        ({"memSize": "lots"}, "memSize", "'lots' is not a whole number"),
        ({"memSize": "1234567890123"}, "memSize", "'1234567890123' is not a whole number"),
        ({"memSize": 1.5}, "memSize", "must be a whole number"),
        ({"memSize": None}, "memSize", "must be a whole number"),
        ({"smp": 0}, "smp", "0 is out of range 1..256"),
        ({"displayPort": 70000}, "displayPort", "70000 is out of range -1..65535"),
        ({"displaySecurePort": "x"}, "displaySecurePort", "'x' is not a whole number"),
        ({"devices": {}}, "devices", "must be a list of device objects"),
        ({"devices": [5]}, "devices[0]", "must be an object"),
        (
            {"devices": [{"type": "nic"}]},
            "devices[0].type",
            "unknown device type 'nic': expected video, graphics or disk",
        ),
        (new_form(QXL, {**QXL, "specParams": 3}), "devices[1].specParams", "must be an object"),
        (
            new_form(SPICE, {"type": "graphics", "device": "qxl"}),
            "devices[1].device",
            "only one graphics device per type: a second spice device",
        ),
        (new_form(QXL, QXL, QXL, QXL, QXL), "devices", "at most 4 video devices"),
        (
            new_form(QXL, {"type": "video", "device": "none"}),
            "devices",
            "video 'none' cannot stand beside other video devices",
        ),
        (
            new_form({"type": "video", "device": "none"}, VNC),
            "devices",
            "video 'none' cannot show a graphics console: pick another video",
        ),
        (
            new_form({**QXL, "deviceId": "a b"}),
            "devices[0].deviceId",
            "'a b' is not a device id: 1-64 letters, digits, '-' or '_' (a UUID)",
        ),
        (
            new_form({"type": "video", "device": "vga2"}),
            "devices[0].device",
            "unknown video model 'vga2': expected one of qxl, vga, cirrus, bochs, virtio, none",
        ),
        (
            new_form({**QXL, "specParams": {"vram": 512}}),
            "devices[0].specParams.vram",
            "512 is out of range 1024..1048576",
        ),
        (
            new_form({**QXL, "specParams": {"heads": "5"}}),
            "devices[0].specParams.heads",
            "5 is out of range 1..4",
        ),
        (
            new_form({**QXL, "specParams": {"ram": 1}}),
            "devices[0].specParams.ram",
            "1 is out of range 1024..1048576",
        ),
        (
            new_form({**QXL, "specParams": {"vgamem": 1}}),
            "devices[0].specParams.vgamem",
            "1 is out of range 1024..1048576",
        ),
        (
            new_form({"type": "video", "device": "none", "specParams": {"heads": 1}}),
            "devices[0].specParams",
            "video 'none' takes no parameters",
        ),
        (
            new_form({"type": "video", "device": "cirrus", "specParams": {"ram": 1024}}),
            "devices[0].specParams.ram",
            "only qxl video has 'ram'",
        ),
        (
            new_form({"type": "video", "device": "vga", "specParams": {"vgamem": 1024}}),
            "devices[0].specParams.vgamem",
            "only qxl video has 'vgamem'",
        ),
        (
            new_form({**QXL, "address": 5}),
            "devices[0].address",
            "must be an object with type, domain, bus, slot and function",
        ),
        (
            new_form({**QXL, "address": {"type": "isa"}}),
            "devices[0].address.type",
            "only 'pci' addresses are supported for video",
        ),
        (
            new_form({**QXL, "address": {"type": "pci", "slot": 1}}),
            "devices[0].address.bus",
            "must be a number such as '0x02'",
        ),
        (
            new_form({**QXL, "address": {"type": "pci", "bus": 0, "slot": "two"}}),
            "devices[0].address.slot",
            "'two' is not a number",
        ),
        (
            new_form({**QXL, "address": {"type": "pci", "bus": 0, "slot": 32}}),
            "devices[0].address.slot",
            "must be between 0 and 0x1f",
        ),
        (
            new_form({**QXL, "address": {"type": "pci", "bus": 256, "slot": 1}}),
            "devices[0].address.bus",
            "must be between 0 and 0xff",
        ),
        (
            new_form({**QXL, "address": {"type": "pci", "bus": -1, "slot": 1}}),
            "devices[0].address.bus",
            "must be between 0 and 0xff",
        ),
        (
            new_form({"type": "graphics", "device": "sdl"}),
            "devices[0].device",
            "unknown graphics type 'sdl': expected spice or vnc",
        ),
        (
            new_form({**SPICE, "specParams": {"keyMap": "EN"}}),
            "devices[0].specParams.keyMap",
            "'EN' is not a keyboard layout such as 'en-us'",
        ),
        (
            new_form({**VNC, "specParams": {"displayNetwork": "a b"}}),
            "devices[0].specParams.displayNetwork",
            "'a b' is not a network name",
        ),
        (
            new_form({**VNC, "specParams": {"displayIp": "host"}}),
            "devices[0].specParams.displayIp",
            "'host' is not an IP address",
        ),
        (
            new_form({**VNC, "specParams": {"displayIp": "fe80::1%eth0"}}),
            "devices[0].specParams.displayIp",
            "'fe80::1%eth0' is not an IP address",
        ),
        (
            new_form({**VNC, "specParams": {"displayIp": "10.0.0.1", "displayNetwork": "ovirtmgmt"}}),
            "devices[0].specParams.displayIp",
            "give displayIp or displayNetwork, not both",
        ),
        (
            new_form({**SPICE, "specParams": {"spiceSecureChannels": ["smain"]}}),
            "devices[0].specParams.spiceSecureChannels",
            "must be a comma-separated list such as 'smain,sinputs'",
        ),
        (
            new_form({**SPICE, "specParams": {"spiceSecureChannels": "smain, sbogus"}}),
            "devices[0].specParams.spiceSecureChannels",
            f"unknown SPICE channel 'sbogus': expected some of {ALLOWED_CHANNELS}",
        ),
        (
            new_form({**SPICE, "specParams": {"copyPasteEnable": "yes"}}),
            "devices[0].specParams.copyPasteEnable",
            "'yes' is not 'true' or 'false'",
        ),
        (
            new_form({**SPICE, "specParams": {"fileTransferEnable": 1}}),
            "devices[0].specParams.fileTransferEnable",
            "1 is not 'true' or 'false'",
        ),
        (
            {"display": "qxl", "spiceSecureChannels": "bogus"},
            "spiceSecureChannels",
            f"unknown SPICE channel 'bogus': expected some of {ALLOWED_CHANNELS}",
        ),
        ({"display": "qxl", "copyPasteEnable": "no"}, "copyPasteEnable", "'no' is not 'true' or 'false'"),
        (
            {"display": "qxl", "fileTransferEnable": "no"},
            "fileTransferEnable",
            "'no' is not 'true' or 'false'",
        ),
        ({"display": "vnc", "displayNetwork": "a b"}, "displayNetwork", "'a b' is not a network name"),
        ({"display": "vnc", "displayIp": "1.2.3"}, "displayIp", "'1.2.3' is not an IP address"),
        (
            {"display": "vnc", "keyboardLayout": "EN"},
            "keyboardLayout",
            "'EN' is not a keyboard layout such as 'en-us'",
        ),
        ({"display": "qxl", "spiceMonitors": 5}, "spiceMonitors", "5 is out of range 1..4"),
        (disk(device="floppy"), "devices[0].device", "unknown drive 'floppy': expected disk or cdrom"),
        (disk(format="vmdk"), "devices[0].format", "unknown format 'vmdk': expected raw or qcow2"),
        (disk(format=""), "devices[0].format", "unknown format '': expected raw or qcow2"),
        (disk(device="cdrom", format="cow"), "devices[0].format", "a cdrom is a raw ISO image"),
        (disk(iface="scsi"), "devices[0].iface", "unknown bus 'scsi': expected virtio, sata or ide"),
        (
            disk(device="cdrom", format="raw", iface="virtio"),
            "devices[0].iface",
            "a cdrom sits on sata or ide, not virtio",
        ),
        (disk(readonly="yes"), "devices[0].readonly", "'yes' is not 'true' or 'false'"),
        (disk(bootOrder=65), "devices[0].bootOrder", "65 is out of range 1..64"),
        (disk(path=""), "devices[0].path", "must be the absolute path of an image file"),
        (disk(path=7), "devices[0].path", "must be the absolute path of an image file"),
        (
            disk(path="/img/a\x1f"),
            "devices[0].path",
            "must be a path without control characters, at most 4096 long",
        ),
        (
            disk(path="/img/a\x7f"),
            "devices[0].path",
            "must be a path without control characters, at most 4096 long",
        ),
        (
            disk(path="/" + "a" * 4096),
            "devices[0].path",
            "must be a path without control characters, at most 4096 long",
        ),
        (disk(path="img/a"), "devices[0].path", "'img/a' is not an absolute path"),
        (
            disk(path="/img/../a"),
            "devices[0].path",
            "'/img/../a' is not a normalised path (no '..', '.' or '//')",
        ),
        (
            disk(path="/img/./a"),
            "devices[0].path",
            "'/img/./a' is not a normalised path (no '..', '.' or '//')",
        ),
        (
            new_form(
                DISK0, {**DISK0, "path": "/c", "bootOrder": 2}, {**DISK0, "path": "/b", "bootOrder": "2"}
            ),
            "devices[2].bootOrder",
            "bootOrder 2 is already devices[1]'s",
        ),
        (
            new_form({**DISK0, "readonly": True}, DISK0),
            "devices[1].path",
            "devices[0] uses the same file: only read-only drives may share one",
        ),
    ],
)
def test_refusal_names_exact_field_and_reason(params, field, reason):
    err = fails(params)
    assert (err.field, err.reason) == (field, reason)


@pytest.mark.parametrize(
    ("params", "vm_id", "field", "reason"),
    [
        ({"vmId": 5}, VM_ID, "vmId", "must be a UUID string"),
        ({}, None, "vmID", "must be a UUID string"),
        ({"vmId": "x"}, VM_ID, "vmId", "'x' is not a UUID"),
        ({}, "y", "vmID", "'y' is not a UUID"),
        ({"vmId": VM_ID}, "z", "vmID", "'z' is not a UUID"),
        (
            {"vmId": VM_ID},
            "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b02",
            "vmParams.vmId",
            "differs from the vmID of the call",
        ),
    ],
)
def test_vm_id_refusals_exact(params, vm_id, field, reason):
    err = fails(params, vm_id)
    assert (err.field, err.reason) == (field, reason)


def test_vm_id_only_in_params_or_in_another_spelling():
    assert parse({"vmId": VM_ID}, None).vm_id == VM_ID
    assert parse({"vmId": VM_ID.upper()}, VM_ID).vm_id == VM_ID
    assert parse({"vmId": VM_ID}, VM_ID.upper()).vm_id == VM_ID
    assert parse({}, VM_ID.upper()).vm_id == VM_ID


def test_whole_numbers_in_every_spelling():
    assert parse({"memSize": " 512 "}).memory_mib == 512
    assert parse({"memSize": 512.0}).memory_mib == 512
    assert parse({"memSize": "000000000512"}).memory_mib == 512  # 12 digits
    assert parse({"displayPort": "-1", "displaySecurePort": -1}).graphics == ()


def test_legacy_spice_defaults_and_options():
    got = parse({"display": "qxl"})
    assert got.video == (Video(model=VideoModel.QXL, vram=65536, heads=1),)
    assert got.graphics == (Graphics(type=GraphicsType.SPICE),)
    g = parse({"display": "qxl", "copyPasteEnable": "", "fileTransferEnable": None}).graphics[0]
    assert (g.copy_paste, g.file_transfer, g.image_compression) == (True, True, True)
    g = parse({"display": "qxl", "copyPasteEnable": "FALSE", "fileTransferEnable": False}).graphics[0]
    assert (g.copy_paste, g.file_transfer) == (False, False)
    g = parse({"display": "qxl", "copyPasteEnable": "True", "fileTransferEnable": True}).graphics[0]
    assert (g.copy_paste, g.file_transfer) == (True, True)


def test_vnc_keeps_copy_paste_and_file_transfer_on_and_ignores_their_values():
    g = parse(
        new_form({**VNC, "specParams": {"copyPasteEnable": "false", "fileTransferEnable": "x"}})
    ).graphics[0]
    assert (g.copy_paste, g.file_transfer, g.secure_channels) == (True, True, ())


def test_new_form_graphics_options_read_by_their_names():
    params = {"keyMap": "de", "displayNetwork": "ovirtmgmt", "spiceSecureChannels": "smain"}
    g = parse(new_form({**SPICE, "specParams": params})).graphics[0]
    assert (g.keymap, g.listen_network, g.listen_address, g.secure_channels) == (
        "de",
        "ovirtmgmt",
        None,
        ("main",),
    )
    g = parse(new_form({**SPICE, "specParams": {"displayIp": "::ffff:10.0.0.1", "keyMap": ""}})).graphics[0]
    assert (g.listen_address, g.keymap, g.listen_network) == ("::ffff:a00:1", None, None)
    g = parse(new_form({**VNC, "specParams": {"displayNetwork": "", "displayIp": None}})).graphics[0]
    assert (g.listen_address, g.listen_network) == (None, None)


@pytest.mark.parametrize(
    ("value", "channels"),
    [
        ("smartcard", ("smartcard",)),
        ("ssmartcard", ("smartcard",)),
        ("sdisplay, display ,main", ("display", "main")),
        ("", ()),
    ],
)
def test_secure_channel_names_with_and_without_the_s(value, channels):
    g = parse(new_form({**SPICE, "specParams": {"spiceSecureChannels": value}})).graphics[0]
    assert g.secure_channels == channels


def test_empty_and_missing_address_is_none():
    for address in ({}, "", None):
        assert parse(new_form({**QXL, "address": address})).video[0].address is None
    got = parse(new_form({**QXL, "address": {"type": "pci", "bus": "0x0", "slot": 0}})).video[0].address
    assert got == PciAddress(domain=0, bus=0, slot=0, function=0)


def test_video_values_empty_are_left_out():
    v = parse(
        new_form({**QXL, "specParams": {"vram": "", "heads": None, "ram": "2048", "vgamem": 1024}})
    ).video[0]
    assert v == Video(model=VideoModel.QXL, ram=2048, vgamem=1024)


def test_drive_edges():
    # 16 drives, 4 on ide, boot orders 1 and 64, a path of 4096 and one with a space: all fine.
    many = [{**DISK0, "path": f"/img/{i}.qcow2"} for i in range(12)]
    ide = [{**DISK0, "path": f"/ide/{i}.qcow2", "iface": "ide"} for i in range(4)]
    ide[0]["bootOrder"], ide[1]["bootOrder"] = 1, "64"
    long_path = "/" + "a" * 4095
    many[0]["path"] = long_path
    many[1]["path"] = "/img/a b.qcow2"
    drives = parse(new_form(*many, *ide)).drives
    assert len(drives) == 16
    assert (drives[0].path, drives[1].path) == (long_path, "/img/a b.qcow2")
    assert [d.boot_order for d in drives[12:]] == [1, 64, None, None]


def test_drive_empty_options_take_the_defaults():
    d = parse(disk(readonly="", bootOrder="", iface="")).drives[0]
    assert (d.readonly, d.boot_order, d.bus, d.format) == (False, None, DriveBus.VIRTIO, DriveFormat.QCOW2)
    d = parse(disk(readonly=None, format="raw", iface="sata")).drives[0]
    assert (d.readonly, d.format, d.bus) == (False, DriveFormat.RAW, DriveBus.SATA)
    d = parse(disk(readonly="TRUE")).drives[0]
    assert d.readonly is True


def test_two_empty_cdrom_trays_share_no_file():
    tray = {"type": "disk", "device": "cdrom"}
    drives = parse(new_form(tray, {**tray, "iface": "sata"})).drives
    assert [(d.path, d.readonly) for d in drives] == [(None, True), (None, True)]


def test_parsed_values_are_enum_members_not_strings():
    got = parse(new_form(QXL, SPICE, DISK0, {"type": "disk", "device": "cdrom", "iface": "sata"}))
    assert type(got.video[0].model) is VideoModel
    assert type(got.graphics[0].type) is GraphicsType
    disk_drive, cdrom = got.drives
    assert (type(disk_drive.device), type(disk_drive.format), type(disk_drive.bus)) == (
        DriveDevice,
        DriveFormat,
        DriveBus,
    )
    assert (type(cdrom.device), type(cdrom.format), type(cdrom.bus)) == (DriveDevice, DriveFormat, DriveBus)
    raw = parse(disk(format="raw")).drives[0]
    assert type(raw.format) is DriveFormat


def test_four_video_devices_of_any_model_but_none():
    got = parse(new_form(QXL, {"type": "video", "device": "vga"}, QXL, {"type": "video", "device": "virtio"}))
    assert [v.model for v in got.video] == [VideoModel.QXL, VideoModel.VGA, VideoModel.QXL, VideoModel.VIRTIO]


def test_drive_count_refusals_name_the_devices():
    many = [{**DISK0, "path": f"/img/{i}.qcow2"} for i in range(17)]
    err = fails(new_form(*many))
    assert (err.field, err.reason) == ("devices", "at most 16 disk devices")
    ide = [{**DISK0, "path": f"/img/{i}.qcow2", "iface": "ide"} for i in range(5)]
    err = fails(new_form(*ide))
    assert (err.field, err.reason) == ("devices", "at most 4 drives on ide")


@pytest.mark.parametrize("form", ["new", "legacy"])
def test_empty_display_ip_is_no_address(form):
    if form == "new":
        spec_params = {"displayIp": "", "displayNetwork": "ovirtmgmt"}
        g = parse(new_form({**VNC, "specParams": spec_params})).graphics[0]
    else:
        g = parse({"display": "vnc", "displayIp": "", "displayNetwork": "ovirtmgmt"}).graphics[0]
    assert (g.listen_address, g.listen_network) == (None, "ovirtmgmt")


@pytest.mark.parametrize("path", ["/..", "/a/..", "/../a", "/a/../../b"])
def test_parent_components_are_refused(path):
    err = fails(disk(path=path))
    assert (err.field, err.reason) == (
        "devices[0].path",
        f"{path!r} is not a normalised path (no '..', '.' or '//')",
    )
