"""One VM, SPICE and VNC at once, through the agent on real QEMU with real clients."""

from __future__ import annotations

import time

import pytest

from multiconsole.domain.devices import LOCKED_PASSWORD
from multiconsole.engine.broker import AgentCallError
from tests.conftest import artifacts_dir
from tests.integration.clients import (
    capture_screen,
    colours,
    same_screen,
    spice_capture,
    vnc_capture,
)
from tests.integration.conftest import ports, ticket


@pytest.fixture
def shots(tmp_path):
    return tmp_path


def test_both_consoles_locked_then_opened_one_by_one(agent_proc, agent, vms, shots):
    stats = vms.create(vms.params("spice", "vnc"))
    assert stats["status"] == "Up"
    p = ports(stats)
    assert set(p) == {"spice", "vnc"} and all(port > 0 for port in p.values())
    # The legacy fields and the feature page's additionalDisplayPort agree with displayInfo.
    assert stats["displayType"] == "qxl"
    assert int(stats["displayPort"]) == p["spice"]
    assert int(stats["additionalDisplayPort"]) == p["vnc"]
    vm_id = stats["vmId"]

    # Locked before any ticket: no password works, not even the placeholder.
    for password in ("", LOCKED_PASSWORD, "guess123"):
        assert vnc_capture(p["vnc"], password or "x", shots / "v0.png") != 0
        assert spice_capture(p["spice"], password or "x", shots / "s0.png") != 0

    ticket(agent, vm_id, "vnc", "vncPass1")
    assert capture_screen(vnc_capture, p["vnc"], "vncPass1", shots / "vnc.png") == 0
    assert colours(shots / "vnc.png") > 1
    # Opening VNC did not open SPICE.
    assert spice_capture(p["spice"], "vncPass1", shots / "s1.png") != 0

    ticket(agent, vm_id, "spice", "spicePw2")
    assert capture_screen(spice_capture, p["spice"], "spicePw2", shots / "spice.png") == 0
    # Both consoles open at once, showing the same screen.
    assert vnc_capture(p["vnc"], "vncPass1", shots / "vnc2.png") == 0
    assert same_screen(shots / "vnc2.png", shots / "spice.png")
    for name in ("vnc2.png", "spice.png"):
        (artifacts_dir() / f"agent-two-consoles-{name}").write_bytes((shots / name).read_bytes())

    # Wrong passwords are refused on both.
    assert vnc_capture(p["vnc"], "wrong", shots / "w.png") == 3
    assert spice_capture(p["spice"], "wrong", shots / "w.png") == 1

    # The agent logged the tickets (it runs --verbose) but never their passwords.
    log = agent_proc.log_path.read_text()
    assert "ticket set" in log
    for secret in ("vncPass1", "spicePw2"):
        assert secret not in log


def test_expired_ticket_is_refused(agent, vms, shots):
    stats = vms.create(vms.params("spice", "vnc"))
    p = ports(stats)
    ticket(agent, stats["vmId"], "vnc", "shortvnc", ttl=2)
    ticket(agent, stats["vmId"], "spice", "shortspc", ttl=2)
    time.sleep(3.5)
    assert vnc_capture(p["vnc"], "shortvnc", shots / "v.png") == 3
    assert spice_capture(p["spice"], "shortspc", shots / "s.png") == 1


def test_set_ticket_opens_the_first_console_only(agent, vms, shots):
    # The engine sent VNC first: the legacy call opens VNC, not SPICE.
    params = vms.params("vnc", "spice")
    stats = vms.create(params)
    p = ports(stats)
    agent.call(
        "VM.setTicket",
        vmID=stats["vmId"],
        password="firstOne",
        ttl=60,
        existingConnAction="disconnect",
        params={"userName": "admin"},
    )
    assert capture_screen(vnc_capture, p["vnc"], "firstOne", shots / "v.png") == 0
    assert spice_capture(p["spice"], "firstOne", shots / "s.png") == 1

    stats = vms.create(vms.params("spice", "vnc"))
    p = ports(stats)
    agent.call(
        "VM.setTicket",
        vmID=stats["vmId"],
        password="spiceFst",
        ttl=60,
        existingConnAction="disconnect",
        params={},
    )
    assert capture_screen(spice_capture, p["spice"], "spiceFst", shots / "s.png") == 0
    assert vnc_capture(p["vnc"], "spiceFst", shots / "v.png") == 3


def test_ticket_refusals(agent, vms):
    stats = vms.create(vms.params("spice", "vnc"))
    vm_id = stats["vmId"]
    with pytest.raises(AgentCallError) as err:
        ticket(agent, vm_id, "vnc", "nine_char")
    assert err.value.code == -32602 and err.value.data["field"] == "password"
    with pytest.raises(AgentCallError) as err:
        ticket(agent, vm_id, "spice", "abc", ttl=0)
    assert err.value.code == -32602 and "ttl" in err.value.data["field"]
    with pytest.raises(AgentCallError) as err:
        ticket(agent, vm_id, "spice", "abc", ttl=-5)
    assert err.value.code == -32602
    # SPICE passwords may be longer than VNC's.
    ticket(agent, vm_id, "spice", "a-longer-spice-password")

    vnc_only = vms.create(vms.params("vnc", video="vga"))
    with pytest.raises(AgentCallError) as err:
        ticket(agent, vnc_only["vmId"], "spice", "abc")
    assert err.value.code == 101
    with pytest.raises(AgentCallError) as err:
        ticket(agent, "00000000-0000-0000-0000-000000000001", "vnc", "abc")
    assert err.value.code == 1


def test_legacy_vmcreate_of_an_old_engine(agent, vms, shots):
    """The feature page's legacy vmCreate (display 'vnc', cirrus video), as old engines send it."""
    params = vms.params()
    params.pop("devices")
    params.update(
        {
            "display": "vnc",
            "displayPort": -1,
            "displaySecurePort": -1,
            "devices": [
                {
                    "device": "cirrus",
                    "type": "video",
                    "deviceId": "0ec7c2b9-62c9-4578-b096-f453b5cfc677",
                    "address": {
                        "bus": "0x00",
                        "domain": "0x0000",
                        "function": "0x0",
                        "slot": "0x02",
                        "type": "pci",
                    },
                    "specParams": {"vram": "32768", "heads": "1"},
                }
            ],
        }
    )
    stats = vms.create(params)
    assert [d["type"] for d in stats["displayInfo"]] == ["vnc"]
    assert stats["displayType"] == "vnc" and stats["additionalDisplayPort"] == ""
    port = int(stats["displayPort"])
    agent.call(
        "VM.setTicket",
        vmID=stats["vmId"],
        password="oldengin",
        ttl=60,
        existingConnAction="keep",
        params={},
    )
    assert capture_screen(vnc_capture, port, "oldengin", shots / "v.png") == 0
    assert colours(shots / "v.png") > 1
