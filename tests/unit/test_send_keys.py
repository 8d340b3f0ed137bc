"""VM.sendKeys: translated with the host's QEMU keymaps, refused whole, paced one key per call.

libvirt's test driver implements send-key (it checks every code against the qnum codeset);
a recording domain shows the exact calls.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest

from multiconsole.agent.keyboard import HOLD_MS, MAX_TEXT
from multiconsole.agent.vms import AgentError, VmManager
from multiconsole.domain.keys import ALT, ALTGR, CTRL, RETURN, SHIFT
from multiconsole.wire.errors import ErrorCode

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/qemu/keymaps/de").is_file(), reason="QEMU's keymaps are missing (qemu-system-data)"
)


def running(manager: VmManager) -> str:
    vm_id = str(uuid.uuid4())
    manager.create(
        vm_id,
        {
            "vmId": vm_id,
            "vmName": f"keys-{vm_id[:8]}",
            "memSize": 64,
            "devices": [{"type": "graphics", "device": "vnc", "specParams": {}}],
        },
    )
    return vm_id


class Recorder:
    """Wraps the real test-driver domain: records each sendKey call, then makes it."""

    def __init__(self, dom: libvirt.virDomain, fail_at: int | None = None):
        self.dom, self.fail_at, self.calls = dom, fail_at, []

    def sendKey(self, codeset, holdtime, codes, n, flags):  # noqa: N802 (libvirt's name)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            self.dom.destroy()
        self.calls.append((codeset, holdtime, tuple(codes), n, flags))
        return self.dom.sendKey(codeset, holdtime, codes, n, flags)

    def __getattr__(self, name):
        return getattr(self.dom, name)


@pytest.fixture
def recorded(manager, monkeypatch):
    manager.keyboards.sleep = lambda _s: None
    vm_id = running(manager)
    dom, xml = manager._domain(vm_id)
    rec = Recorder(dom)
    monkeypatch.setattr(manager, "_domain", lambda _id: (rec, xml))
    return manager, vm_id, rec


def test_text_is_typed_one_character_per_call_with_its_modifiers(recorded):
    manager, vm_id, rec = recorded
    assert manager.send_keys(vm_id, "Hi @\n", layout="de") == {"sent": 5, "keys": 5}
    assert [c[2] for c in rec.calls] == [(SHIFT, 0x23), (0x17,), (0x39,), (ALTGR, 0x10), (RETURN,)]
    assert {(c[0], c[1], c[4]) for c in rec.calls} == {(libvirt.VIR_KEYCODE_SET_QNUM, HOLD_MS, 0)}
    assert all(c[3] == len(c[2]) for c in rec.calls)


def test_named_keys(recorded):
    manager, vm_id, rec = recorded
    manager.send_keys(vm_id, combos=["ctrl-alt-delete", "ctrl-alt-f2", "enter"])
    assert [c[2] for c in rec.calls] == [(CTRL, ALT, 0xD3), (CTRL, ALT, 0x3C), (RETURN,)]


def test_untypable_text_sends_nothing(recorded):
    manager, vm_id, rec = recorded
    with pytest.raises(AgentError) as err:
        manager.send_keys(vm_id, "abc ß", layout="en-us")
    assert err.value.code == ErrorCode.INVALID_PARAMS
    assert err.value.data == {
        "field": "text",
        "reason": "cannot type 'ß' (U+00DF) with keyboard layout en-us",
    }
    assert rec.calls == []
    manager.send_keys(vm_id, "ß", layout="de")
    assert [c[2] for c in rec.calls] == [(0x0C,)]


def test_check_translates_and_sends_nothing(recorded):
    manager, vm_id, rec = recorded
    assert manager.send_keys(vm_id, "Grüße", layout="de", check=True) == {"sent": 0, "keys": 5}
    assert rec.calls == []


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"text": "x", "layout": "xx-yy"}, "keyMap", "no keyboard layout 'xx-yy'"),
        ({"text": "x", "layout": "../../etc/passwd"}, "keyMap", "is not a keyboard layout"),
        ({"text": "x" * (MAX_TEXT + 1)}, "text", f"at most {MAX_TEXT}"),
        ({"text": "x", "combos": ["enter"]}, "text", "either text or keys"),
        ({}, "text", "either text or keys"),
        ({"combos": []}, "keys", "1..32"),
        ({"combos": ["enter", "ctrl-alt-dlete"]}, "keys[1]", "'dlete' is not a key name"),
    ],
)
def test_bad_requests_name_the_field(recorded, kwargs, field, reason):
    manager, vm_id, rec = recorded
    with pytest.raises(AgentError) as err:
        manager.send_keys(vm_id, **kwargs)
    assert err.value.code == ErrorCode.INVALID_PARAMS
    assert err.value.data["field"] == field and reason in err.value.data["reason"]
    assert rec.calls == []


def test_a_vm_that_stops_while_typing(recorded):
    manager, vm_id, rec = recorded
    rec.fail_at = 2
    with pytest.raises(AgentError) as err:
        manager.send_keys(vm_id, "abcdef")
    assert err.value.code == ErrorCode.VM_NOT_RUNNING
    assert "after 2 of 6 keys" in err.value.message


def test_stopped_and_unknown_vms(manager):
    vm_id = running(manager)
    manager.conn.get().lookupByUUIDString(vm_id).destroy()
    with pytest.raises(AgentError) as err:
        manager.send_keys(vm_id, "a")
    assert err.value.code == ErrorCode.VM_NOT_RUNNING
    with pytest.raises(AgentError) as err:
        manager.send_keys(str(uuid.uuid4()), "a")
    assert err.value.code == ErrorCode.NO_SUCH_VM


def test_over_json_rpc_on_the_test_driver(manager, rpc):
    manager.keyboards.sleep = lambda _s: None
    vm_id = running(manager)
    assert rpc.result("VM.sendKeys", {"vmID": vm_id, "text": "Hello, World! 1+1=2 [ok]"}) == {
        "sent": 24,
        "keys": 24,
    }
    combo = {"vmID": vm_id, "keys": ["ctrl-alt-delete"], "keyMap": "de"}
    assert rpc.result("VM.sendKeys", combo)["sent"] == 1
    error = rpc.error("VM.sendKeys", {"vmID": vm_id, "text": "Grüße"})
    assert error["code"] == ErrorCode.INVALID_PARAMS
    assert error["data"]["reason"] == "cannot type 'ü' (U+00FC) with keyboard layout en-us"
    error = rpc.error("VM.sendKeys", {"vmID": vm_id, "text": "x", "extra": 1})
    assert error["code"] == ErrorCode.INVALID_PARAMS
