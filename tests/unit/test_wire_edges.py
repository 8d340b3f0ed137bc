"""The exact edges of the wire's ranges: each bound accepted, the next value refused.

The other wire tests use values far outside the ranges; these pin the bounds themselves
(a `<=` turned into `<` must fail a test)."""

from __future__ import annotations

import pytest

from multiconsole.domain.devices import GraphicsType, PciAddress
from multiconsole.domain.errors import FieldError
from multiconsole.wire.stats import ConsoleAddress, consoles_from_stats
from multiconsole.wire.vmcreate import parse_vm_params

VM_ID = "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b01"
HOST = "10.0.0.5"


def refused(params: dict) -> tuple[str, str]:
    with pytest.raises(FieldError) as err:
        parse_vm_params(params, VM_ID)
    return err.value.field, err.value.reason


def video(spec: dict | None = None, address: dict | None = None) -> dict:
    dev = {"type": "video", "device": "qxl", "specParams": spec or {}}
    if address is not None:
        dev["address"] = {"type": "pci", "bus": "0x00", "slot": "0x02", **address}
    return {"devices": [dev, {"type": "graphics", "device": "spice", "specParams": {}}]}


@pytest.mark.parametrize("value, ok", [(15, False), (16, True), (1048576, True), (1048577, False)])
def test_memory_bounds(value, ok):
    if ok:
        assert parse_vm_params({"memSize": value}, VM_ID).memory_mib == value
    else:
        assert refused({"memSize": value}) == ("memSize", f"{value} is out of range 16..1048576")


@pytest.mark.parametrize("value, ok", [(0, False), (1, True), (256, True), (257, False)])
def test_vcpu_bounds(value, ok):
    if ok:
        assert parse_vm_params({"smp": value}, VM_ID).vcpus == value
    else:
        assert refused({"smp": value}) == ("smp", f"{value} is out of range 1..256")


@pytest.mark.parametrize("value, ok", [(1023, False), (1024, True), (1048576, True), (1048577, False)])
def test_vram_bounds(value, ok):
    params = video({"vram": str(value)})
    if ok:
        assert parse_vm_params(params, VM_ID).video[0].vram == value
    else:
        assert refused(params) == ("devices[0].specParams.vram", f"{value} is out of range 1024..1048576")


@pytest.mark.parametrize("value, ok", [(0, False), (1, True), (4, True), (5, False)])
def test_heads_bounds(value, ok):
    params = video({"heads": value})
    if ok:
        assert parse_vm_params(params, VM_ID).video[0].heads == value
    else:
        assert refused(params) == ("devices[0].specParams.heads", f"{value} is out of range 1..4")


@pytest.mark.parametrize("key, top", [("domain", 0xFFFF), ("bus", 0xFF), ("slot", 0x1F), ("function", 0x7)])
def test_pci_address_bounds(key, top):
    spec = parse_vm_params(video(address={key: hex(top)}), VM_ID)
    assert getattr(spec.video[0].address, key) == top
    assert getattr(spec.video[0].address, key) == top
    assert parse_vm_params(video(address={key: 0}), VM_ID).video[0].address is not None
    assert refused(video(address={key: hex(top + 1)})) == (
        f"devices[0].address.{key}",
        f"must be between 0 and {top:#x}",
    )
    assert refused(video(address={key: -1}))[0] == f"devices[0].address.{key}"


def test_pci_address_defaults_and_numbers():
    spec = parse_vm_params(video(address={}), VM_ID)
    assert spec.video[0].address == PciAddress(domain=0, bus=0, slot=2, function=0)
    assert refused(video(address={"slot": True}))[1] == "must be a number such as '0x02'"
    assert refused(video(address={"slot": "two"}))[1] == "'two' is not a number"


@pytest.mark.parametrize("key", ["displayPort", "displaySecurePort"])
@pytest.mark.parametrize("value, ok", [(-2, False), (-1, True), (65535, True), (65536, False)])
def test_legacy_port_bounds(key, value, ok):
    params = {"display": "vnc", key: value}
    if ok:
        parse_vm_params(params, VM_ID)
    else:
        assert refused(params) == (key, f"{value} is out of range -1..65535")


@pytest.mark.parametrize("monitors, vram", [(1, 65536), (2, 65536), (3, 32768), (4, 32768)])
def test_legacy_qxl_video_per_monitor_count(monitors, vram):
    spec = parse_vm_params({"display": "qxl", "spiceMonitors": monitors}, VM_ID)
    assert [v.vram for v in spec.video] == [vram] * monitors


def test_whole_numbers_as_text():
    assert parse_vm_params({"memSize": " 512 "}, VM_ID).memory_mib == 512
    assert parse_vm_params({"memSize": 512.0}, VM_ID).memory_mib == 512
    assert refused({"memSize": "1234567890123"}) == ("memSize", "'1234567890123' is not a whole number")
    assert refused({"memSize": "123456789012"}) == ("memSize", "123456789012 is out of range 16..1048576")
    assert refused({"memSize": True}) == ("memSize", "must be a whole number, not a boolean")
    assert refused({"memSize": 512.5}) == ("memSize", "must be a whole number")


@pytest.mark.parametrize("port, kept", [(0, None), (1, 1), (65535, 65535), (65536, None), (-1, None)])
def test_stats_port_bounds(port, kept):
    stats = {"displayInfo": [{"type": "vnc", "port": str(port), "tlsPort": "5999", "ipAddress": HOST}]}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(GraphicsType.VNC, HOST, kept, 5999)]
    legacy = {"displayType": "vnc", "displayPort": port, "displaySecurePort": 5999, "displayIp": HOST}
    assert consoles_from_stats(legacy, HOST, legacy=True) == [
        ConsoleAddress(GraphicsType.VNC, HOST, kept, 5999)
    ]
