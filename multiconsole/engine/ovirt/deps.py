"""Who is calling the oVirt API, and the database session of the request.

The SDK sends `Authorization: Bearer <token>` with a token from /ovirt-engine/sso; the token
is one of the engine's login tokens, so it works on /api/v1 too and a logout ends both.
HTTP Basic (user name and password) is accepted as oVirt's API accepts it.
"""

from __future__ import annotations

from fastapi import Depends, Header, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from multiconsole.engine import api, auth, limits
from multiconsole.engine.db import User, release
from multiconsole.engine.errors import EngineError
from multiconsole.engine.ovirt.xml import MAX_BODY
from multiconsole.engine.permissions import Grants

INTERNAL = "@internal"

# One session per request, committed before the response leaves (the engine's own).
db = api.db


def user_by_login_name(session: Session, name: str) -> str:
    """oVirt names users `name@domain`: our users log in with or without `@internal`
    (admin@internal is stored with it)."""
    if name.endswith(INTERNAL) and session.scalar(select(User.id).where(User.name == name)) is None:
        return name[: -len(INTERNAL)]
    return name


def current_user(request: Request, session: Session = Depends(db, scope="function")) -> User:
    user = _authenticate(request, session)
    release(session)  # no connection held between the request's steps (see api.current_user)
    return user


def _authenticate(request: Request, session: Session) -> User:
    verified = limits.verified_user_id(request)  # checked before the body was read
    if verified is not None and (user := session.get(User, verified)) is not None:
        return user
    scheme, _, param = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        return auth.user_for_token(session, param.strip())
    if scheme.lower() == "basic":
        try:
            name, password = auth.basic_credentials(param)
        except ValueError:
            reason = "the Basic credentials are not base64 of name:password"
            raise auth.Unauthorized(reason, "Bearer") from None
        user = auth.verify(session, user_by_login_name(session, name), password)
        if user is None:
            raise auth.Unauthorized("wrong user name or password", "Bearer")
        return user
    raise auth.Unauthorized(
        "log in: POST /ovirt-engine/sso/oauth/token for a token, then send Authorization: Bearer <token>",
        "Bearer",
    )


def grants(session: Session = Depends(db, scope="function"), user: User = Depends(current_user)) -> Grants:
    g = Grants.load(session, user)
    release(session)
    return g


def api_version(version: str | None = Header(None)) -> None:
    """Only version 4 of the API is spoken (the SDK 4.x sends `Version: 4`)."""
    if version is not None and version.strip() not in ("4", ""):
        raise EngineError("Version", f"API version {version.strip()!r} is not supported: only 4", 400)


async def raw_body(request: Request) -> bytes:
    """The request body, read before the (synchronous) handler runs; parsed by xml.parse."""
    length = request.headers.get("content-length", "0")
    if not length.isdigit() or int(length) > MAX_BODY:
        raise EngineError("body", f"the request body must be at most {MAX_BODY} bytes", 400)
    return await request.body()
