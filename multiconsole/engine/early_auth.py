"""Who is calling, decided from the headers before a body is read (engine/limits.py asks).

The same checks as the routes' own `current_user` (api.py for /api/v1 and the web UI,
ovirt/deps.py for /ovirt-engine/api), run once here: a failed password counts once in the
login throttle, and the route finds the verified user in the request's scope.
"""

from __future__ import annotations

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request

from multiconsole.engine import api, auth, dbfaults, limits
from multiconsole.engine.errors import EngineError
from multiconsole.engine.ovirt import deps, faults

OVIRT_API = "/ovirt-engine/api"


def _ovirt(request: Request) -> bool:
    path = request.url.path
    return path == OVIRT_API or path.startswith(OVIRT_API + "/")


async def authenticate(request: Request) -> str | None:
    """The id of the user whose credentials the request carries; Unauthorized (at once, with
    no database work) when it carries none; None when the database cannot say now."""
    ovirt = _ovirt(request)
    if not request.headers.get("authorization") and (ovirt or not request.cookies.get(api.SESSION_COOKIE)):
        raise auth.Unauthorized(
            "log in first: this route needs a user (HTTP Basic, a bearer token"
            + ("" if ovirt else " or the web UI's session cookie")
            + ") before it reads a request body",
            "Bearer" if ovirt else "Basic",
        )
    try:
        if ovirt:
            return await anyio.to_thread.run_sync(_verify_ovirt, request)
        basic = await api._basic(request)
        bearer = await api._bearer(request)
        return await anyio.to_thread.run_sync(_verify_api, request, basic, bearer)
    except SQLAlchemyError as err:
        # The database is down or full: the route checks again and answers its 503 (the
        # body, capped, is read; refusing here would close the client's connection).
        if dbfaults.as_engine_error(err) is None:
            raise
        return None


def _verify_api(request: Request, basic, bearer) -> str:
    with request.app.state.sessions() as session:
        user = api.current_user(request, session, basic, bearer)
        session.commit()
        return user.id


def _verify_ovirt(request: Request) -> str:
    with request.app.state.sessions() as session:
        user = deps.current_user(request, session)
        session.commit()
        return user.id


def refusal(request: Request, err: EngineError) -> tuple[int, dict[str, str], bytes]:
    """A refusal in the shape of the route's API: an oVirt fault under /ovirt-engine/api
    (the SDK logs in again on its 401), the engine's JSON elsewhere."""
    if _ovirt(request) and err.status != 413:
        reply = faults.from_engine_error(err)
        headers = {k: v for k, v in reply.headers.items() if k != "content-length"}
        return reply.status_code, headers, reply.body
    status, headers, body = limits.json_refusal(request, err)
    if status == 401:
        headers.setdefault("WWW-Authenticate", f"Basic {auth.REALM}")
    return status, headers, body
