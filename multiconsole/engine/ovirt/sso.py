"""oVirt's SSO as the SDK uses it: a password grant for a bearer token, and the logout.

    POST /ovirt-engine/sso/oauth/token     grant_type=password&scope=ovirt-app-api&username=..&password=..
    POST /ovirt-engine/services/sso-logout  scope=ovirt-app-api&token=..

Replies are JSON; errors are `{"error": code, "error_description": text}`, which the SDK
turns into AuthError("Error during SSO authentication <code> : <text>")
(ovirtsdk4/__init__.py, Connection._get_sso_error). The token is an engine login token.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from multiconsole.engine import auth
from multiconsole.engine.errors import EngineError
from multiconsole.engine.ovirt.deps import user_by_login_name

log = logging.getLogger(__name__)
router = APIRouter(prefix="/ovirt-engine", include_in_schema=False)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_FORM = 16 * 1024
SCOPE = "ovirt-app-api"


def sso_error(status: int, code: str, description: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": code, "error_description": description},
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
    )


async def _form(request: Request) -> dict[str, str]:
    """The form fields (application/x-www-form-urlencoded), first value of each."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise EngineError("body", f"the form is larger than {MAX_FORM} bytes", 400)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise EngineError("body", "the form is not URL-encoded UTF-8", 400) from None
    # Only the body: a password in the URL would end up in access logs.
    return {k: v[0] for k, v in fields.items() if v}


@router.post("/sso/oauth/token")
async def token(request: Request):
    try:
        form = await _form(request)
    except EngineError as err:
        return sso_error(400, "invalid_request", err.reason)
    grant = form.get("grant_type")
    if grant != "password":
        return sso_error(
            400, "unsupported_grant_type", f"grant_type {grant!r} is not supported: use password"
        )
    name, password = form.get("username"), form.get("password")
    if not name or password is None:
        return sso_error(400, "invalid_request", "username and password are required")
    try:
        return await _login(request, name, password, form.get("scope") or SCOPE)
    except EngineError as err:
        # The login throttle (429) and anything else the engine refuses, in SSO's shape.
        code = (
            "access_denied"
            if err.status in (401, 403, 429)
            else "invalid_request"
            if err.status == 400
            else "server_error"
        )
        return sso_error(err.status, code, err.reason, getattr(err, "headers", None))


async def _login(request: Request, name: str, password: str, scope: str) -> JSONResponse:
    def work() -> JSONResponse:
        session: Session
        with request.app.state.sessions() as session:
            login = user_by_login_name(session, name)
            user = auth.verify(session, login, password)
            if user is None:
                log.info("sso login refused user=%s", name[:128])
                return sso_error(
                    401,
                    "access_denied",
                    f"Cannot authenticate user {name[:128]!r}: the user name or password is incorrect",
                )
            ttl = getattr(request.app.state.settings, "token_ttl", auth.TOKEN_TTL_DEFAULT)
            token, expires = auth.issue_token(session, user, ttl)
            session.commit()
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "bearer",
                "scope": scope,
                # oVirt gives the expiry in milliseconds since the epoch, as a string.
                "exp": str(int(expires.timestamp() * 1000)),
            },
            headers=NO_STORE,
        )

    return await run_in_threadpool(work)


@router.post("/services/sso-logout")
async def logout(request: Request):
    try:
        form = await _form(request)
    except EngineError as err:
        return sso_error(400, "invalid_request", err.reason)
    token_value = form.get("token")
    if not token_value:
        scheme, _, param = (request.headers.get("Authorization") or "").partition(" ")
        token_value = param.strip() if scheme.lower() == "bearer" else None
    if not token_value:
        return sso_error(400, "invalid_request", "token is required")

    def work() -> None:
        with request.app.state.sessions() as session:
            auth.revoke_token(session, token_value)
            session.commit()

    await run_in_threadpool(work)
    # An unknown token is already logged out: nothing to complain about.
    return JSONResponse({}, headers=NO_STORE)
