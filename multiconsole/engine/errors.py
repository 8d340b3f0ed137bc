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


class Unavailable(EngineError):
    """503: a fault that should pass (the database, a host); the client may retry."""

    status = 503

    def __init__(self, field: str | None, reason: str, retry_after: float = 5):
        super().__init__(field, reason)
        self.headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))}


class HostNotResponding(Unavailable):
    """503 at once instead of waiting on a host that is NonResponsive or already busy with
    as many calls as it may have: a hung host must not hold the engine's threads."""

    def __init__(self, host: str, why: str = "", retry_after: float = 10):
        super().__init__("host", f"host {host} is not responding{f' ({why})' if why else ''}", retry_after)
