"""Request bodies are refused before they are read: without credentials a 401 comes at once,
and every body is capped while it streams (chunked included), so a client cannot make the
engine buffer megabytes it will not use (issue 11, finding 3).

The streaming tests run a real engine process and send chunked bodies of tens of MiB over a
raw socket, watching for the answer between chunks and the engine's resident memory."""

from __future__ import annotations

import base64
import os
import select
import socket
import subprocess
import sys
import time

import httpx
import pytest

from multiconsole.engine.limits import BodyRules
from tests.engine.conftest import ADMIN, engine_client, error, ok
from tests.support.servers import free_port

MIB = 1024 * 1024
CHUNK = 256 * 1024
TOTAL = 32 * MIB
BASIC = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()


# --- a real engine --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("body-engine")
    port = free_port()
    env = {
        **os.environ,
        "MULTICONSOLE_DATA": str(tmp),
        "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multiconsole.cli",
            "engine",
            "--insecure",
            "--listen",
            f"127.0.0.1:{port}",
            "--proxy-port",
            "0",
            "--db",
            f"sqlite:///{tmp / 'engine.db'}",
            "--admin-password",
            ADMIN[1],
            "--pki-dir",
            str(tmp / "pki"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "engine.log", "wb"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/ui/login", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the engine did not start: {(tmp / 'engine.log').read_text()[-2000:]}")
        time.sleep(0.2)
    yield proc, port
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss(pid: int) -> int:
    """The process's resident memory in bytes (/proc/<pid>/status VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _read_reply(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """What the server sent until it closed (or `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def send_chunked(port: int, path: str, total: int, headers: dict[str, str] | None = None):
    """POST a chunked body of `total` bytes, checking for an answer between chunks:
    (the reply, the bytes of body sent before it came)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall((head + "\r\n").encode())
        piece = f"{CHUNK:x}\r\n".encode() + b"a" * CHUNK + b"\r\n"
        sent = 0
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0.002)
            if readable:
                return _read_reply(sock), sent
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                return _read_reply(sock), sent
            sent += CHUNK
        sock.sendall(b"0\r\n\r\n")
        return _read_reply(sock), sent
    finally:
        sock.close()


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply.split(b" ", 2)[1])


CASES = [
    # (path, headers, the status expected, bytes the server may read before answering)
    ("/ovirt-engine/api/vms", {"Content-Type": "application/xml"}, 401, 0),
    ("/api/v1/vms", {"Content-Type": "application/json"}, 401, 0),
    ("/ovirt-engine/sso/oauth/token", {"Content-Type": "application/x-www-form-urlencoded"}, 413, 64 * 1024),
    ("/ui/login", {"Content-Type": "application/x-www-form-urlencoded"}, 413, 64 * 1024),
    ("/api/v1/vms", {"Content-Type": "application/json", "Authorization": BASIC}, 413, MIB),
    ("/ovirt-engine/api/vms", {"Content-Type": "application/xml", "Authorization": BASIC}, 413, MIB),
]


def test_chunked_bodies_are_refused_while_they_stream_and_not_buffered(engine):
    proc, port = engine
    # Warm up each route (first requests allocate what any later one reuses).
    for path, headers, _, _ in CASES:
        send_chunked(port, path, 2 * MIB, headers)
    before = rss(proc.pid)
    for path, headers, expected, may_read in CASES:
        reply, sent = send_chunked(port, path, TOTAL, headers)
        assert status_of(reply) == expected, (path, reply[:300])
        assert sent < TOTAL, f"{path}: the answer came only after the whole body"
        # The client stopped well before the end: the server answered and closed early.
        assert sent <= may_read + 16 * MIB, (path, sent)
        body = reply.partition(b"\r\n\r\n")[2]
        if expected == 413:
            assert b"request body larger than" in body, body[:300]
        assert b"connection: close" in reply.lower()
    grown = rss(proc.pid) - before
    assert grown < 4 * MIB, f"the engine grew by {grown / MIB:.1f} MiB"


def test_a_content_length_over_the_cap_is_a_413_without_reading(engine):
    _proc, port = engine
    for path in ("/api/v1/vms", "/ovirt-engine/api/vms", "/ovirt-engine/sso/oauth/token", "/ui/login"):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {BASIC}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {100 * MIB}\r\n\r\n"
            )
            sock.sendall(head.encode())  # and not a byte of the body
            reply = _read_reply(sock, timeout=5)
        finally:
            sock.close()
        assert status_of(reply) == 413, (path, reply[:300])
        assert b'"reason": "request body larger than' in reply, reply


# --- the rules, in process ---------------------------------------------------------------------


@pytest.fixture
def client(sqlite_url):
    with engine_client(sqlite_url, login_failures_per_user=3, max_body=64 * 1024) as c:
        yield c


def test_no_credentials_is_a_401_naming_the_way_to_log_in(client):
    reply = client.post("/api/v1/clusters", json={"name": "c"}, auth=None)
    body = error(reply, 401)
    assert "log in first" in body["reason"]
    assert reply.headers["www-authenticate"].startswith("Basic")
    fault = client.post("/ovirt-engine/api/vms", content=b"<vm/>", auth=None)
    assert fault.status_code == 401 and b"<fault>" in fault.content
    assert fault.headers["www-authenticate"].startswith("Bearer")


def test_verified_before_the_body_and_counted_once(client):
    # The route gets the user the middleware verified.
    ok(client.post("/api/v1/clusters", json={"name": "c1"}), 201)
    # Two wrong passwords with bodies: counted once each, the limit of 3 is not reached.
    for _ in range(2):
        error(client.post("/api/v1/clusters", json={"name": "c2"}, auth=(ADMIN[0], "wrong")), 401)
    ok(client.post("/api/v1/clusters", json={"name": "c2"}), 201)
    # A third one locks the name: 429 before the body is read.
    error(client.post("/api/v1/clusters", json={"name": "c3"}, auth=(ADMIN[0], "wrong")), 401)
    error(client.post("/api/v1/clusters", json={"name": "c3"}), 429)


def test_a_session_cookie_from_another_site_is_refused_before_the_body(client):
    token = ok(client.post("/api/v1/login", json={"name": ADMIN[0], "password": ADMIN[1]}))["token"]
    client.cookies.set("multiconsole_session", token)
    cross = {"Origin": "https://evil.example"}
    error(client.post("/api/v1/clusters", json={"name": "x"}, headers=cross, auth=None), 403)
    own = {"Origin": str(client.base_url)}
    ok(client.post("/api/v1/clusters", json={"name": "x"}, headers=own, auth=None), 201)


def test_the_cap_is_configurable_and_named(client):
    big = b"{" + b" " * (64 * 1024) + b"}"
    json_type = {"Content-Type": "application/json"}
    body = error(client.post("/api/v1/clusters", content=big, headers=json_type), 413)
    assert body["reason"] == f"request body larger than {64 * 1024} bytes"

    def chunks():
        for _ in range(20):
            yield b" " * 8192

    body = error(client.post("/api/v1/clusters", content=chunks()), 413)
    assert body["field"] == "body"


def test_rules_public_routes_small_and_prefixes_larger():
    rules = BodyRules(max_body=1000, max_public_body=10, larger={"/api/v1/images": 10**6})
    assert rules.cap("/api/v1/login") == 10
    assert rules.cap("/ovirt-engine/sso/oauth/token") == 10
    assert rules.cap("/api/v1/vms") == 1000
    assert rules.cap("/api/v1/images/upload") == 10**6
    assert rules.public("/ui/login") and not rules.public("/api/v1/vms")


def test_the_address_throttle_counts_checks_made_before_the_body(sqlite_url):
    with engine_client(sqlite_url, login_failures_per_user=0, login_failures_per_address=2) as c:
        for name in ("a", "b"):
            error(c.post("/api/v1/clusters", json={"name": "x"}, auth=(name, "wrong")), 401)
        error(c.post("/api/v1/clusters", json={"name": "x"}), 429)
