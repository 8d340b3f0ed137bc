"""No secret in any log: an engine with INFO logs on (as `multiconsole engine --verbose` sets
them up, plus uvicorn's access log) and an agent process with --verbose on qemu:///system;
users log in with passwords and tokens, get console tickets, .vv files and proxy tickets,
use a proxy ticket (and replay it), fail to log in, log out. Then every line either wrote
is searched for each password, token and ticket issued on the way: none may appear.
"""

from __future__ import annotations

import asyncio
import configparser
import logging
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import websockets

from multiconsole import logs
from multiconsole.engine.app import Settings, make_app
from tests.support.servers import free_port

ADMIN = ("admin@internal", "Adm1n-l0g-scan-pw")
ALICE = ("alice", "Al1ce-l0g-scan-pw")
WRONG = "Wr0ng-guess-pw-123"


@pytest.fixture
def engine_logs(tmp_path):
    """The engine's logging as `--verbose` sets it up, into a file."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup(verbose=True)
    path = tmp_path / "engine.log"
    stream = path.open("a", encoding="utf-8")
    root.handlers[0].setStream(stream)
    try:
        yield path
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        stream.close()


@pytest.fixture
def engine(tmp_path, engine_logs, agent_proc):
    port, proxy_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'engine.db'}",
            admin_password=ADMIN[1],
            monitor_interval=1,
            proxy_port=proxy_port,
            proxy_key_file=str(tmp_path / "proxy.key"),
            allowed_origins=[url],
            pki_dir=str(tmp_path / "pki"),
        )
    )
    # log_config=None: uvicorn's own and access logs go through the engine's handler too.
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=True, log_level="info")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the engine did not start"
        time.sleep(0.02)
    yield url
    server.should_exit = True
    thread.join(10)


def ok(reply: httpx.Response, status: int = 200) -> httpx.Response:
    assert reply.status_code == status, reply.text
    return reply


async def _open(url: str, origin: str) -> bytes:
    async with websockets.connect(
        url, additional_headers={"Origin": origin}, subprotocols=["binary"], open_timeout=10
    ) as ws:
        return await asyncio.wait_for(ws.recv(), 10)


def test_no_password_token_or_ticket_reaches_a_log(engine, engine_logs, agent_proc):
    secrets: dict[str, str] = {
        "admin password": ADMIN[1],
        "alice's password": ALICE[1],
        "wrong password": WRONG,
    }
    admin = httpx.Client(base_url=engine, auth=ADMIN, timeout=60)
    ok(admin.post("/api/v1/clusters", json={"name": "c"}), 201)
    host = {"name": "h", "address": "127.0.0.1", "port": agent_proc.port, "cluster": "c", "insecure": True}
    ok(admin.post("/api/v1/hosts", json=host), 201)
    name = f"it-logs-{time.monotonic_ns() % 10**6}"
    vm = {"name": name, "cluster": "c", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}
    ok(admin.post("/api/v1/vms", json=vm), 201)
    ok(admin.post("/api/v1/users", json={"name": ALICE[0], "password": ALICE[1]}), 201)
    ok(
        admin.post(
            "/api/v1/permissions",
            json={"user": "alice", "role": "console_user", "object_type": "vm", "object": name},
        ),
        201,
    )
    try:
        ok(admin.post(f"/api/v1/vms/{name}/start"))
        # Log in: tokens for both, then tickets by Basic and by Bearer.
        tokens = {}
        for user, password in (ADMIN, ALICE):
            t = ok(httpx.post(f"{engine}/api/v1/login", json={"name": user, "password": password})).json()
            tokens[user] = t["token"]
            secrets[f"{user}'s token"] = t["token"]
        alice = httpx.Client(
            base_url=engine, headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=60
        )
        admin_token = httpx.Client(
            base_url=engine, headers={"Authorization": f"Bearer {tokens[ADMIN[0]]}"}, timeout=60
        )
        for who, client in (("admin", admin), ("admin-token", admin_token), ("alice", alice)):
            for proto in ("spice", "vnc"):
                t = ok(client.post(f"/api/v1/vms/{name}/consoles/{proto}/ticket", json={"ttl": 60})).json()
                secrets[f"{who} {proto} ticket"] = t["password"]
                vv = ok(client.get(f"/api/v1/vms/{name}/consoles/{proto}.vv"))
                parser = configparser.ConfigParser(interpolation=None)
                parser.read_string(vv.text)
                secrets[f"{who} {proto} .vv"] = parser["virt-viewer"]["password"]
        # A proxy ticket, used once and replayed.
        p = ok(alice.post(f"/api/v1/vms/{name}/consoles/vnc/proxy-ticket", json={})).json()
        token = urlsplit(p["url"]).path.lstrip("/")
        secrets["proxy ticket"] = token
        secrets["proxy ticket's MAC"] = token.rsplit(".", 1)[1]
        secrets["proxy VNC password"] = p["password"]
        assert asyncio.run(_open(p["url"], engine)).startswith(b"RFB ")
        with pytest.raises(websockets.exceptions.InvalidStatus):
            asyncio.run(_open(p["url"], engine))
        # Failures: a wrong password (Basic and login), an unknown and a revoked token.
        assert httpx.get(f"{engine}/api/v1/vms", auth=("alice", WRONG)).status_code == 401
        assert (
            httpx.post(f"{engine}/api/v1/login", json={"name": "alice", "password": WRONG}).status_code == 401
        )
        ok(alice.post("/api/v1/logout"), 204)
        assert alice.get("/api/v1/vms").status_code == 401
        # Nothing secret in the audit log either.
        audit = ok(admin.get("/api/v1/audit", params={"vm": name})).text
        assert "console ticket issued" in audit
    finally:
        admin.post(f"/api/v1/vms/{name}/stop")
        admin.close()
    time.sleep(1.5)  # the agent's events and the monitor's last poll

    agent_log = agent_proc.log_path.read_text(errors="replace")
    engine_log = engine_logs.read_text(errors="replace")
    # The logs did run at INFO: they tell what happened, without the secrets.
    assert "ticket set" in agent_log
    assert "vm started" in engine_log and "/consoles/spice.vv" in engine_log
    assert len(engine_log.splitlines()) > 20
    leaks = [
        f"{what} in the {log_name} log: {line.strip()[:200]}"
        for log_name, text in (("engine", engine_log), ("agent", agent_log), ("audit", audit))
        for line in text.splitlines()
        for what, secret in secrets.items()
        if secret in line
    ]
    assert not leaks, "\n".join(leaks)
