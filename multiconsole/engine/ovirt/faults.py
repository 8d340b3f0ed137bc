"""Errors as oVirt writes them: `<fault><reason/><detail/></fault>` with its status codes.

oVirt answers 400 for a malformed or incomplete request, 401 without valid credentials,
403 without the permission, 404 for what does not exist (or may not be seen), 409 when the
engine's rules refuse the operation. The SDK turns 401/403 into AuthError and 404 into
NotFoundError, and shows the fault's reason and detail (ovirtsdk4/service.py, _raise_error).
Our 422 (a field that breaks a rule of the request) becomes 400.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from multiconsole.domain.errors import FieldError
from multiconsole.engine import dbfaults
from multiconsole.engine.errors import EngineError
from multiconsole.engine.ovirt import xml

log = logging.getLogger(__name__)

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Operation Failed",
    429: "Too Many Requests",
}


def fault_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    root = xml.element("fault")
    xml.sub(root, "reason", REASONS.get(status, "Operation Failed"))
    xml.sub(root, "detail", detail)
    return Response(xml.dumps(root), status_code=status, media_type=xml.MIME, headers=headers)


def from_engine_error(err: EngineError) -> Response:
    status = 400 if err.status == 422 else err.status
    headers = dict(getattr(err, "headers", None) or {})
    if status == 401:
        # The SDK logs in again on 401; other clients are told to use a bearer token.
        headers.setdefault("WWW-Authenticate", 'Bearer realm="multiconsole"')
    return fault_response(status, f"[{err}]", headers or None)


def from_validation_error(err: RequestValidationError) -> Response:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header"))
    reason = first.get("msg", "invalid")
    return fault_response(400, f"[{loc}: {reason}]" if loc else f"[{reason}]")


class FaultRoute(APIRoute):
    """Routes whose every error leaves as an oVirt fault, never as the engine's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except EngineError as err:
                return from_engine_error(err)
            except RequestValidationError as err:
                return from_validation_error(err)
            except FieldError as err:  # a rule of domain/ that nothing above turned into an error
                return fault_response(409, f"[{err.field}: {err.reason}]")
            except StarletteHTTPException as err:
                return fault_response(err.status_code, f"[{err.detail}]")
            except SQLAlchemyError as err:  # the database's faults: 503 (a taken name: 409)
                mapped = dbfaults.as_engine_error(err)
                if mapped is not None:
                    log.warning("database error in the oVirt API: %s", mapped.reason)
                    return from_engine_error(mapped)
                log.error("unexpected database error in the oVirt API", exc_info=err)
                return fault_response(500, "[internal error; see the engine's log]")
            except Exception as err:  # no stack trace to the client; the log has it
                log.error("unexpected error in the oVirt API: %s", type(err).__name__, exc_info=err)
                return fault_response(500, "[internal error; see the engine's log]")

        return handle
