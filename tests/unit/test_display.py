"""The display rules of domain/display.py, pinned one by one: field, message, defaults and the
transformations. The rules matrix through the API (tests/engine/test_rules_matrix.py) checks
the same rules end to end; these tests say exactly what each rule answers."""

from __future__ import annotations

import dataclasses

import pytest

from multiconsole.domain.devices import GraphicsType, VideoModel
from multiconsole.domain.display import (
    ARCHES,
    CLUSTER_LEVELS,
    KEYMAP_RE,
    LEVEL_MULTI_CONSOLE,
    OS_TYPES,
    SPICE_MONITORS,
    DisconnectAction,
    DisplayConfig,
    level_tuple,
    multi_console,
    violations,
)
from multiconsole.domain.errors import FieldError

SPICE, VNC = GraphicsType.SPICE, GraphicsType.VNC
QXL, VGA, CIRRUS, BOCHS, VIRTIO, NONE = (
    VideoModel.QXL,
    VideoModel.VGA,
    VideoModel.CIRRUS,
    VideoModel.BOCHS,
    VideoModel.VIRTIO,
    VideoModel.NONE,
)


def problems(display: DisplayConfig, os_type="other", level="4.7", arch="x86_64") -> list[tuple[str, str]]:
    return [(e.field, e.reason) for e in violations(display, os_type, level, arch)]


def cfg(video=QXL, graphics=(SPICE, VNC), **kw) -> DisplayConfig:
    return DisplayConfig(video=video, graphics=tuple(graphics), **kw)


# --- constants and the OS table ---------------------------------------------------------


def test_constants():
    assert CLUSTER_LEVELS == ("3.3", "3.4", "4.0", "4.7")
    assert ARCHES == ("x86_64", "ppc64")
    assert LEVEL_MULTI_CONSOLE == (3, 4)
    assert SPICE_MONITORS == (1, 2, 4)
    assert [a.value for a in DisconnectAction] == ["NONE", "LOCK_SCREEN", "LOGOUT", "SHUTDOWN", "REBOOT"]


def test_os_table():
    x86 = {(SPICE, QXL), (VNC, VGA), (VNC, QXL), (VNC, CIRRUS), (VNC, BOCHS)}
    ppc = {(VNC, VGA)}
    expected = {
        "other": ("Other OS", "x86_64", x86),
        "other_linux": ("Linux", "x86_64", x86),
        "debian_12": ("Debian 12", "x86_64", x86),
        "rhel_9x64": ("Red Hat Enterprise Linux 9.x x64", "x86_64", x86),
        "ubuntu_24_04": ("Ubuntu 24.04", "x86_64", x86),
        "windows_11": ("Windows 11", "x86_64", x86),
        "windows_2022": ("Windows Server 2022", "x86_64", x86),
        "other_ppc64": ("Other OS (ppc64)", "ppc64", ppc),
        "other_linux_ppc64": ("Linux (ppc64)", "ppc64", ppc),
        "rhel_9_ppc64": ("Red Hat Enterprise Linux 9.x (ppc64)", "ppc64", ppc),
    }
    assert {n: (o.label, o.arch, set(o.pairs)) for n, o in OS_TYPES.items()} == expected
    assert all(o.name == n for n, o in OS_TYPES.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        OS_TYPES["other"].arch = "ppc64"  # type: ignore[misc]


@pytest.mark.parametrize(
    "layout, ok",
    [("en-us", True), ("de", True), ("fr-ch", True), ("ja", True), ("pt-br", True), ("abc-abcdefgh", True),
     ("EN-US", False), ("e", False), ("abcd", False), ("en_us", False), ("en-", False),
     ("en-abcdefghi", False), ("en-us-x", False), ("", False), ("en-u", False)],
)  # fmt: skip
def test_keymap_shape(layout, ok):
    assert bool(KEYMAP_RE.fullmatch(layout)) is ok


def test_levels():
    assert level_tuple("3.3") == (3, 3)
    assert level_tuple("4.10") == (4, 10)
    assert not multi_console("3.3")
    assert multi_console("3.4")
    assert multi_console("4.0")
    assert multi_console("4.7")


# --- defaults and JSON --------------------------------------------------------------------


def test_defaults():
    d = DisplayConfig()
    assert d.video == QXL
    assert d.graphics == (SPICE, VNC)
    assert d.monitors == 1
    assert d.vram is None
    assert d.keyboard_layout is None
    assert d.copy_paste is True
    assert d.file_transfer is True
    assert d.spice_secure_channels == ()
    assert d.disconnect_action == DisconnectAction.LOCK_SCREEN
    assert d.allow_reconnect is False
    assert d.device_ids == {}
    assert DisplayConfig().device_ids is not d.device_ids  # no shared mutable default
    assert d.headless is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.monitors = 2  # type: ignore[misc]
    assert DisplayConfig(video=NONE, graphics=()).headless is True


def test_to_json_is_plain_values():
    d = cfg(
        VGA,
        (VNC,),
        monitors=1,
        vram=16384,
        keyboard_layout="de",
        copy_paste=False,
        file_transfer=False,
        spice_secure_channels=("main", "inputs"),
        disconnect_action=DisconnectAction.LOGOUT,
        allow_reconnect=True,
        device_ids={"vnc": "id-1"},
    )
    assert d.to_json() == {
        "video": "vga",
        "graphics": ["vnc"],
        "monitors": 1,
        "vram": 16384,
        "keyboard_layout": "de",
        "copy_paste": False,
        "file_transfer": False,
        "spice_secure_channels": ["main", "inputs"],
        "disconnect_action": "LOGOUT",
        "allow_reconnect": True,
        "device_ids": {"vnc": "id-1"},
    }
    j = d.to_json()
    assert type(j["video"]) is str and type(j["graphics"][0]) is str and type(j["disconnect_action"]) is str
    assert DisplayConfig.from_json(j) == d


def test_from_json_defaults_for_missing_keys():
    d = DisplayConfig.from_json({"video": "qxl"})
    assert d == DisplayConfig(video=QXL, graphics=())
    assert d.monitors == 1
    assert d.vram is None and d.keyboard_layout is None
    assert d.copy_paste is True and d.file_transfer is True
    assert d.allow_reconnect is False
    assert d.disconnect_action == DisconnectAction.LOCK_SCREEN
    assert d.spice_secure_channels == () and d.device_ids == {}


def test_from_json_reads_every_key():
    j = {
        "video": "cirrus",
        "graphics": ["vnc", "spice"],
        "monitors": 4,
        "vram": 8192,
        "keyboard_layout": "fr",
        "copy_paste": False,
        "file_transfer": False,
        "spice_secure_channels": ["display"],
        "disconnect_action": "REBOOT",
        "allow_reconnect": True,
        "device_ids": {"spice": "s"},
    }
    d = DisplayConfig.from_json(j)
    assert d.video == CIRRUS and d.graphics == (VNC, SPICE)
    assert isinstance(d.graphics, tuple) and isinstance(d.spice_secure_channels, tuple)
    assert (d.monitors, d.vram, d.keyboard_layout) == (4, 8192, "fr")
    assert (d.copy_paste, d.file_transfer, d.allow_reconnect) == (False, False, True)
    assert d.spice_secure_channels == ("display",)
    assert d.disconnect_action == DisconnectAction.REBOOT
    assert d.device_ids == {"spice": "s"}
    j["device_ids"]["spice"] = "changed"
    assert d.device_ids == {"spice": "s"}  # a copy, not the caller's dict
    with pytest.raises(ValueError):
        DisplayConfig.from_json({"video": "matrox"})


# --- transformations -------------------------------------------------------------------


def test_with_console_keeps_a_fitting_video():
    assert cfg(QXL, (VNC,)).with_console(SPICE) == cfg(QXL, (VNC, SPICE))
    assert cfg(QXL, (SPICE,)).with_console(VNC) == cfg(QXL, (SPICE, VNC))
    assert cfg(CIRRUS, ()).with_console(VNC).video == CIRRUS  # not headless: video kept


@pytest.mark.parametrize("video", [VGA, CIRRUS, BOCHS, VIRTIO])
def test_with_spice_switches_video_to_qxl(video):
    d = cfg(video, (VNC,), monitors=1, keyboard_layout="de").with_console(SPICE)
    assert d.video == QXL
    assert d.graphics == (VNC, SPICE)
    assert d.keyboard_layout == "de"  # the rest is kept


def test_with_console_on_headless_vm():
    assert cfg(NONE, ()).with_console(SPICE) == cfg(QXL, (SPICE,))
    assert cfg(NONE, ()).with_console(VNC) == cfg(VGA, (VNC,))


def test_with_console_refuses_a_second_of_a_protocol():
    with pytest.raises(FieldError) as err:
        cfg(QXL, (SPICE, VNC)).with_console(VNC)
    assert (err.value.field, err.value.reason) == ("protocol", "the VM already has a vnc console")
    with pytest.raises(FieldError) as err:
        cfg(QXL, (SPICE,)).with_console(SPICE)
    assert err.value.reason == "the VM already has a spice console"


def test_without_console():
    d = cfg(QXL, (SPICE, VNC), monitors=1)
    assert d.without_console(SPICE) == cfg(QXL, (VNC,))
    assert d.without_console(VNC) == cfg(QXL, (SPICE,))
    last = cfg(QXL, (SPICE,), monitors=4).without_console(SPICE)
    assert last == cfg(NONE, (), monitors=1)  # the last console: headless, one monitor
    assert last.headless
    with pytest.raises(FieldError) as err:
        cfg(QXL, (SPICE,)).without_console(VNC)
    assert (err.value.field, err.value.reason) == ("protocol", "the VM has no vnc console")


# --- the rules, one by one ---------------------------------------------------------------


def test_valid_configurations_have_no_violations():
    assert problems(cfg(QXL, (SPICE, VNC))) == []
    assert problems(cfg(QXL, (SPICE,), monitors=4)) == []
    assert problems(cfg(QXL, (SPICE,), monitors=2)) == []
    assert problems(cfg(VGA, (VNC,))) == []
    assert problems(cfg(NONE, ())) == []
    assert problems(cfg(QXL, (SPICE,)), level="3.3") == []
    assert problems(cfg(VGA, (VNC,)), os_type="other_ppc64", arch="ppc64") == []
    assert problems(cfg(QXL, (SPICE, VNC), keyboard_layout="en-us")) == []


def test_unknown_os_type():
    assert problems(cfg(), os_type="beos") == [("os_type", "unknown OS type 'beos'")]


def test_os_type_of_another_arch():
    assert problems(cfg(VGA, (VNC,)), os_type="other_ppc64") == [
        ("os_type", "Other OS (ppc64) runs on ppc64, the cluster is x86_64")
    ]
    assert problems(cfg(VGA, (VNC,)), os_type="debian_12", arch="ppc64") == [
        ("os_type", "Debian 12 runs on x86_64, the cluster is ppc64")
    ]


def test_unknown_level_stops_the_checks():
    # Nothing else is judged against a level that does not exist.
    bad = cfg(NONE, (SPICE, SPICE), monitors=3)
    assert problems(bad, level="9.9") == [("cluster", "unknown compatibility level '9.9'")]
    assert problems(bad, os_type="beos", level="2.0") == [
        ("os_type", "unknown OS type 'beos'"),
        ("cluster", "unknown compatibility level '2.0'"),
    ]


def test_one_console_per_protocol():
    assert ("graphics", "only one console per protocol") in problems(cfg(QXL, (SPICE, SPICE)))
    # The pair rule is reported once per protocol, not per duplicate.
    assert problems(cfg(VGA, (SPICE, SPICE))) == [
        ("graphics", "only one console per protocol"),
        ("video", "SPICE needs QXL video (not vga)"),
    ]


def test_two_consoles_need_level_3_4():
    assert problems(cfg(QXL, (SPICE, VNC)), level="3.3") == [
        ("graphics", "clusters below 3.4 allow one console (this one is 3.3)")
    ]
    assert problems(cfg(QXL, (SPICE, VNC)), level="3.4") == []
    assert problems(cfg(QXL, (VNC,)), level="3.3") == []


def test_video_none_cannot_show_a_console():
    assert problems(cfg(NONE, (VNC,))) == [
        ("video", "video 'none' is headless: it cannot show a console"),
        ("video", "VNC on Other OS needs video bochs or cirrus or qxl or vga (not none)"),
    ]


def test_headless_needs_video_none():
    assert problems(cfg(VGA, ())) == [
        ("video", "a VM without consoles is headless: its video must be 'none'")
    ]


def test_spice_needs_qxl():
    assert problems(cfg(VGA, (SPICE,))) == [("video", "SPICE needs QXL video (not vga)")]
    assert problems(cfg(VIRTIO, (SPICE,))) == [("video", "SPICE needs QXL video (not virtio)")]


def test_vnc_videos():
    for video in (VGA, QXL, CIRRUS, BOCHS):
        assert problems(cfg(video, (VNC,))) == []
    assert problems(cfg(VIRTIO, (VNC,))) == [
        ("video", "VNC on Other OS needs video bochs or cirrus or qxl or vga (not virtio)")
    ]


def test_ppc64_takes_vnc_on_vga_only():
    ppc = {"os_type": "other_linux_ppc64", "arch": "ppc64"}
    assert problems(cfg(QXL, (VNC,)), **ppc) == [("video", "VNC on Linux (ppc64) needs video vga (not qxl)")]
    assert problems(cfg(QXL, (SPICE,)), **ppc) == [("video", "Linux (ppc64) does not support SPICE")]


def test_vnc_allows_one_monitor():
    assert problems(cfg(QXL, (SPICE, VNC), monitors=2)) == [("monitors", "VNC allows one monitor")]
    assert problems(cfg(VGA, (VNC,), monitors=4)) == [("monitors", "VNC allows one monitor")]
    assert problems(cfg(VGA, (VNC,), monitors=0)) == [("monitors", "VNC allows one monitor")]


@pytest.mark.parametrize(
    "monitors, ok", [(0, False), (1, True), (2, True), (3, False), (4, True), (5, False)]
)
def test_spice_monitors(monitors, ok):
    expected = [] if ok else [("monitors", "SPICE allows 1, 2 or 4 monitors")]
    assert problems(cfg(QXL, (SPICE,), monitors=monitors)) == expected


def test_headless_vm_has_no_extra_monitors():
    assert problems(cfg(NONE, (), monitors=2)) == [("monitors", "a headless VM has no monitors")]
    assert problems(cfg(NONE, (), monitors=4)) == [("monitors", "a headless VM has no monitors")]
    assert problems(cfg(NONE, (), monitors=1)) == []
    assert problems(cfg(NONE, (), monitors=3)) == [("monitors", "SPICE allows 1, 2 or 4 monitors")]


def test_keyboard_layout():
    assert problems(cfg(keyboard_layout="de-ch")) == []
    assert problems(cfg(keyboard_layout="German")) == [
        ("keyboard_layout", "'German' is not a layout like en-us")
    ]


def test_every_violation_is_reported_at_once():
    bad = cfg(NONE, (SPICE, VNC), monitors=2, keyboard_layout="??")
    assert problems(bad, os_type="other_ppc64", level="3.3") == [
        ("os_type", "Other OS (ppc64) runs on ppc64, the cluster is x86_64"),
        ("graphics", "clusters below 3.4 allow one console (this one is 3.3)"),
        ("video", "video 'none' is headless: it cannot show a console"),
        ("video", "Other OS (ppc64) does not support SPICE"),
        ("video", "VNC on Other OS (ppc64) needs video vga (not none)"),
        ("monitors", "VNC allows one monitor"),
        ("keyboard_layout", "'??' is not a layout like en-us"),
    ]
    assert all(isinstance(e, FieldError) for e in violations(bad, "other", "4.7", "x86_64"))
