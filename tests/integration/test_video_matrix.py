"""Every video model with SPICE, with VNC and with both: starts with working consoles,
or is refused with a clear error. What QEMU 7.2 / libvirt 9.0 accept is in the README."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest

from multiconsole.engine.broker import AgentCallError, AgentClient
from tests.integration.clients import capture_screen, colours, spice_capture, vnc_capture
from tests.integration.conftest import ports, ticket

VIDEOS = ("qxl", "vga", "cirrus", "bochs", "virtio")
CONSOLES = (("spice",), ("vnc",), ("spice", "vnc"))
CAPTURE = {"spice": spice_capture, "vnc": vnc_capture}


def test_every_video_model_with_every_console_set(agent_proc, vms, tmp_path):
    combos = list(itertools.product(VIDEOS, CONSOLES))

    def start(combo):
        video, consoles = combo
        with AgentClient(agent_proc.url) as client:
            params = vms.params(*consoles, video=video)
            vms.ids.append(params["vmId"])
            return client.call("VM.create", vmID=params["vmId"], vmParams=params)["vmList"]

    with ThreadPoolExecutor(4) as pool:
        started = list(pool.map(start, combos))

    failures = []
    for (video, consoles), stats in zip(combos, started, strict=True):
        assert stats["status"] == "Up"
        p = ports(stats)
        assert sorted(p) == sorted(consoles)
        for console in consoles:
            ticket(vms.client, stats["vmId"], console, "matrix01")
            shot = tmp_path / f"{video}-{'-'.join(consoles)}-{console}.png"
            rc = capture_screen(CAPTURE[console], p[console], "matrix01", shot)
            if rc != 0 or colours(shot) < 2:
                failures.append(f"{video} + {'+'.join(consoles)}: {console} rc={rc}")
    assert failures == []


@pytest.mark.parametrize("consoles", CONSOLES)
def test_video_none_with_a_console_is_refused(agent, system_conn, consoles):
    params = {
        "vmName": "it-none-video",
        "memSize": 64,
        "devices": [{"type": "video", "device": "none"}]
        + [{"type": "graphics", "device": c} for c in consoles],
    }
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.create", vmID="5a4f0c4e-3a39-4f7e-9d55-1b7c3c1c0d01", vmParams=params)
    assert err.value.code == -32602
    assert "none" in err.value.message and err.value.data["field"] == "devices"
    assert "it-none-video" not in [d.name() for d in system_conn.listAllDomains()]


def test_headless_vm_has_no_console(agent, vms):
    params = vms.params(video="none")
    stats = vms.create(params)
    assert stats["status"] == "Up"
    assert stats["displayInfo"] == [] and stats["displayType"] == ""
    with pytest.raises(AgentCallError) as err:
        agent.call(
            "VM.setTicket",
            vmID=stats["vmId"],
            password="x",
            ttl=30,
            existingConnAction="keep",
            params={},
        )
    assert err.value.code == 101
