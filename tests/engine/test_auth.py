"""Logging in: HTTP Basic and bearer tokens (login, logout, expiry), wrong passwords, and the
ticket rate limit; on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from multiconsole.engine import auth
from multiconsole.engine.consoles import new_console_password
from multiconsole.engine.db import LoginToken
from tests.engine.conftest import ADMIN, engine_client, error, ok
from tests.engine.test_api import VM, setup_cluster
from tests.engine.test_permissions import TicketingAgents, add_user, grant, listen
from tests.support.servers import free_port


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(api, name: str, password: str) -> dict:
    reply = api.post("/api/v1/login", json={"name": name, "password": password}, auth=None)
    body = ok(reply)
    assert reply.headers["cache-control"] == "no-store"
    return body


def test_login_gives_a_token_that_works_until_logout(api):
    t = login(api, *ADMIN)
    assert t["user"] == ADMIN[0] and len(t["token"]) >= 43
    expires = datetime.fromisoformat(t["expires"])
    assert timedelta(hours=7, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=8)
    assert ok(api.get("/api/v1/me", auth=None, headers=bearer(t["token"])))["name"] == ADMIN[0]
    assert ok(api.get("/api/v1/vms", auth=None, headers=bearer(t["token"]))) == []
    # Two logins, two tokens; logging out ends only the one it came with.
    other = login(api, *ADMIN)["token"]
    assert other != t["token"]
    assert api.post("/api/v1/logout", auth=None, headers=bearer(t["token"])).status_code == 204
    reply = api.get("/api/v1/vms", auth=None, headers=bearer(t["token"]))
    assert "revoked" in error(reply, 401)["reason"]
    assert reply.headers["www-authenticate"].startswith("Bearer")
    ok(api.get("/api/v1/vms", auth=None, headers=bearer(other)))
    # logout?all=true ends every token of the user (here asked with Basic).
    assert api.post("/api/v1/logout?all=true").status_code == 204
    error(api.get("/api/v1/vms", auth=None, headers=bearer(other)), 401)
    # HTTP Basic keeps working.
    assert ok(api.get("/api/v1/vms")) == []


def test_tokens_are_stored_hashed(api):
    token = login(api, *ADMIN)["token"]
    with api.app.state.sessions() as session:
        stored = session.scalars(select(LoginToken.token_hash)).all()
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]


def test_an_expired_token_is_refused(api):
    token = login(api, *ADMIN)["token"]
    with api.app.state.sessions() as session:
        row = session.scalar(select(LoginToken))
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.commit()
    body = error(api.get("/api/v1/vms", auth=None, headers=bearer(token)), 401)
    assert body["reason"].startswith("log in: the token expired at")
    # ... and forgotten.
    assert "revoked" in error(api.get("/api/v1/vms", auth=None, headers=bearer(token)), 401)["reason"]


def test_token_lifetime_is_a_setting(sqlite_url):
    with engine_client(sqlite_url, token_ttl=60) as api:
        expires = datetime.fromisoformat(login(api, *ADMIN)["expires"])
        assert timedelta(seconds=50) < expires - datetime.now(UTC) <= timedelta(seconds=60)


def test_wrong_passwords_and_malformed_credentials(api):
    add_user(api, "alice")
    for name, password in (("alice", "wrong"), ("nobody", "alice-password"), ("alice", "")):
        reply = api.post("/api/v1/login", json={"name": name, "password": password or "x"}, auth=None)
        body = error(reply, 401)
        assert body["reason"] == "wrong user name or password"
        assert "alice-password" not in reply.text
        error(api.get("/api/v1/vms", auth=(name, password)), 401)
    error(api.post("/api/v1/login", json={"name": "alice"}, auth=None), 422, "password")
    error(api.post("/api/v1/login", json={"name": "alice", "password": 5}, auth=None), 422, "password")
    for header in (
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer",
        "Bearer x",
        "Negotiate x",
    ):
        reply = api.get("/api/v1/vms", auth=None, headers={"Authorization": header})
        assert error(reply, 401)["reason"].startswith("log in:"), header
        assert "www-authenticate" in reply.headers
    # A token is not a password, and a password is not a token.
    token = login(api, "alice", "alice-password")["token"]
    error(api.get("/api/v1/vms", auth=("alice", token)), 401)
    error(api.get("/api/v1/vms", auth=None, headers=bearer("alice-password")), 401)
    error(api.get("/api/v1/vms", auth=None, headers=bearer("x" * 10000)), 401)


def test_unicode_passwords_over_basic(api):
    ok(api.post("/api/v1/users", json={"name": "zoe", "password": "pässwörd-ñ"}), 201)
    ok(api.get("/api/v1/me", auth=("zoe", "pässwörd-ñ")))
    error(api.get("/api/v1/me", auth=("zoe", "passwort-n")), 401)


def test_a_new_password_ends_the_tokens(api):
    add_user(api, "alice")
    token = login(api, "alice", "alice-password")["token"]
    with api.app.state.sessions() as session:
        auth.set_password(session, "alice", "another-password")
        session.commit()
    error(api.get("/api/v1/vms", auth=None, headers=bearer(token)), 401)
    error(api.get("/api/v1/vms", auth=("alice", "alice-password")), 401)
    ok(api.get("/api/v1/vms", auth=("alice", "another-password")))


def test_logout_needs_login(api):
    error(api.post("/api/v1/logout", auth=None), 401)


# --- tickets ------------------------------------------------------------------------------


def test_console_passwords_are_short_random_and_bounded():
    passwords = {new_console_password() for _ in range(1000)}
    assert len(passwords) == 1000
    assert all(len(p) == 8 for p in passwords)


@pytest.fixture
def running(sqlite_url, fake_host):
    """An engine (with proxy) on SQLite with a running VM whose consoles listen."""
    with engine_client(sqlite_url, proxy_port=free_port()) as api:
        setup_cluster(api, fake_host)
        api.app.state.agents = TicketingAgents(api.app.state.agents)
        ok(api.post("/api/v1/vms", json=VM), 201)
        vm = ok(api.post("/api/v1/vms/web1/start"))
        listen(api, vm["id"], 5910)
        yield api


def test_ticket_lifetime_is_bounded(running):
    api = running
    for ttl in (0, -1, 7201, 10**30, "long"):
        error(api.post("/api/v1/vms/web1/consoles/vnc/ticket", json={"ttl": ttl}), 422, "ttl")
        error(api.get(f"/api/v1/vms/web1/consoles/vnc.vv?ttl={ttl}"), 422, "ttl")
    t = ok(api.post("/api/v1/vms/web1/consoles/vnc/ticket", json={"ttl": 7200}))
    assert t["ttl"] == 7200
    assert all(p["params"]["ttl"] == 7200 for _, p in api.app.state.agents.calls)


def test_tickets_are_rate_limited_per_user(running):
    api = running
    add_user(api, "alice")
    grant(api, "alice", "console_user", "vm", "web1")
    alice = ("alice", "alice-password")
    routes = [
        ("POST", "/api/v1/vms/web1/consoles/vnc/ticket"),
        ("GET", "/api/v1/vms/web1/consoles/spice.vv"),
        ("POST", "/api/v1/vms/web1/consoles/vnc/proxy-ticket"),
    ]
    for i in range(30):  # every route that issues a ticket counts
        method, path = routes[i % 3]
        assert api.request(method, path, auth=alice).status_code == 200
    for method, path in routes:
        reply = api.request(method, path, auth=alice)
        body = error(reply, 429)
        assert body["reason"].startswith("too many console tickets: alice may get 30 in 60 s; try again in")
        assert 1 <= int(reply.headers["retry-after"]) <= 60
    assert len(api.app.state.agents.calls) == 30
    # Others are not held up by alice; what does not issue a ticket is not limited.
    ok(api.post("/api/v1/vms/web1/consoles/vnc/ticket"))
    ok(api.get("/api/v1/vms/web1/consoles", auth=alice))
    # Bearer or Basic, one user is one user.
    token = login(api, "alice", "alice-password")["token"]
    error(api.post("/api/v1/vms/web1/consoles/vnc/ticket", auth=None, headers=bearer(token)), 429)


def test_the_rate_limiter_window_slides():
    now = [0.0]
    limiter = auth.RateLimiter(3, 60.0, clock=lambda: now[0])
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert limiter.hit("a") is None
    now[0] = 30.0
    assert limiter.hit("a") == pytest.approx(30.0)  # the one of t=0 leaves the window at 60
    assert limiter.hit("b") is None  # per key
    now[0] = 60.0
    assert limiter.hit("a") is None
    assert limiter.hit("a") == pytest.approx(10.0)


def test_secrets_never_come_back_in_errors(running):
    """Passwords, tokens and tickets are not echoed by any refusal."""
    api = running
    secret = "s3cret-Pa55word"
    for reply in (
        api.post("/api/v1/users", json={"name": "bad name", "password": secret}),
        api.post("/api/v1/users", json={"name": "x", "password": secret, "roles": ["root"]}),
        api.post("/api/v1/login", json={"name": "admin@internal", "password": secret}, auth=None),
        api.post("/api/v1/login", json={"name": secret * 20, "password": secret}, auth=None),
        api.get("/api/v1/vms", auth=("admin@internal", secret)),
        api.get("/api/v1/vms", auth=None, headers=bearer(secret)),
        api.post("/api/v1/vms/web1/consoles/vnc/ticket", json={"ttl": secret}),
        api.post("/api/v1/vms/web1/consoles/vnc/ticket", json={"password": secret}),
    ):
        assert reply.status_code in (401, 422), reply.text
        assert secret not in reply.text and "s3cret" not in reply.text


def test_the_cli_client_logs_in_with_a_token(api):
    from multiconsole.client import EngineApiError, EngineClient

    token = login(api, *ADMIN)["token"]
    with EngineClient("http://testserver", "nobody", None, token=token, transport=api._transport) as client:
        assert client.get("/me")["name"] == ADMIN[0]
    api.post("/api/v1/logout", auth=None, headers=bearer(token))
    with EngineClient("http://testserver", token=token, transport=api._transport) as client:
        with pytest.raises(EngineApiError) as err:
            client.get("/vms")
    assert err.value.status == 401 and err.value.reason.startswith("log in:")


def test_logs_mask_credentials():
    import logging

    from multiconsole.logs import MaskSecrets

    for message, secret in (
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnop"),
        ('headers={"authorization": "Basic dXNlcjpwYXNzd29yZA=="}', "dXNlcjpwYXNzd29yZA"),
        ("retrying with Bearer Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
        ("login token=abc123def456 expires", "abc123def456"),
        ("VM.updateDevice password: hunter22", "hunter22"),
    ):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, message, (), None)
        assert MaskSecrets().filter(record)
        assert secret not in record.getMessage() and "***" in record.getMessage(), record.getMessage()


def test_basic_credentials_are_base64_of_name_colon_password():
    import base64

    from multiconsole.engine.auth import basic_credentials

    assert basic_credentials(base64.b64encode("zoë:a:b".encode()).decode()) == ("zoë", "a:b")
    for bad in ("not base64!", base64.b64encode(b"no colon").decode(), base64.b64encode(b"\xff:x").decode()):
        with pytest.raises(ValueError):
            basic_credentials(bad)
