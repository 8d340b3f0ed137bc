"""Every page of the engine refuses to be framed, to be sniffed, and to run scripts it did not
serve itself; /docs and /openapi.json need a login (issue 11, "also seen")."""

from __future__ import annotations

import re

import pytest

from tests.engine.conftest import ADMIN, ok
from tests.engine.test_permissions import make_world, papi  # noqa: F401 (fixture)
from tests.engine.test_web_ui import ORIGIN, PAGES, browser, login

OWN = {"Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def world(papi, fake_host):  # noqa: F811
    return make_world(papi, fake_host)


def policy(reply) -> dict[str, str]:
    csp = reply.headers["content-security-policy"]
    return {d.split()[0]: d.partition(" ")[2] for d in (p.strip() for p in csp.split(";")) if d}


def assert_guarded(reply, strict: bool = True) -> dict[str, str]:
    assert reply.headers["x-frame-options"] == "DENY", reply.url
    assert reply.headers["x-content-type-options"] == "nosniff", reply.url
    p = policy(reply)
    assert p["frame-ancestors"] == "'none'", reply.url
    if strict:
        assert (
            p["default-src"] == "'self'" and "'unsafe-inline'" not in reply.headers["content-security-policy"]
        )
    return p


def inline_code(html: str) -> list[str]:
    """What `default-src 'self'` would block: inline scripts, styles, handlers, javascript: URLs."""
    found = [m for m in re.findall(r"<script\b[^>]*>", html, re.I) if "src=" not in m]
    found += re.findall(r"<style\b", html, re.I)
    found += re.findall(r"""\s(on[a-z]+|style)\s*=\s*["']""", html, re.I)
    found += re.findall(r"javascript:", html, re.I)
    return found


def test_every_page_has_the_headers_and_no_inline_code(world):
    admin = browser(world.api)
    login_page = admin.get("/ui/login")
    assert_guarded(login_page)
    assert inline_code(login_page.text) == []
    login(admin, *ADMIN)
    for path in [*PAGES, "/ui/vms/rows"]:
        reply = admin.get(path)
        assert reply.status_code == 200, path
        assert_guarded(reply)
        assert inline_code(reply.text) == [], path
    console = admin.get("/console/vm-a", headers=OWN)
    assert console.status_code == 200
    p = assert_guarded(console)
    assert inline_code(console.text) == []
    # Its script reaches the websocket proxy, on its own port, and nothing else.
    port = world.api.app.state.proxy.port
    assert p["connect-src"].split() == ["'self'", f"ws://testserver:{port}"]
    # The static files and the JSON API carry them too.
    for path in ("/static/ui/ui.js", "/static/ui/console.js", "/static/ui/console.css"):
        assert_guarded(admin.get(path))
    assert_guarded(world.api.get("/api/v1/vms"))
    assert_guarded(world.api.get("/api/v1/nothing"))  # a 404


def test_docs_and_openapi_need_a_login(world):
    anonymous = browser(world.api)
    for path in ("/docs", "/openapi.json"):
        reply = anonymous.get(path)
        assert reply.status_code == 401, path
        assert reply.headers["www-authenticate"].startswith("Basic")
    # HTTP Basic, a bearer token, or the web UI's session.
    schema = ok(world.api.get("/openapi.json"))
    assert "/api/v1/vms" in schema["paths"]
    token = ok(world.api.post("/api/v1/login", json={"name": ADMIN[0], "password": ADMIN[1]}))["token"]
    assert (
        world.api.get("/openapi.json", auth=None, headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    b = browser(world.api)
    login(b, *world.users["nobody"])
    docs = b.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert_guarded(docs, strict=False)  # Swagger UI: inline script and a CDN; still no framing
    assert b.get("/openapi.json", headers={"Referer": f"{ORIGIN}/docs"}).status_code == 200
    # Not listed in the schema itself.
    assert "/docs" not in schema["paths"] and "/openapi.json" not in schema["paths"]
