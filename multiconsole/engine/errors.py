"""Errors of the engine, each with an HTTP status, the field at fault and the reason."""

from __future__ import annotations

from multiconsole.domain.errors import FieldError


class EngineError(Exception):
    status = 400

    def __init__(self, field: str | None, reason: str, status: int | None = None):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
        if status is not None:
            self.status = status

    @classmethod
    def from_field(cls, err: FieldError) -> EngineError:
        return cls(err.field, err.reason, 422)

    def body(self) -> dict:
        return {
            "error": {
                "status": self.status,
                "field": self.field,
                "reason": self.reason,
                "message": str(self),
            }
        }


class NotFound(EngineError):
    status = 404


class Conflict(EngineError):
    status = 409


class HostUnreachable(EngineError):
    status = 502
