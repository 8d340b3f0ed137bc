"""parse_vm_params: both vmCreate generations, exact VmSpecs, and errors naming field and rule."""

from __future__ import annotations

import copy

import pytest

from multiconsole.domain.devices import (
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
