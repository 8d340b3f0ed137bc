"""Limits on what a request brings: who may send a body and how large, decided before any
of it is read; no NUL character in its URL or in any text bound for the database.

FastAPI reads a route's body before it resolves the route's dependencies, so a login checked
in a dependency comes after the whole body sits in memory. This ASGI middleware runs first:

- a body to a route that needs a user comes with credentials (an Authorization header or the
  web UI's session cookie), which are verified from the headers alone; without any, or wrong
  ones, the answer is a 401 at once and the body is never read;
- every body is capped while it streams (chunked ones too): a Content-Length over the cap is a
  413 at once, a chunked body a 413 as soon as it passes the cap, and what follows is not read.

The same middleware refuses a NUL character anywhere in the path or the query string (400
naming the parameter), and `refuse_nul_in_text` one in any text a statement would send to the
database (400 naming the column): nothing here has a use for one, and PostgreSQL refuses it
in text, so it was a 500 there.

A refusal closes the connection (`Connection: close`): the client stops sending, and the
server does not drain what it would not use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from sqlalchemy import event
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from multiconsole.engine.errors import EngineError

KIB = 1024
MIB = 1024 * KIB
MAX_BODY_DEFAULT = 1 * MIB
MAX_PUBLIC_BODY_DEFAULT = 64 * KIB
# Routes anybody may send a body to: the logins and host enrolment (its token is in the body).
PUBLIC_PATHS = frozenset(
    {
        "/api/v1/login",
        "/api/v1/hosts/enroll",
        "/ovirt-engine/sso/oauth/token",
        "/ovirt-engine/services/sso-logout",
        "/ui/login",
        "/ui/logout",
    }
)
# Where the middleware leaves the id of the user it verified (the route's dependency uses it
# instead of checking the password a second time).
VERIFIED_USER = "multiconsole.verified_user_id"


@dataclass(frozen=True)
class BodyRules:
    """How large a body may be: `max_body` by default, `max_public_body` on PUBLIC_PATHS, and
    `larger` (path prefix -> bytes) for routes that take more (image uploads)."""

    max_body: int = MAX_BODY_DEFAULT
    max_public_body: int = MAX_PUBLIC_BODY_DEFAULT
    larger: dict[str, int] = field(default_factory=dict)

    def public(self, path: str) -> bool:
        return path.rstrip("/") in PUBLIC_PATHS

    def cap(self, path: str) -> int:
        if self.public(path):
            return self.max_public_body
        prefixes = [p for p in self.larger if path.startswith(p)]
        return self.larger[max(prefixes, key=len)] if prefixes else self.max_body


def declared_length(headers: Headers) -> int | None:
    """The Content-Length, None without one. (A malformed one never gets here: the HTTP
    server refuses it with a 400.)"""
    value = headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def has_body(headers: Headers) -> bool:
    length = declared_length(headers)
    return bool(length) or "transfer-encoding" in headers


def verified_user_id(request: Request) -> str | None:
    """The id of the user the middleware verified for this request, if it did."""
    return request.scope.get(VERIFIED_USER)


def nul_in_url(path: str, query_string: bytes) -> EngineError | None:
    """A 400 naming where a NUL character is in the request's URL, None without one."""
    if "\x00" in path:  # the ASGI path is decoded already
        return EngineError("path", "the path contains a NUL character", 400)
    query = query_string.decode("latin-1")
    if "%00" in query or "\x00" in query:
        for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
            if "\x00" in name or "\x00" in value:
                return EngineError(
                    name.replace("\x00", "\\x00")[:64] or "query", "contains a NUL character", 400
                )
        return EngineError("query", "the query string contains a NUL character", 400)
    return None


_BIND_SUFFIX = re.compile(r"_(m)?\d+$")  # name_1, description_m0: the column's bind parameters


def refuse_nul_in_text(engine) -> None:
    """Refuse, as a 400 naming the column, any text with a NUL character on its way to the
    database (PostgreSQL cannot store one: each form field, JSON string or login name with one
    was a 500). On every database, so that both accept the same input."""

    @event.listens_for(engine, "before_cursor_execute")
    def _no_nul(_conn, _cursor, _statement, parameters, context, _executemany):
        named = getattr(context, "compiled_parameters", None) if context is not None else None
        for values in named or []:
            for key, value in values.items():
                if isinstance(value, str) and "\x00" in value:
                    field = _BIND_SUFFIX.sub("", str(key))
                    if field == "pk":  # a lookup by id (session.get): the column is not the field
                        raise EngineError(None, "a name or id contains a NUL character", 400)
                    raise EngineError(field, "contains a NUL character", 400)


class BodyTooLarge(StarletteHTTPException):
    """Raised to the application when a streaming body passes its cap (the 413 is already
    sent); an HTTPException so that whatever reads the body lets it through without logging
    it as a fault."""

    def __init__(self, cap: int):
        super().__init__(413, too_large(cap))


def too_large(cap: int) -> str:
    return f"request body larger than {cap} bytes"


Authenticate = Callable[[Request], Awaitable[str]]
Refusal = Callable[[Request, EngineError], tuple[int, dict[str, str], bytes]]


def json_refusal(_request: Request, err: EngineError) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", **(getattr(err, "headers", None) or {})}
    return err.status, headers, json.dumps(err.body()).encode()


class RequestGuard:
    """The ASGI middleware. `authenticate(request)` verifies the credentials in the headers
    (the user's id, or an EngineError: 401 at once when there are none, 403, 429) without
    reading the body; `refusal(request, err)` shapes an error the way the route's API writes
    them (status, headers, body)."""

    def __init__(self, app, rules: BodyRules, authenticate: Authenticate, refusal: Refusal = json_refusal):
        self.app, self.rules, self.authenticate, self.refusal = app, rules, authenticate, refusal

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        bad_url = nul_in_url(scope["path"], scope.get("query_string", b""))
        if bad_url is not None:
            return await self._refuse(request, send, bad_url)
        if not has_body(request.headers):
            return await self.app(scope, receive, send)
        path = scope["path"]
        cap = self.rules.cap(path)
        length = declared_length(request.headers)
        if length is not None and length > cap:
            return await self._refuse(request, send, EngineError("body", too_large(cap), 413))
        if not self.rules.public(path):
            try:
                scope[VERIFIED_USER] = await self.authenticate(request)
            except EngineError as err:
                return await self._refuse(request, send, err)
        await self._capped(request, cap, receive, send)

    async def _capped(self, request: Request, cap: int, receive, send) -> None:
        received = 0
        answered = False  # by this middleware: the application's reply is dropped
        started = False

        async def capped_receive():
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    if not started and not answered:
                        answered = True
                        await self._refuse(request, send, EngineError("body", too_large(cap), 413))
                    raise BodyTooLarge(cap)
            return message

        async def tracked_send(message):
            nonlocal started
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(request.scope, capped_receive, tracked_send)
        except BodyTooLarge:
            if not answered:
                raise

    async def _refuse(self, request: Request, send, err: EngineError) -> None:
        status, headers, body = self.refusal(request, err)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
