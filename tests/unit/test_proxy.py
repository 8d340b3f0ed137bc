"""The websocket proxy, for real on 127.0.0.1: a TCP echo server as the ticket's target, a
second TCP server that must never be reached, and websockets' own client as the browser."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from multiconsole.proxy import ProxyServer, issue
from multiconsole.proxy.server import normalize_origin, token_from_path
from multiconsole.proxy.tickets import TicketError

KEY = os.urandom(32)
ORIGIN = "http://engine.example:8080"
BANNER = b"RFB 003.008\n"


class Target:
    """A TCP server on 127.0.0.1: sends a VNC-like banner, then echoes; counts connections."""

    def __init__(self, banner: bytes = BANNER):
        self.banner = banner
        self.connections = 0
        self.received = bytearray()
        self.eof = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Target:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        if self.banner:
            writer.write(self.banner)
        try:
            while data := await reader.read(65536):
                self.received += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.eof.set()
            writer.close()

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()


class Env:
    """Target A (the ticket's), target B (never to be reached) and a proxy, all on loopback."""

    def __init__(self, **proxy_args):
        self.proxy_args = proxy_args
        self.events: list[tuple[str, object, object]] = []

    async def __aenter__(self) -> Env:
        self.stack = AsyncExitStack()
        self.a = await Target().start()
        self.b = await Target().start()
        self.stack.push_async_callback(self.a.close)
        self.stack.push_async_callback(self.b.close)
        args = {"on_session": lambda e, c, p: self.events.append((e, c, p))}
        args.update(self.proxy_args)
        self.proxy = ProxyServer(KEY, [ORIGIN], "127.0.0.1", 0, **args)
        await self.proxy.start()
        self.stack.push_async_callback(self.proxy.stop)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stack.aclose()

    def ticket(self, port: int | None = None, **kw) -> str:
        args = {"vm": "vm-1", "console": "vnc", "host": "127.0.0.1", "port": port or self.a.port}
        args["user"] = "alice@internal"
        args.update(kw)
        return issue(KEY, **args)[0]

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}{path}"

    def connect(self, path: str, origin: str | None = ORIGIN, **kw):
        return connect(self.url(path), origin=origin, compression=None, open_timeout=5, **kw)

    async def refused(self, path: str, origin: str | None = ORIGIN, **kw) -> str:
        """Expect a 403 before the upgrade; its body."""
        with pytest.raises(InvalidStatus) as err:
            async with self.connect(path, origin, **kw):
                pass
        assert err.value.response.status_code == 403
        return err.value.response.body.decode()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def eventually(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def recv_exactly(ws: ClientConnection, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        data += await asyncio.wait_for(ws.recv(decode=False), 5)
    return bytes(data)


# --- relaying ---------------------------------------------------------------------------


def test_valid_ticket_relays_both_ways():
    async def scenario():
        async with Env() as env:
            async with env.connect(f"/{env.ticket()}", subprotocols=["binary"]) as ws:
                assert ws.subprotocol == "binary"
                assert await recv_exactly(ws, len(BANNER)) == BANNER  # target -> browser
                await ws.send(b"hello")
                assert await recv_exactly(ws, 5) == b"hello"  # browser -> target -> browser
                blob = os.urandom(3 * 1024 * 1024)
                sender = asyncio.create_task(_send_in_frames(ws, blob, 65536))
                assert await recv_exactly(ws, len(blob)) == blob
                await sender
            assert env.a.connections == 1 and env.b.connections == 0
            assert bytes(env.a.received) == b"hello" + blob
            await asyncio.wait_for(env.a.eof.wait(), 5)  # browser gone -> target closed
            await eventually(lambda: [e for e, _, _ in env.events] == ["opened", "closed"])
            assert env.events[0][1].vm == "vm-1" and env.events[0][1].user == "alice@internal"
            stats = env.proxy.stats()
            assert stats["opened"] == 1 and stats["active"] == 0
            assert stats["bytes_up"] == 5 + len(blob)

    run(scenario)


async def _send_in_frames(ws: ClientConnection, blob: bytes, size: int) -> None:
    for i in range(0, len(blob), size):
        await ws.send(blob[i : i + size])


def test_query_token_and_no_subprotocol():
    async def scenario():
        async with Env() as env:
            async with env.connect(f"/?token={env.ticket()}") as ws:
                assert ws.subprotocol is None
                assert await recv_exactly(ws, len(BANNER)) == BANNER
            async with env.connect(f"/websockify?token={env.ticket()}") as ws:
                assert await recv_exactly(ws, len(BANNER)) == BANNER
            assert env.a.connections == 2

    run(scenario)


def test_target_closing_closes_the_websocket():
    async def scenario():
        async with Env() as env:
            async with env.connect(f"/{env.ticket()}") as ws:
                await recv_exactly(ws, len(BANNER))
                for w in env.a.writers:
                    w.close()
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_code == 1000

    run(scenario)


# --- refusals: nothing reaches any target ---------------------------------------------------


def test_replayed_ticket_refused_without_reaching_the_target():
    async def scenario():
        async with Env() as env:
            ticket = env.ticket()
            async with env.connect(f"/{ticket}") as ws:
                await recv_exactly(ws, len(BANNER))
            assert "already used" in await env.refused(f"/{ticket}")
            assert "already used" in await env.refused(f"/?token={ticket}")
            assert env.a.connections == 1 and env.b.connections == 0
            assert env.proxy.stats()["refused"] == {"ticket already used": 2}
            assert ("refused", "vm-1") in [(e, c and c.vm) for e, c, _ in env.events]

    run(scenario)


def test_racing_replays_only_one_wins():
    async def scenario():
        async with Env() as env:
            ticket = env.ticket()

            async def attempt() -> bool:
                try:
                    async with env.connect(f"/{ticket}") as ws:
                        await recv_exactly(ws, len(BANNER))
                        await asyncio.sleep(0.2)
                        return True
                except InvalidStatus as err:
                    assert err.response.status_code == 403
                    return False

            results = await asyncio.gather(*(attempt() for _ in range(10)))
            assert sum(results) == 1
            assert env.a.connections == 1

    run(scenario)


def test_forged_and_altered_tickets_refused():
    async def scenario():
        async with Env() as env:
            genuine = env.ticket()
            payload, mac = genuine.split(".")
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            data["port"] = env.b.port
            altered = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
            assert "bad signature" in await env.refused(f"/{altered}.{mac}")
            forged = issue(os.urandom(32), "vm-1", "vnc", "127.0.0.1", env.b.port, "mallory")[0]
            assert "bad signature" in await env.refused(f"/{forged}")
            assert "malformed" in await env.refused(f"/{genuine[:-2]}")
            assert "malformed" in await env.refused("/not-a-ticket")
            assert "no ticket" in await env.refused("/")
            assert env.a.connections == 0 and env.b.connections == 0
            # the genuine one was never consumed by those attempts
            async with env.connect(f"/{genuine}") as ws:
                assert await recv_exactly(ws, len(BANNER)) == BANNER

    run(scenario)


def test_expired_and_future_tickets_refused():
    async def scenario():
        async with Env() as env:
            old = env.ticket(now=time.time() - 121)
            assert "expired" in await env.refused(f"/{old}")
            future = env.ticket(now=time.time() + 60)
            assert "not yet valid" in await env.refused(f"/{future}")
            assert env.a.connections == 0

    run(scenario)


def test_origin_checked():
    async def scenario():
        async with Env() as env:
            ticket = env.ticket()
            for origin in (
                "http://evil.example:8080",
                "https://engine.example:8080",
                "http://engine.example:8081",
                "http://engine.example",
                "null",
            ):
                assert "origin not allowed" in await env.refused(f"/{ticket}", origin), origin
            assert "origin missing" in await env.refused(f"/{ticket}", None)
            assert env.a.connections == 0
            # still unused: the right origin gets in (host case and explicit port normalised)
            async with env.connect(f"/{ticket}", "HTTP://Engine.Example:8080") as ws:
                assert await recv_exactly(ws, len(BANNER)) == BANNER

    run(scenario)


def test_missing_origin_allowed_only_when_asked():
    async def scenario():
        async with Env(allow_missing_origin=True) as env:
            async with env.connect(f"/{env.ticket()}", None) as ws:
                assert await recv_exactly(ws, len(BANNER)) == BANNER
            assert "origin not allowed" in await env.refused(f"/{env.ticket()}", "http://evil.example")

    run(scenario)


def test_ticket_for_a_cannot_reach_b_by_any_url_trick():
    async def scenario():
        async with Env() as env:
            b = env.b.port
            # extra query parameters are ignored: the session goes to A
            for path in (
                "/{t}?host=127.0.0.1&port={b}",
                "/{t}?target=127.0.0.1:{b}&token_port={b}",
                "/?token={t}&port={b}&host=127.0.0.1",
                "/{t}?127.0.0.1:{b}",
            ):
                async with env.connect(path.format(t=env.ticket(), b=b)) as ws:
                    assert await recv_exactly(ws, len(BANNER)) == BANNER
            assert env.a.connections == 4
            # paths that name anything besides the ticket, or two tickets, are refused
            ticket_b = env.ticket(port=b)  # a genuine ticket for B, never presented alone
            for path in (
                "/{t}/127.0.0.1:{b}",
                "/127.0.0.1:{b}/{t}",
                "/{t}/../{b}",
                "/{t}?token={tb}",
                "/?token={t}&token={tb}",
                "/x?token={t}",
                "//127.0.0.1:{b}/{t}",
                "/{t}%2F127.0.0.1:{b}",
            ):
                body = await env.refused(path.format(t=env.ticket(), b=b, tb=ticket_b))
                assert "malformed" in body, (path, body)
            # headers do not choose a target either
            async with env.connect(
                f"/{env.ticket()}",
                additional_headers={"Host": f"127.0.0.1:{b}", "X-Forwarded-Host": f"127.0.0.1:{b}"},
            ) as ws:
                assert await recv_exactly(ws, len(BANNER)) == BANNER
            assert env.b.connections == 0
            assert env.a.connections == 5

    run(scenario)


def test_unreachable_target_closes_cleanly():
    async def scenario():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]  # bound, not listening: connection refused
            async with Env() as env:
                async with env.connect(f"/{env.ticket(port=dead_port)}") as ws:
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 5)
                    assert ws.close_code == 1011
                    assert ws.close_reason == "console unreachable"
                assert [e for e, _, _ in env.events] == ["failed"]
                assert env.proxy.stats()["failed"] == 1 and env.proxy.active == 0
                # the proxy keeps serving
                async with env.connect(f"/{env.ticket()}") as ws:
                    assert await recv_exactly(ws, len(BANNER)) == BANNER

    run(scenario)


def test_target_check_vetoes_sync_and_async():
    async def scenario():
        seen = []

        async def check(claims):
            seen.append(claims.port)
            await asyncio.sleep(0)
            return claims.vm == "vm-1"

        async with Env(target_check=check) as env:
            assert "target not allowed" in await env.refused(f"/{env.ticket(vm='vm-2')}")
            async with env.connect(f"/{env.ticket()}") as ws:
                assert await recv_exactly(ws, len(BANNER)) == BANNER
            assert seen == [env.a.port, env.a.port] and env.a.connections == 1

        def broken(_claims):
            raise RuntimeError("database down")

        async with Env(target_check=broken) as env:
            assert "target not allowed" in await env.refused(f"/{env.ticket()}")
            assert env.a.connections == 0

    run(scenario)


def test_idle_timeout_and_lifetime():
    async def scenario():
        async with Env(idle_timeout=0.3) as env:
            async with env.connect(f"/{env.ticket()}") as ws:
                await recv_exactly(ws, len(BANNER))
                t0 = time.monotonic()
                for _ in range(4):  # activity keeps it open
                    await asyncio.sleep(0.15)
                    await ws.send(b"x")
                    await recv_exactly(ws, 1)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                assert time.monotonic() - t0 > 0.6
                assert ws.close_reason == "idle timeout"
        async with Env(max_lifetime=0.3) as env:
            async with env.connect(f"/{env.ticket()}") as ws:
                await recv_exactly(ws, len(BANNER))
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.send(b"x")
                        await asyncio.wait_for(ws.recv(), 5)
                assert ws.close_reason == "session lifetime over"

    run(scenario)


def test_stop_closes_sessions_on_both_sides():
    async def scenario():
        async with Env() as env:
            ws = await env.connect(f"/{env.ticket()}")
            await recv_exactly(ws, len(BANNER))
            await env.proxy.stop()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(env.a.eof.wait(), 5)

    run(scenario)


def test_tickets_never_logged(caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario():
        async with Env() as env:
            ticket = env.ticket()
            async with env.connect(f"/{ticket}") as ws:
                await recv_exactly(ws, len(BANNER))
            await env.refused(f"/{ticket}")
            await env.refused(f"/?token={env.ticket(now=time.time() - 500)}")
            return ticket

    ticket = asyncio.run(scenario())
    # everything the proxy's side logs (websockets' client, the test's browser, is not ours)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("multiconsole"))
    assert "session opened jti=" in text and "ticket already used" in text
    payload, mac = ticket.split(".")
    assert payload not in text and mac not in text


def test_helpers():
    assert normalize_origin("https://Example.COM") == "https://example.com:443"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("null", "", "ftp://x", "http://x/path", "http://user@x", "http://x:99999"):
        assert normalize_origin(bad) is None, bad
    assert token_from_path("/abc.def") == "abc.def"
    assert token_from_path("/?token=abc.def&x=1") == "abc.def"
    for bad in ("/", "/a/b", "/a?token=b", "//host:1/abc.def", "abc.def"):
        with pytest.raises(TicketError):
            token_from_path(bad)
    with pytest.raises(ValueError):
        ProxyServer(KEY, ["not an origin"])
    with pytest.raises(ValueError):
        ProxyServer(b"short", [ORIGIN])


# --- `multiconsole proxy`, its own process ------------------------------------------------


def test_proxy_command_serves(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key_file = tmp_path / "proxy.key"
    proc = subprocess.Popen(
        [sys.executable, "-m", "multiconsole.cli", "proxy", "--listen", f"127.0.0.1:{port}"]
        + ["--key-file", str(key_file), "--allowed-origin", ORIGIN, "-v"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not key_file.exists() or _closed(port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        key = key_file.read_bytes()

        async def scenario():
            target = await Target().start()
            try:
                ticket = issue(key, "vm-1", "vnc", "127.0.0.1", target.port, "alice")[0]
                url = f"ws://127.0.0.1:{port}/{ticket}"
                async with connect(url, origin=ORIGIN, subprotocols=["binary"]) as ws:
                    assert await recv_exactly(ws, len(BANNER)) == BANNER
                with pytest.raises(InvalidStatus):
                    async with connect(url, origin=ORIGIN):
                        pass
            finally:
                await target.close()

        run(scenario)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    assert proc.returncode == 0, output
    assert "session opened jti=" in output and ticket_free(output, key)


def _closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def ticket_free(output: str, key: bytes) -> bool:
    """No ticket-shaped text in a log."""
    return "eyJ" not in output and key.hex() not in output


# --- flow control and TLS -----------------------------------------------------------------


class StalledTarget(Target):
    """Accepts, sends the banner, then never reads: the proxy must stop reading the browser."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.transport.pause_reading()
        writer.write(self.banner)
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()  # until the test aborts it


def test_backpressure_from_a_stalled_target():
    async def scenario():
        async with Env() as env:
            stalled = await StalledTarget().start()
            try:
                async with env.connect(f"/{env.ticket(port=stalled.port)}") as ws:
                    await recv_exactly(ws, len(BANNER))
                    frame = os.urandom(65536)
                    sent = 0

                    async def flood():
                        nonlocal sent
                        while True:
                            await ws.send(frame)
                            sent += len(frame)

                    task = asyncio.create_task(flood())
                    await asyncio.sleep(1.5)
                    stuck_at = sent
                    await asyncio.sleep(0.5)
                    assert sent == stuck_at  # the client is blocked, not buffering in the proxy
                    (session,) = env.proxy._sessions
                    buffered = session.target.get_write_buffer_size()
                    assert buffered <= 2 * 1024 * 1024, buffered
                    assert sent < 64 * 1024 * 1024, sent  # kernel buffers, not the proxy's memory
                    task.cancel()
                    # the stalled console goes away: the session ends promptly, both sides
                    for w in stalled.writers:
                        w.transport.abort()
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(ws.recv(), 5)
                    assert ws.close_code == 1000
                await eventually(lambda: env.proxy.active == 0)
            finally:
                await stalled.close()

    run(scenario)


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_wss(tmp_path: Path):
    import ssl

    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def scenario():
        async with Env(ssl=server_ctx) as env:
            url = f"wss://127.0.0.1:{env.proxy.port}/{env.ticket()}"
            async with connect(url, origin=ORIGIN, ssl=client_ctx, compression=None) as ws:
                assert await recv_exactly(ws, len(BANNER)) == BANNER
                blob = os.urandom(2 * 1024 * 1024)
                sender = asyncio.create_task(_send_in_frames(ws, blob, 65536))
                assert await recv_exactly(ws, len(blob)) == blob
                await sender

    run(scenario)
