"""The login-failure throttle: every password check (HTTP Basic, POST /login, auth.verify)
counts failures per user name and per client address, and refuses with 429 once too many."""

from __future__ import annotations

import logging

import pytest

from multiconsole.engine import auth
from tests.engine.conftest import ADMIN, engine_client, error, ok

WRONG = "not-the-password-7f3a"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def throttled(db_url):
    """An engine whose throttle allows 3 failures per user, 6 per address, in 60 s (a fake clock)."""
    with engine_client(
        db_url, login_failures_per_user=3, login_failures_per_address=6, login_window=60
    ) as client:
        clock = Clock()
        client.app.state.login_throttle.clock = clock
        ok(client.post("/api/v1/users", json={"name": "bob", "password": "bob-password-1"}), 201)
        yield client, clock
    client.app.state.db_engine.dispose()


def basic(client, name, password):
    return client.get("/api/v1/me", auth=(name, password))


def login(client, name, password):
    return client.post("/api/v1/login", json={"name": name, "password": password}, auth=None)


def test_failures_lock_the_user_name_even_for_the_right_password(throttled, caplog):
    client, clock = throttled
    caplog.set_level(logging.WARNING, logger="multiconsole.engine.auth")
    for _ in range(3):
        error(basic(client, "bob", WRONG), 401)
    reply = basic(client, "bob", "bob-password-1")
    body = error(reply, 429, "name")
    assert "too many failed logins" in body["message"] and "try again in 60 s" in body["message"]
    assert reply.headers["Retry-After"] == "60"
    # POST /login is the same password check: refused too, with the right password.
    error(login(client, "bob", "bob-password-1"), 429, "name")
    # Another user is not affected, and their success resets nothing of bob's.
    ok(basic(client, *ADMIN))
    clock.t += 30
    reply = basic(client, "bob", "bob-password-1")
    error(reply, 429)
    assert reply.headers["Retry-After"] == "30"
    # The window passes: the right password works again.
    clock.t += 31
    assert ok(basic(client, "bob", "bob-password-1"))["name"] == "bob"
    # One log line when throttling started, naming the user, never a password.
    lines = [r.getMessage() for r in caplog.records if "login throttled" in r.getMessage()]
    assert lines == ["login throttled user='bob' failures=3 window=60s"]
    assert not any(WRONG in r.getMessage() or "bob-password-1" in r.getMessage() for r in caplog.records)


def test_failures_are_counted_within_the_window_only(throttled):
    client, clock = throttled
    for _ in range(2):
        error(login(client, "bob", WRONG), 401)
    clock.t += 61  # those two are forgotten
    for _ in range(2):
        error(login(client, "bob", WRONG), 401)
    assert ok(login(client, "bob", "bob-password-1"))["user"] == "bob"
    error(login(client, "bob", WRONG), 401)  # the third failure within the window
    error(login(client, "bob", "bob-password-1"), 429, "name")


def test_one_address_guessing_many_names_is_throttled(throttled):
    client, clock = throttled
    for i in range(6):
        error(login(client, f"nobody{i}", WRONG), 401)
    # Locked by address (TestClient's), whatever the name: the admin from there too.
    reply = basic(client, *ADMIN)
    body = error(reply, 429)
    assert body["field"] is None and "from your address" in body["message"]
    assert int(reply.headers["Retry-After"]) == 60
    clock.t += 60
    ok(basic(client, *ADMIN))


def test_unknown_names_are_throttled_like_known_ones(throttled):
    """Otherwise the 401/429 difference would tell which names exist."""
    client, _clock = throttled
    for _ in range(3):
        error(login(client, "ghost", WRONG), 401)
    error(login(client, "ghost", WRONG), 429, "name")


def test_auth_verify_is_the_throttled_entry_point(throttled):
    """What other login routes (e.g. oVirt SSO) call: it raises the 429 itself."""
    client, _clock = throttled
    sessions = client.app.state.sessions
    with sessions() as session:
        for _ in range(3):
            assert auth.verify(session, "bob", WRONG, client="192.0.2.9") is None
        with pytest.raises(auth.LoginThrottled) as caught:
            auth.verify(session, "bob", "bob-password-1", client="192.0.2.9")
    assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "60"
    error(login(client, "bob", "bob-password-1"), 429, "name")


def test_default_engine_throttles_after_five(api):
    """The default settings (5 failures per user name in 5 minutes) hold on both databases."""
    ok(api.post("/api/v1/users", json={"name": "carol", "password": "carol-password-1"}), 201)
    for _ in range(5):
        error(api.get("/api/v1/me", auth=("carol", WRONG)), 401)
    reply = api.get("/api/v1/me", auth=("carol", "carol-password-1"))
    error(reply, 429, "name")
    assert 290 <= int(reply.headers["Retry-After"]) <= 300
