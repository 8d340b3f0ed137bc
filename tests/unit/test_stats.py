"""Display stats, host side (display_stats) and engine side (consoles_from_stats)."""

from __future__ import annotations

import pytest

from multiconsole.domain.devices import GraphicsType
from multiconsole.wire.stats import ConsoleAddress, LiveConsole, consoles_from_stats, display_stats

SPICE, VNC = GraphicsType.SPICE, GraphicsType.VNC
HOST = "192.0.2.10"


def live(gtype, port, tls=None, address="10.0.0.5") -> LiveConsole:
    return LiveConsole(type=gtype, port=port, tls_port=tls, address=address)


# --- host side -------------------------------------------------------------------


def test_spice_only():
    assert display_stats([live(SPICE, 5900)]) == {
        "displayInfo": [
            {"type": "spice", "port": "5900", "tlsPort": "", "ipAddress": "10.0.0.5"},
        ],
        "displayType": "qxl",
        "displayPort": "5900",
        "displaySecurePort": "",
        "displayIp": "10.0.0.5",
        "additionalDisplayPort": "",
    }


def test_vnc_only_has_empty_additional_port():
    assert display_stats([live(VNC, 5901)]) == {
        "displayInfo": [
            {"type": "vnc", "port": "5901", "tlsPort": "", "ipAddress": "10.0.0.5"},
        ],
        "displayType": "vnc",
        "displayPort": "5901",
        "displaySecurePort": "",
        "displayIp": "10.0.0.5",
        "additionalDisplayPort": "",
    }


def test_both_in_live_order_vnc_first():
    # The agent writes VNC before SPICE; legacy fields still describe SPICE first.
    assert display_stats([live(VNC, 5900), live(SPICE, 5901, 5902)]) == {
        "displayInfo": [
            {"type": "vnc", "port": "5900", "tlsPort": "", "ipAddress": "10.0.0.5"},
            {"type": "spice", "port": "5901", "tlsPort": "5902", "ipAddress": "10.0.0.5"},
        ],
        "displayType": "qxl",
        "displayPort": "5901",
        "displaySecurePort": "5902",
        "displayIp": "10.0.0.5",
        "additionalDisplayPort": "5900",
    }


def test_both_spice_first():
    stats = display_stats([live(SPICE, 5904), live(VNC, 5905)])
    assert [e["type"] for e in stats["displayInfo"]] == ["spice", "vnc"]
    assert (stats["displayType"], stats["displayPort"], stats["additionalDisplayPort"]) == (
        "qxl",
        "5904",
        "5905",
    )


def test_headless():
    assert display_stats([]) == {
        "displayInfo": [],
        "displayType": "",
        "displayPort": "",
        "displaySecurePort": "",
        "displayIp": "",
        "additionalDisplayPort": "",
    }


def test_tls_spice():
    assert display_stats([live(SPICE, 5900, 5901)]) == {
        "displayInfo": [
            {"type": "spice", "port": "5900", "tlsPort": "5901", "ipAddress": "10.0.0.5"},
        ],
        "displayType": "qxl",
        "displayPort": "5900",
        "displaySecurePort": "5901",
        "displayIp": "10.0.0.5",
        "additionalDisplayPort": "",
    }


def test_tls_only_spice_reports_port_minus_one():
    assert display_stats([live(SPICE, -1, 5901, "0")]) == {
        "displayInfo": [
            {"type": "spice", "port": "-1", "tlsPort": "5901", "ipAddress": "0"},
        ],
        "displayType": "qxl",
        "displayPort": "-1",
        "displaySecurePort": "5901",
        "displayIp": "0",
        "additionalDisplayPort": "",
    }


def test_vnc_never_reports_a_tls_port():
    info = display_stats([live(VNC, 5900, 5999)])
    assert info["displayInfo"][0]["tlsPort"] == ""
    assert info["displaySecurePort"] == ""


# --- engine side -----------------------------------------------------------------


def test_engine_reads_display_info_of_both():
    stats = display_stats([live(VNC, 5900), live(SPICE, 5901, 5902)])
    assert consoles_from_stats(stats, HOST) == [
        ConsoleAddress(VNC, "10.0.0.5", 5900, None),
        ConsoleAddress(SPICE, "10.0.0.5", 5901, 5902),
    ]


def test_engine_reads_tls_only_spice():
    stats = display_stats([live(SPICE, -1, 5901)])
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(SPICE, "10.0.0.5", None, 5901)]


def test_display_info_preferred_over_legacy_fields():
    stats = {
        "displayInfo": [{"type": "vnc", "port": "5910", "tlsPort": "", "ipAddress": "10.0.0.7"}],
        "displayType": "qxl",
        "displayPort": "5900",
        "displaySecurePort": "5901",
        "displayIp": "10.0.0.5",
    }
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, "10.0.0.7", 5910, None)]


def test_legacy_vnc():
    stats = {"displayType": "vnc", "displayPort": "5900", "displaySecurePort": "-1"}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, HOST, 5900, None)]


def test_legacy_qxl_with_secure_port():
    stats = {
        "displayType": "qxl",
        "displayPort": "5900",
        "displaySecurePort": "5901",
        "displayIp": "10.0.0.5",
    }
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(SPICE, "10.0.0.5", 5900, 5901)]


def test_legacy_with_additional_display_port_is_vnc():
    stats = {
        "displayType": "qxl",
        "displayPort": 5900,
        "displaySecurePort": "",
        "displayIp": "10.0.0.5",
        "additionalDisplayPort": "5902",
    }
    assert consoles_from_stats(stats, HOST) == [
        ConsoleAddress(SPICE, "10.0.0.5", 5900, None),
        ConsoleAddress(VNC, "10.0.0.5", 5902, None),
    ]


def test_additional_port_ignored_when_primary_is_vnc():
    stats = {"displayType": "vnc", "displayPort": "5900", "additionalDisplayPort": "5902"}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, HOST, 5900, None)]


def test_legacy_form_of_an_old_agent_without_display_info():
    # What this agent's own stats look like to an engine reading only legacy fields.
    stats = display_stats([live(VNC, 5900), live(SPICE, 5901, 5902)])
    del stats["displayInfo"]
    assert consoles_from_stats(stats, HOST) == [
        ConsoleAddress(SPICE, "10.0.0.5", 5901, 5902),
        ConsoleAddress(VNC, "10.0.0.5", 5900, None),
    ]


def test_empty_display_info_falls_back_to_legacy():
    stats = {"displayInfo": [], "displayType": "vnc", "displayPort": "5900", "displayIp": "h"}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, "h", 5900, None)]


@pytest.mark.parametrize("address", ["0", "0.0.0.0", "", " 0.0.0.0 ", "::", None])
def test_unspecified_address_replaced_by_host(address):
    stats = {"displayInfo": [{"type": "spice", "port": "5900", "ipAddress": address}]}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(SPICE, HOST, 5900, None)]


@pytest.mark.parametrize("address", ["0", "0.0.0.0"])
def test_unspecified_legacy_address_replaced_by_host(address):
    stats = {"displayType": "qxl", "displayPort": "5900", "displayIp": address}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(SPICE, HOST, 5900, None)]


def test_entries_without_any_port_are_dropped():
    stats = {
        "displayInfo": [
            {"type": "spice", "port": "-1", "tlsPort": "", "ipAddress": "10.0.0.5"},
            {"type": "vnc", "port": "", "tlsPort": "", "ipAddress": "10.0.0.5"},
            {"type": "vnc", "port": "0", "ipAddress": "10.0.0.5"},
            {"type": "vnc", "port": "5903", "ipAddress": "10.0.0.5"},
        ]
    }
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, "10.0.0.5", 5903, None)]


def test_legacy_without_port_gives_nothing():
    stats = {"displayType": "vnc", "displayPort": "-1", "displaySecurePort": ""}
    assert consoles_from_stats(stats, HOST) == []


def test_headless_stats_give_nothing():
    assert consoles_from_stats(display_stats([]), HOST) == []
    assert consoles_from_stats({}, HOST) == []


def test_qxlnc_display_type_is_spice():
    stats = {"displayType": "qxlnc", "displayPort": "5900"}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(SPICE, HOST, 5900, None)]


HUGE = 10**5000  # str() of it raises ValueError


GARBAGE = [
    {"displayInfo": "spice"},
    {"displayInfo": [None, 5, "x", [], {}]},
    {"displayInfo": [{"type": HUGE, "port": "5900"}]},
    {"displayInfo": [{"type": ["spice"], "port": "5900"}]},
    {"displayInfo": [{"type": "sdl", "port": "5900"}]},
    {"displayInfo": [{"type": "vnc", "port": HUGE, "tlsPort": {"a": 1}}]},
    {"displayInfo": [{"type": "vnc", "port": True, "tlsPort": 5900.5}]},
    {"displayInfo": [{"type": "vnc", "port": "70000"}]},
    {"displayType": HUGE, "displayPort": "5900"},
    {"displayType": None, "displayPort": "5900"},
    {"displayType": "vnc", "displayPort": ["5900"]},
    {"displayType": "vnc", "displayPort": "5900x"},
]


# Named by index: pytest cannot even str() the huge int for an id.
@pytest.mark.parametrize("stats", GARBAGE, ids=[f"garbage{i}" for i in range(len(GARBAGE))])
def test_garbage_gives_no_console_and_no_crash(stats):
    assert consoles_from_stats(stats, HOST) == []


@pytest.mark.parametrize(
    "address", [HUGE, 5, ["10.0.0.5"], {"ip": "10.0.0.5"}], ids=["huge", "int", "list", "dict"]
)
def test_garbage_address_is_replaced_by_host(address):
    stats = {"displayInfo": [{"type": "vnc", "port": " 5900 ", "ipAddress": address}]}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, HOST, 5900, None)]


def test_garbage_legacy_address_is_replaced_by_host():
    stats = {"displayType": "VNC", "displayPort": 5900, "displayIp": HUGE}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, HOST, 5900, None)]


def test_exit_fields_of_a_down_vm_read_back_safely():
    from multiconsole.wire.exits import ExitCode, ExitReason, VmExit

    crash = VmExit.of(ExitReason.LOST_QEMU_CONNECTION)
    assert crash.crashed and VmExit.from_stats(crash.to_stats()) == crash
    assert not VmExit.of(ExitReason.ADMIN_SHUTDOWN).crashed
    # Old agents send nothing; nonsense is no exit, or only what can be told.
    for stats in ({}, {"exitCode": True}, {"exitCode": "1"}, {"exitCode": 7}):
        assert VmExit.from_stats(stats) is None
    odd = VmExit.from_stats({"exitCode": 1, "exitReason": 999, "exitMessage": ["x"]})
    assert odd == VmExit(ExitCode.ERROR, ExitReason.GENERIC_ERROR, "VM terminated with error")
    assert len(VmExit.from_stats({"exitCode": 0, "exitReason": 7, "exitMessage": "m" * 5000}).message) == 512


def test_display_info_that_is_not_a_list_falls_back_to_legacy():
    stats = {"displayInfo": "spice", "displayType": "vnc", "displayPort": "5900", "displayIp": "h"}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, "h", 5900, None)]


def test_legacy_tls_only_spice():
    stats = {"displayType": "qxl", "displayPort": "-1", "displaySecurePort": "5901", "displayIp": "h"}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(SPICE, "h", None, 5901)]
    stats = {"displayType": "qxl", "displayPort": "5900", "displaySecurePort": "", "displayIp": "h"}
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(SPICE, "h", 5900, None)]


def test_display_info_tls_only_and_plain_entries():
    stats = {
        "displayInfo": [
            {"type": "qxl", "port": "-1", "tlsPort": "5901", "ipAddress": "h"},
            {"type": "vnc", "port": "5900", "tlsPort": "", "ipAddress": "h"},
        ]
    }
    assert consoles_from_stats(stats, HOST) == [
        ConsoleAddress(SPICE, "h", None, 5901),
        ConsoleAddress(VNC, "h", 5900, None),
    ]


def test_legacy_flag_ignores_display_info():
    stats = {
        "displayInfo": [{"type": "vnc", "port": "5901", "ipAddress": "h"}],
        "displayType": "qxl",
        "displayPort": "5900",
        "displayIp": "h",
    }
    assert consoles_from_stats(stats, HOST, legacy=True) == [ConsoleAddress(SPICE, "h", 5900, None)]
    assert consoles_from_stats(stats, HOST) == [ConsoleAddress(VNC, "h", 5901, None)]


def test_primary_is_spice_else_the_first():
    from multiconsole.wire.stats import primary

    vnc1, vnc2, spice = live(VNC, 5900), live(VNC, 5901), live(SPICE, 5902)
    assert primary([vnc1, vnc2, spice]) is spice
    assert primary([vnc2, vnc1]) is vnc2
    assert primary([]) is None


def test_console_records_are_immutable():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        live(VNC, 5900).port = 5901  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ConsoleAddress(VNC, HOST, 5900, None).port = 5901  # type: ignore[misc]


def test_booleans_are_no_ports():
    stats = {"displayInfo": [{"type": "spice", "port": True, "tlsPort": False, "ipAddress": "h"}]}
    assert consoles_from_stats(stats, HOST) == []
    legacy = {"displayType": "qxl", "displayPort": True, "displaySecurePort": False}
    legacy["additionalDisplayPort"] = True
    assert consoles_from_stats(legacy, HOST) == []
