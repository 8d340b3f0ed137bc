"""The web UI's pages and its cookie session: login and logout, CSRF refusals, redirects to
the login page, and what each user's pages show (SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from multiconsole.engine import api as api_module
from multiconsole.engine.db import Host
from tests.engine.conftest import ADMIN, error, ok
from tests.engine.test_permissions import make_world, papi  # noqa: F401 (fixture)

ORIGIN = "http://testserver"
PAGES = ["/ui/vms", "/ui/templates", "/ui/hosts", "/ui/clusters", "/ui/audit", "/ui/users"]


def browser(api, base_url: str = ORIGIN) -> TestClient:
    """A second client on the same engine with its own cookie jar and no Basic credentials."""
    return TestClient(api.app, base_url=base_url, follow_redirects=False)


def login(client: TestClient, name: str, password: str, origin: str = ORIGIN, nxt: str = "/ui/vms"):
    return client.post(
        "/ui/login",
        data={"name": name, "password": password, "next": nxt},
        headers={"Origin": origin},
    )


def test_pages_send_the_browser_to_the_login_page(api):
    b = browser(api)
    assert b.get("/").status_code == 303 and b.get("/").headers["location"] == "/ui/vms"
    for page in PAGES:
        reply = b.get(page)
        assert reply.status_code == 303, page
        assert reply.headers["location"] == f"/ui/login?next={page.replace('/', '%2F')}"
    # The table refresh of a logged-out page is a 401, not the login page in a table.
    assert b.get("/ui/vms/rows", headers={"X-Fragment": "1"}).status_code == 401
    page = b.get("/ui/login?next=/ui/hosts")
    assert page.status_code == 200 and 'name="next" value="/ui/hosts"' in page.text
    assert 'for="login-name"' in page.text and 'for="login-password"' in page.text
    # Only paths of this engine: no open redirect after login.
    for target in ("//evil.example/", "https://evil.example/", "/\t/evil.example", "/\\evil.example"):
        page = b.get("/ui/login", params={"next": target}).text
        assert 'name="next" value="/ui/vms"' in page, target
    assert b.get("/static/ui/ui.js").status_code == 200
    # The REST API stays a 401 with a Basic challenge (the CLI and scripts rely on it).
    reply = b.get("/api/v1/vms")
    assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Basic")


def test_cookie_login_and_logout(api):
    b = browser(api)
    reply = login(b, ADMIN[0], "wrong")
    assert reply.status_code == 401 and "wrong user name or password" in reply.text
    assert api_module.SESSION_COOKIE not in reply.cookies
    assert login(b, ADMIN[0], "").status_code == 422

    reply = login(browser(api), ADMIN[0], ADMIN[1], nxt="//evil.example/")
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/vms"
    reply = login(b, ADMIN[0], ADMIN[1], nxt="/ui/hosts")
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/hosts"
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith(f"{api_module.SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie  # plain HTTP here; see the https test
    token = b.cookies[api_module.SESSION_COOKIE]
    assert token not in reply.text

    # The cookie opens the pages and the REST API (the UI's JavaScript uses it).
    page = b.get("/ui/vms")
    assert page.status_code == 200 and "admin@internal" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert ok(b.get("/api/v1/me"))["name"] == ADMIN[0]
    for p in PAGES:
        assert b.get(p).status_code == 200, p

    # Logging out revokes the token, not only the cookie.
    reply = b.post("/ui/logout", headers={"Origin": ORIGIN})
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/login"
    assert api_module.SESSION_COOKIE not in b.cookies
    stale = browser(api)
    stale.cookies.set(api_module.SESSION_COOKIE, token)
    assert stale.get("/api/v1/me").status_code == 401
    assert stale.get("/ui/vms").status_code == 303


def test_rest_logout_ends_a_cookie_session(api):
    b = browser(api)
    login(b, *ADMIN)
    token = b.cookies[api_module.SESSION_COOKIE]
    assert b.post("/api/v1/logout", headers={"Origin": ORIGIN}).status_code == 204
    stale = browser(api)
    stale.cookies.set(api_module.SESSION_COOKIE, token)
    assert stale.get("/api/v1/me").status_code == 401


def test_the_cookie_is_secure_over_https(api):
    b = browser(api, "https://testserver")
    reply = login(b, *ADMIN, origin="https://testserver")
    assert reply.status_code == 303
    assert "Secure" in reply.headers["set-cookie"]


def test_cookie_writes_from_another_origin_are_refused(api):
    b = browser(api)
    login(b, *ADMIN)
    body = {"name": "evil", "compat_level": "4.7"}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {},  # neither Origin nor Referer
        {"Referer": "http://evil.example/page"},
        {"Origin": "https://testserver"},  # another scheme is another origin
    ):
        reply = b.post("/api/v1/clusters", json=body, headers=headers)
        assert error(reply, 403)["reason"].startswith("refused: a browser session"), headers
    assert b.delete("/api/v1/users/nobody", headers={"Origin": "http://evil.example"}).status_code == 403
    assert [c["name"] for c in ok(api.get("/api/v1/clusters"))] == []
    # Reads need no Origin; same-origin writes pass (Origin, or Referer when Origin is absent).
    assert b.get("/api/v1/clusters", headers={"Origin": "http://evil.example"}).status_code == 200
    ok(b.post("/api/v1/clusters", json=body, headers={"Origin": ORIGIN}), 201)
    ok(b.post("/api/v1/clusters", json={**body, "name": "c2"}, headers={"Referer": f"{ORIGIN}/ui/vms"}), 201)
    # Basic and Bearer are not ambient credentials: no Origin needed.
    ok(api.post("/api/v1/clusters", json={**body, "name": "c3"}), 201)
    token = ok(api.post("/api/v1/login", json={"name": ADMIN[0], "password": ADMIN[1]}))["token"]
    reply = browser(api).post(
        "/api/v1/clusters", json={**body, "name": "c4"}, headers={"Authorization": f"Bearer {token}"}
    )
    ok(reply, 201)
    # Logging in and out from a foreign page is refused too (login CSRF).
    other = browser(api)
    reply = login(other, *ADMIN, origin="http://evil.example")
    assert reply.status_code == 403 and api_module.SESSION_COOKIE not in other.cookies
    assert b.post("/ui/logout", headers={"Origin": "http://evil.example"}).status_code == 403
    assert b.get("/api/v1/me").status_code == 200


def test_pages_escape_what_users_typed(api):
    b = browser(api)
    login(b, *ADMIN)
    ok(api.post("/api/v1/clusters", json={"name": "c", "description": "<script>alert(1)</script>"}), 201)
    page = b.get("/ui/clusters").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_hosts_page_shows_kvm_or_tcg_and_spice_tls(api):
    b = browser(api)
    login(b, *ADMIN)
    cluster = ok(api.post("/api/v1/clusters", json={"name": "c"}), 201)
    with api.app.state.sessions() as session:
        for name, caps in (
            ("h-kvm", {"virtType": "kvm", "spiceTls": True}),
            ("h-tcg", {"virtType": "qemu", "spiceTls": False}),
            ("h-old", {}),
        ):
            session.add(Host(name=name, address="10.0.0.1", cluster_id=cluster["id"], capabilities=caps))
        session.commit()
    page = b.get("/ui/hosts").text

    def cells(host: str) -> tuple[str, str]:
        row = re.search(rf'<tr data-host="{host}">(.*?)</tr>', page, re.S).group(1)
        accel = re.search(r'class="accel">([^<]*)<', row).group(1)
        tls = re.search(r'class="spice-tls">([^<]*)<', row).group(1)
        return accel, tls

    assert cells("h-kvm") == ("KVM", "yes")
    assert cells("h-tcg") == ("TCG", "no")
    assert cells("h-old") == ("unknown", "unknown")


@pytest.fixture
def world(papi, fake_host):  # noqa: F811
    return make_world(papi, fake_host)


def _row(page: str, vm: str) -> str | None:
    found = re.search(rf'<tr data-vm="{vm}".*?</tr>', page, re.S)
    return found.group(0) if found else None


def test_each_user_sees_their_vms_and_only_the_consoles_they_may_open(world):
    admin = browser(world.api)
    login(admin, *ADMIN)
    page = admin.get("/ui/vms").text
    a = _row(page, "vm-a")
    # Both consoles with address, port, nobody connected, and the launcher entries.
    assert "SPICE in remote-viewer" in a and "VNC in remote-viewer" in a and "VNC in the browser" in a
    assert '127.0.0.1:<span class="port">5910</span>' in a and '<span class="port">5911</span>' in a
    assert a.count("nobody connected") == 2
    assert "/api/v1/vms/vm-a/screenshot.png" in a
    assert 'id="new-vm"' in page

    alice = browser(world.api)  # console_user on vm-a only
    login(alice, *world.users["alice"])
    page = alice.get("/ui/vms").text
    assert _row(page, "vm-b") is None
    a = _row(page, "vm-a")
    assert "SPICE in remote-viewer" in a and "VNC in the browser" in a
    assert "Edit" not in a and "/start" not in a and "/stop" not in a  # not a vm_operator
    assert 'id="new-vm"' not in page

    bob = browser(world.api)  # vm_operator on vm-a, no console_user
    login(bob, *world.users["bob"])
    page = bob.get("/ui/vms").text
    a = _row(page, "vm-a")
    assert "no console permission" in a
    for word in ("remote-viewer", "in the browser", "5910", "screenshot.png", 'class="launch'):
        assert word not in a, word
    assert "/api/v1/vms/vm-a/stop" in a and 'class="edit"' in a
    # The fragment the page refreshes with says the same.
    rows = bob.get("/ui/vms/rows", headers={"X-Fragment": "1"}).text
    assert "vm-a" in rows and "remote-viewer" not in rows

    # Users and permissions: admins only.
    assert "/ui/users" not in page
    reply = bob.get("/ui/users")
    assert reply.status_code == 403 and "Only administrators" in reply.text
    users = admin.get("/ui/users")
    assert users.status_code == 200 and 'data-user="bob"' in users.text and "Revoke" in users.text

    nobody = browser(world.api)
    login(nobody, *world.users["nobody"])
    assert "No VMs." in nobody.get("/ui/vms").text


def test_console_changes_of_a_running_vm_show_the_next_start_badge(world):
    admin = browser(world.api)
    login(admin, *ADMIN)
    assert "changes at next start" not in _row(admin.get("/ui/vms").text, "vm-a")
    ok(
        admin.patch(
            "/api/v1/vms/vm-a", json={"consoles": ["vnc"], "video": "vga"}, headers={"Origin": ORIGIN}
        )
    )
    a = _row(admin.get("/ui/vms").text, "vm-a")
    assert "changes at next start" in a
    # The edit dialog starts from what the VM will have next.
    edit = re.search(r'data-edit="([^"]*)"', a).group(1)
    assert "&#34;consoles&#34;: [&#34;vnc&#34;]" in edit and "&#34;status&#34;: &#34;Up&#34;" in edit
    # The consoles listed are those running now, until the restart.
    assert "SPICE in remote-viewer" in a


def test_the_console_page_takes_the_cookie(world):
    alice = browser(world.api)
    login(alice, *world.users["alice"])
    # Opened from the engine's own pages (a link, the launcher): Sec-Fetch-Site same-origin.
    own = {"Sec-Fetch-Site": "same-origin"}
    page = alice.get("/console/vm-a", headers=own)
    assert page.status_code == 200 and "vm-a" in page.text
    assert alice.get("/console/vm-b", headers=own).status_code == 404
    bob = browser(world.api)
    login(bob, *world.users["bob"])
    assert bob.get("/console/vm-a", headers=own).status_code == 403
    # Its proxy ticket is a cookie POST from the page itself: the Origin check lets it through.
    reply = alice.post("/api/v1/vms/vm-a/consoles/vnc/proxy-ticket", json={}, headers={"Origin": ORIGIN})
    assert reply.status_code == 200 and len(reply.json()["password"]) == 8
    reply = alice.post(
        "/api/v1/vms/vm-a/consoles/vnc/proxy-ticket", json={}, headers={"Origin": "http://evil.example"}
    )
    assert reply.status_code == 403


def test_dialog_offers_the_engine_rules_fields(api):
    b = browser(api)
    login(b, *ADMIN)
    ok(api.post("/api/v1/clusters", json={"name": "old", "compat_level": "3.3"}), 201)
    page = b.get("/ui/vms").text
    for control in (
        "f-name",
        "f-cluster",
        "f-template",
        "f-os",
        "f-memory",
        "f-vcpus",
        "f-video",
        "f-spice",
        "f-vnc",
        "f-monitors",
        "f-keymap",
        "f-copy",
        "f-files",
        "f-disconnect",
        "f-reconnect",
    ):
        assert f'id="{control}"' in page, control
        # Every control has a label: <label for=...> or wrapped in one.
        assert f'for="{control}"' in page or re.search(rf'<label[^>]*>\s*<input[^>]*id="{control}"', page)
    for video in ("qxl", "vga", "cirrus", "bochs", "virtio", "none"):
        assert f'<option value="{video}">' in page
    # The dialog's explanations come from the engine: the rules it asks for this cluster.
    found = ok(
        b.post(
            "/api/v1/rules/check",
            json={"cluster": "old", "video": "vga", "consoles": ["spice", "vnc"], "monitors": 2},
            headers={"Origin": ORIGIN},
        )
    )
    reasons = {v["reason"] for v in found}
    assert "clusters below 3.4 allow one console (this one is 3.3)" in reasons
    assert "SPICE needs QXL video (not vga)" in reasons and "VNC allows one monitor" in reasons


def test_login_page_shows_the_throttle_with_retry_after(api):
    api.app.state.login_throttle.per_user = 2
    b = browser(api)
    for _ in range(2):
        assert login(b, ADMIN[0], "wrong").status_code == 401
    reply = login(b, ADMIN[0], ADMIN[1])  # the right password, but too late
    assert reply.status_code == 429
    assert int(reply.headers["retry-after"]) > 0
    assert api_module.SESSION_COOKIE not in reply.cookies
    assert ADMIN[1] not in reply.text
