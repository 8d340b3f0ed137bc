"""Headers every answer carries against framing, sniffing and injected scripts, and the API
documentation behind a login.

- Every answer: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and a
  Content-Security-Policy with `frame-ancestors 'none'` (no page of the engine in another
  site's frame: clickjacking of the console launcher or the takeover button).
- The web UI and the console page: `default-src 'self'` (they have no inline script or style;
  the console page adds its websocket proxy to `connect-src`). /docs (Swagger UI: inline
  script, assets from a CDN) keeps only `frame-ancestors`.
- /docs and /openapi.json need a logged-in user (Basic, Bearer or the web UI's cookie): the
  API's shape is no secret, but there is no need to hand it to anyone who asks.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import MutableHeaders

from multiconsole.engine import api

DOCS_PATHS = ("/docs", "/docs/oauth2-redirect")
FRAME_ONLY = "frame-ancestors 'none'"


def page_policy(connect: list[str] | tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy of the engine's pages; `connect`: origins scripts may
    reach besides the engine (the websocket proxy)."""
    return "; ".join(
        [
            "default-src 'self'",
            "connect-src " + " ".join(["'self'", *connect]),
            "img-src 'self' data: blob:",  # noVNC's cursor is a data: URL
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            FRAME_ONLY,
        ]
    )


class SecurityHeaders:
    """ASGI middleware adding the headers above to every HTTP answer (one a route set itself,
    like the console page's policy, is kept)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = FRAME_ONLY if scope.get("path") in DOCS_PATHS else page_policy()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (
                    ("X-Content-Type-Options", "nosniff"),
                    ("X-Frame-Options", "DENY"),
                    ("Content-Security-Policy", policy),
                ):
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


docs = APIRouter(include_in_schema=False, dependencies=[Depends(api.current_user)])


@docs.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} – API")
