"""The wire's stable numbers and texts: JSON-RPC error codes and vdsm's VM exit reasons.

Engines match on these numbers (and oVirt shows the exit messages), so each one is pinned."""

from __future__ import annotations

import pytest

from multiconsole.wire.errors import MESSAGES as ERROR_MESSAGES
from multiconsole.wire.errors import ErrorCode
from multiconsole.wire.exits import MESSAGES as EXIT_MESSAGES
from multiconsole.wire.exits import ExitCode, ExitReason, VmExit


def test_error_codes_and_messages():
    assert {c.name: (int(c), ERROR_MESSAGES[c]) for c in ErrorCode} == {
        "PARSE_ERROR": (-32700, "the request is not valid JSON"),
        "INVALID_REQUEST": (-32600, "not a JSON-RPC 2.0 request"),
        "METHOD_NOT_FOUND": (-32601, "no such method"),
        "INVALID_PARAMS": (-32602, "invalid parameters"),
        "INTERNAL_ERROR": (-32603, "internal error"),
        "NO_SUCH_VM": (1, "virtual machine does not exist"),
        "VM_EXISTS": (4, "virtual machine already exists"),
        "LIBVIRT_FAILURE": (100, "libvirt failed"),
        "NO_SUCH_DEVICE": (101, "the VM has no such device"),
        "VM_NOT_RUNNING": (102, "the VM is not running"),
        "CONSOLE_IN_USE": (103, "a client is connected to the console"),
        "CERTIFICATE_REFUSED": (110, "the host cannot make or install that certificate"),
        "STORAGE_FAILURE": (120, "the host cannot provide the VM's images or disks"),
    }


# vdsm's lib/vdsm/virt/vmexitreason.py: number, message, and whether it is an error exit.
EXITS = {
    "SUCCESS": (0, "VM terminated successfully", False),
    "GENERIC_ERROR": (1, "VM terminated with error", True),
    "LOST_QEMU_CONNECTION": (2, "Lost connection with qemu process", True),
    "LIBVIRT_START_FAILED": (3, "Failed to start the VM", True),
    "MIGRATION_SUCCEEDED": (4, "Migration succeeded", False),
    "SAVE_STATE_SUCCEEDED": (5, "Saved its state", False),
    "ADMIN_SHUTDOWN": (6, "Admin shut down from the engine", False),
    "USER_SHUTDOWN": (7, "User shut down from within the guest", False),
    "MIGRATION_FAILED": (8, "VM failed to migrate", True),
    "LIBVIRT_DOMAIN_MISSING": (9, "Failed to find the libvirt domain", True),
    "DESTROYED_ON_STARTUP": (10, "VM destroyed during the startup", False),
    "HOST_SHUTDOWN": (11, "VM has been terminated on the host", False),
}


def test_exit_codes():
    assert (int(ExitCode.NORMAL), int(ExitCode.ERROR)) == (0, 1)


def test_exit_reasons_messages_and_codes():
    got = {r.name: (int(r), EXIT_MESSAGES[r], VmExit.of(r).crashed) for r in ExitReason}
    assert got == EXITS


@pytest.mark.parametrize("name", sorted(EXITS))
def test_exit_to_stats(name):
    number, message, error = EXITS[name]
    assert VmExit.of(ExitReason[name]).to_stats() == {
        "exitCode": 1 if error else 0,
        "exitReason": number,
        "exitMessage": message,
    }


def test_exit_detail_is_appended_in_parentheses():
    gone = VmExit.of(ExitReason.LOST_QEMU_CONNECTION, "killed by signal 9")
    assert gone.message == "Lost connection with qemu process (killed by signal 9)"
    assert VmExit.of(ExitReason.USER_SHUTDOWN, "").message == "User shut down from within the guest"


@pytest.mark.parametrize(
    "stats",
    [
        {},
        {"exitCode": True, "exitReason": 1},
        {"exitCode": False, "exitReason": 0},
        {"exitCode": 2, "exitReason": 1},
        {"exitCode": -1, "exitReason": 0},
        {"exitCode": "1", "exitReason": 1},
        {"exitCode": 1.0, "exitReason": 1},
    ],
)
def test_exit_without_a_valid_code_is_none(stats):
    assert VmExit.from_stats(stats) is None


def test_exit_read_back_keeps_reason_and_message():
    for reason in ExitReason:
        done = VmExit.of(reason, "detail")
        assert VmExit.from_stats(done.to_stats()) == done


@pytest.mark.parametrize(
    "code, reason, expected",
    [
        (0, None, ExitReason.SUCCESS),
        (1, None, ExitReason.GENERIC_ERROR),
        (0, 999, ExitReason.SUCCESS),
        (1, -1, ExitReason.GENERIC_ERROR),
        (1, True, ExitReason.GENERIC_ERROR),
        (0, True, ExitReason.SUCCESS),
        (1, "2", ExitReason.GENERIC_ERROR),
        (1, 2, ExitReason.LOST_QEMU_CONNECTION),
        (0, 11, ExitReason.HOST_SHUTDOWN),
        (0, 0, ExitReason.SUCCESS),
    ],
)
def test_exit_reason_unknown_falls_back_to_the_code(code, reason, expected):
    got = VmExit.from_stats({"exitCode": code, "exitReason": reason})
    assert got == VmExit(ExitCode(code), expected, EXIT_MESSAGES[expected])
    assert got.crashed is (code == 1)


@pytest.mark.parametrize(
    "message, expected",
    [
        ("", "VM terminated with error"),
        (None, "VM terminated with error"),
        (["x"], "VM terminated with error"),
        ("qemu died", "qemu died"),
        ("m" * 512, "m" * 512),
        ("m" * 513, "m" * 512),
    ],
)
def test_exit_message_from_stats(message, expected):
    got = VmExit.from_stats({"exitCode": 1, "exitReason": 1, "exitMessage": message})
    assert got.message == expected


def test_exit_is_immutable():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        VmExit.of(ExitReason.SUCCESS).message = "other"  # type: ignore[misc]
