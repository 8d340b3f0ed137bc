"""Why a VM went down, host -> engine, as vdsm reports it in a Down VM's stats.

``exitCode`` says normal (0) or error (1); ``exitReason`` is vdsm's finer number
(lib/vdsm/virt/vmexitreason.py: the numbers are the wire format an oVirt engine reads);
``exitMessage`` is for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    NORMAL = 0
    ERROR = 1


class ExitReason(IntEnum):
    SUCCESS = 0
    GENERIC_ERROR = 1
    LOST_QEMU_CONNECTION = 2
    LIBVIRT_START_FAILED = 3
    MIGRATION_SUCCEEDED = 4
    SAVE_STATE_SUCCEEDED = 5
    ADMIN_SHUTDOWN = 6
    USER_SHUTDOWN = 7
    MIGRATION_FAILED = 8
    LIBVIRT_DOMAIN_MISSING = 9
    DESTROYED_ON_STARTUP = 10
    HOST_SHUTDOWN = 11


MESSAGES = {
    ExitReason.SUCCESS: "VM terminated successfully",
    ExitReason.GENERIC_ERROR: "VM terminated with error",
    ExitReason.LOST_QEMU_CONNECTION: "Lost connection with qemu process",
    ExitReason.LIBVIRT_START_FAILED: "Failed to start the VM",
    ExitReason.MIGRATION_SUCCEEDED: "Migration succeeded",
    ExitReason.SAVE_STATE_SUCCEEDED: "Saved its state",
    ExitReason.ADMIN_SHUTDOWN: "Admin shut down from the engine",
    ExitReason.USER_SHUTDOWN: "User shut down from within the guest",
    ExitReason.MIGRATION_FAILED: "VM failed to migrate",
    ExitReason.LIBVIRT_DOMAIN_MISSING: "Failed to find the libvirt domain",
    ExitReason.DESTROYED_ON_STARTUP: "VM destroyed during the startup",
    ExitReason.HOST_SHUTDOWN: "VM has been terminated on the host",
}


@dataclass(frozen=True)
class VmExit:
    code: ExitCode
    reason: ExitReason
    message: str

    @classmethod
    def of(cls, reason: ExitReason, detail: str = "") -> VmExit:
        error = reason in (
            ExitReason.GENERIC_ERROR,
            ExitReason.LOST_QEMU_CONNECTION,
            ExitReason.LIBVIRT_START_FAILED,
            ExitReason.MIGRATION_FAILED,
            ExitReason.LIBVIRT_DOMAIN_MISSING,
        )
        message = MESSAGES[reason] + (f" ({detail})" if detail else "")
        return cls(ExitCode.ERROR if error else ExitCode.NORMAL, reason, message)

    @property
    def crashed(self) -> bool:
        return self.code == ExitCode.ERROR

    def to_stats(self) -> dict[str, object]:
        return {"exitCode": int(self.code), "exitReason": int(self.reason), "exitMessage": self.message}

    @classmethod
    def from_stats(cls, stats: dict) -> VmExit | None:
        """The exit fields of a Down VM's stats; None from a host that sends none (old agents)."""
        code, reason = stats.get("exitCode"), stats.get("exitReason")
        if isinstance(code, bool) or not isinstance(code, int) or code not in (0, 1):
            return None
        try:
            why = ExitReason(reason) if isinstance(reason, int) and not isinstance(reason, bool) else None
        except ValueError:
            why = None
        if why is None:  # an exit code without a reason we know: say only normal or error
            why = ExitReason.SUCCESS if code == 0 else ExitReason.GENERIC_ERROR
        message = stats.get("exitMessage")
        message = message[:512] if isinstance(message, str) and message else MESSAGES[why]
        return cls(ExitCode(code), why, message)
