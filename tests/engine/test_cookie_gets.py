"""GETs that issue a console ticket (the .vv download, the browser console page) take the web
UI's cookie only from the engine's own pages (issue 11, finding 5): SameSite=Strict does not
stop another port of the same host or a sibling subdomain from linking to them.
On SQLite and PostgreSQL, with the agents' tickets recorded (tests/engine/test_permissions.py)."""

from __future__ import annotations

import pytest

from tests.engine.conftest import ADMIN, ok
from tests.engine.test_permissions import make_world, papi  # noqa: F401 (fixture)
from tests.engine.test_web_ui import ORIGIN, browser, login

CROSS = [
    {"Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain or another port of this host
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
    {"Referer": "https://evil.example/page"},
    {},  # nothing says where it comes from
]
OWN = [
    {"Sec-Fetch-Site": "same-origin"},  # the launcher's fetch, Chromium's downloads
    {"Sec-Fetch-Site": "none"},  # a typed URL, a bookmark
    {"Referer": f"{ORIGIN}/ui/vms"},  # a browser without Sec-Fetch-Site
]


@pytest.fixture
def world(papi, fake_host):  # noqa: F811
    return make_world(papi, fake_host)


def issued(world) -> tuple[int, int]:
    """(tickets the agents were asked to set, ticket entries in the audit log)."""
    audit = ok(world.api.get("/api/v1/audit", params={"vm": "vm-a"}))
    return len(world.agents.calls), sum(e["event"] == "console ticket issued" for e in audit)


def test_a_cross_site_vv_issues_no_ticket_and_takes_nothing_over(world):
    alice = browser(world.api)
    login(alice, *world.users["carol"])  # console_user + console_reconnect: may take over
    before = issued(world)
    for headers in CROSS:
        for url in ("/api/v1/vms/vm-a/consoles/vnc.vv", "/api/v1/vms/vm-a/consoles/vnc.vv?take_over=true"):
            reply = alice.get(url, headers=headers)
            assert reply.status_code == 403, (url, headers, reply.text)
            body = reply.json()["error"]
            assert "engine's own pages" in body["reason"] and "password" not in reply.text
    assert issued(world) == before
    audit = ok(world.api.get("/api/v1/audit", params={"vm": "vm-a"}))
    assert not any(e["event"] == "console taken over" for e in audit)
    # From the engine's own pages (or a typed URL) the download works.
    for headers in OWN:
        reply = alice.get("/api/v1/vms/vm-a/consoles/vnc.vv", headers=headers)
        assert reply.status_code == 200, (headers, reply.text)
        assert reply.headers["content-type"].startswith("application/x-virt-viewer")
    calls, entries = issued(world)
    assert (calls, entries) == (before[0] + len(OWN), before[1] + len(OWN))


def test_basic_and_bearer_are_not_ambient_and_need_no_origin(world):
    reply = world.api.get("/api/v1/vms/vm-a/consoles/vnc.vv", headers={"Sec-Fetch-Site": "cross-site"})
    assert reply.status_code == 200, reply.text
    token = ok(world.api.post("/api/v1/login", json={"name": ADMIN[0], "password": ADMIN[1]}))["token"]
    reply = world.api.get(
        "/api/v1/vms/vm-a/consoles/vnc.vv",
        headers={"Authorization": f"Bearer {token}", "Origin": "https://evil.example"},
        auth=None,
    )
    assert reply.status_code == 200, reply.text


def test_the_console_page_opens_only_from_the_engine_pages(world):
    alice = browser(world.api)
    login(alice, *world.users["carol"])
    for headers in CROSS:
        reply = alice.get("/console/vm-a?take_over=true", headers=headers)
        assert reply.status_code == 403, (headers, reply.text)
        assert "RFB" not in reply.text  # the page (whose script asks for the ticket) is not sent
    for headers in OWN:
        reply = alice.get("/console/vm-a?take_over=true", headers=headers)
        assert reply.status_code == 200 and "vm-a" in reply.text, headers
