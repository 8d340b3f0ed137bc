"""One hung host, one busy user or a full connection pool must not stall the rest of the engine
(issue 11, findings 2 and 8): a real engine under uvicorn, a real agent process that SIGSTOP hangs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from multiconsole.engine.db import Host
from tests.engine.conftest import ADMIN, engine_client, error
from tests.support.live import LiveEngine, TestDriverAgent

VM = {"name": "web1", "cluster": "prod", "memory_mib": 64, "video": "qxl", "consoles": ["vnc"]}


def _ok(reply, status=200):
    assert reply.status_code == status, reply.text
    return reply.json() if reply.content and "json" in reply.headers.get("content-type", "") else None


def _running_vm(admin: httpx.Client, agent: TestDriverAgent) -> None:
    _ok(admin.post("/api/v1/clusters", json={"name": "prod"}), 201)
    host = {"name": "h-prod", "address": "127.0.0.1", "port": agent.port, "cluster": "prod", "insecure": True}
    _ok(admin.post("/api/v1/hosts", json=host), 201)
    _ok(admin.post("/api/v1/vms", json=VM), 201)
    _ok(admin.post("/api/v1/vms/web1/start"))
    assert admin.get("/api/v1/vms/web1/screenshot.png").status_code == 200


@pytest.fixture
def agent(tmp_path):
    agent = TestDriverAgent(tmp_path).start()
    yield agent
    agent.stop()


def _failures(engine: LiveEngine) -> int:
    with engine.app.state.sessions() as session:
        return session.query(Host).filter_by(name="h-prod").one().failures


def test_a_hung_agent_delays_nothing_that_does_not_touch_it(sqlite_url, agent):
    engine = LiveEngine(sqlite_url, monitor=True, monitor_interval=1.0).start()
    try:
        with engine.client() as admin:
            _running_vm(admin, agent)
            # Two users whose VM lists ask for thumbnails (8 each at once, as browsers would).
            tokens = []
            for name in ("ann", "bob"):
                user = {"name": name, "password": f"{name}-password", "roles": ["console_user"]}
                _ok(admin.post("/api/v1/users", json=user), 201)
                tokens.append(engine.token(name, f"{name}-password"))
            agent.hang()
            hung_at = time.monotonic()

            def screenshot(i):
                with engine.client(token=tokens[i % 2]) as c:
                    return c.get("/api/v1/vms/web1/screenshot.png")

            with ThreadPoolExecutor(16) as pool:
                waiting = [pool.submit(screenshot, i) for i in range(16)]
                time.sleep(1.5)  # every one of them is waiting on the host, or was refused
                for _ in range(3):
                    t = time.monotonic()
                    _ok(admin.get("/api/v1/vms"))
                    assert time.monotonic() - t < 1.0, "an unrelated request waited on the hung host"
                # The monitor's poll times out (5 s) and is recorded; the next one too.
                while _failures(engine) < 2:
                    assert time.monotonic() - hung_at < 14, "the monitor did not record the host's failures"
                    time.sleep(0.2)
                agent.resume()
                replies = [f.result() for f in waiting]
        statuses = sorted(r.status_code for r in replies)
        # 502: the host's own failure (the calls it had when it hung may be reset); never a 500.
        assert set(statuses) <= {200, 502, 503}, [r.text for r in replies if r.status_code >= 500]
        refused = [r for r in replies if r.status_code == 503]
        assert refused, "beyond the per-host limit, requests must be refused at once"
        for r in refused:
            assert r.json()["error"]["reason"].startswith("host h-prod is not responding")
            assert r.json()["error"]["field"] == "host"
            assert int(r.headers["retry-after"]) >= 1
    finally:
        agent.resume()
        engine.stop()


def test_a_nonresponsive_host_fails_fast(sqlite_url, agent):
    engine = LiveEngine(sqlite_url).start()
    try:
        with engine.client() as admin:
            _running_vm(admin, agent)
            with engine.app.state.sessions() as session:
                session.query(Host).filter_by(name="h-prod").one().status = "NonResponsive"
                session.commit()
            agent.hang()
            t = time.monotonic()
            reply = admin.get("/api/v1/vms/web1/screenshot.png")
            assert time.monotonic() - t < 1.0
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["reason"] == "host h-prod is not responding (its last polls failed)"
            assert "retry-after" in reply.headers
    finally:
        agent.resume()
        engine.stop()


def test_a_hundred_screenshots_by_one_console_user(sqlite_url, agent):
    # 50 a minute: at least half of the flood is refused whatever the machine's speed (how many
    # run at once, the other limit, depends on it).
    engine = LiveEngine(sqlite_url, screenshot_rate_limit=50).start()
    try:
        with engine.client() as admin:
            _running_vm(admin, agent)
            user = {"name": "viewer", "password": "viewer-password", "roles": ["console_user"]}
            _ok(admin.post("/api/v1/users", json=user), 201)
            viewer = engine.token("viewer", "viewer-password")
            boss = engine.token(*ADMIN)

            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            with (
                ThreadPoolExecutor(100) as pool,
                engine.client(token=viewer, limits=limits) as c,
                engine.client(token=boss) as me,
            ):
                flood = [pool.submit(c.get, "/api/v1/vms/web1/screenshot.png?width=160") for _ in range(100)]
                time.sleep(0.2)
                t = time.monotonic()
                _ok(me.get("/api/v1/me"))
                took = time.monotonic() - t
                replies = [f.result() for f in flood]
        statuses = [r.status_code for r in replies]
        assert set(statuses) <= {200, 429, 503}, [
            r.text for r in replies if r.status_code not in (200, 429, 503)
        ]
        assert statuses.count(200) >= 1
        assert statuses.count(429) >= 50  # one user gets 50 a minute (and 8 at a time)
        for r in replies:
            if r.status_code in (429, 503):
                assert int(r.headers["retry-after"]) >= 1
        assert took < 3.0, f"GET /me took {took:.1f} s while one user asked 100 screenshots"
    finally:
        engine.stop()


def test_a_full_connection_pool_answers_503(sqlite_url):
    with engine_client(sqlite_url) as api:
        pool = api.app.state.db_engine.pool
        held = [api.app.state.db_engine.connect() for _ in range(pool.size() + pool._max_overflow)]
        try:
            t = time.monotonic()
            reply = api.get("/api/v1/vms")
            assert time.monotonic() - t < 10
            body = error(reply, 503)
            assert int(reply.headers["retry-after"]) >= 1
            assert body["reason"] == "the engine is busy: no database connection is free; try again"
        finally:
            for conn in held:
                conn.close()
        # What a full pool refused works once connections are free again.
        assert api.get("/api/v1/vms").status_code == 200
