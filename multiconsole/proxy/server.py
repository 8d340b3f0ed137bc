"""The browser-console proxy: websocket (noVNC) <-> TCP (the VM's VNC server), on asyncio.

    wss://proxy:6100/<ticket>          or          wss://proxy:6100/?token=<ticket>

Before anything is opened towards a hypervisor, the HTTP upgrade request must carry a genuine,
unexpired ticket (see `tickets`), never used before, from an allowed Origin; the engine's
optional `target_check` may veto it too. Any refusal is an HTTP 403 with the reason in the
body, sent instead of the upgrade. The target is the (host, port) of the ticket and nothing
else: no part of the URL, query or headers can choose it.

A ticket is consumed when its upgrade is accepted (in ``process_response``, synchronously, so
two racing requests with one ticket cannot both win). Then bytes are relayed both ways in the
transports' own callbacks (no queue or task per chunk; each chunk the target sends, at most
256 KiB, becomes one binary frame), with flow control on each side, until either side ends;
both are then closed.

Logs carry the first 8 characters of a ticket's jti, never a ticket; websockets' own logger
goes through a filter that blanks anything shaped like a ticket.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import signal
import ssl as ssl_module
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import DATA_OPCODES, Frame
from websockets.http11 import Request, Response
from websockets.protocol import OPEN

from multiconsole.proxy.tickets import CLOCK_SKEW, Claims, TicketError, verify

log = logging.getLogger(__name__)

DEFAULT_PORT = 6100
WS_WRITE_LIMIT = 256 * 1024  # bytes buffered towards the browser before we stop reading the target
TARGET_WRITE_LIMIT = 256 * 1024  # bytes buffered towards the target before we stop reading frames
MAX_FRAME = 1 << 20  # largest message accepted from a browser (noVNC sends small ones)
PRUNE_EVERY = 30.0  # seconds between sweeps of the used-ticket set
CLOSE_GRACE = 5.0  # seconds a closed session's target gets to take what was sent to it

TargetCheck = Callable[[Claims], "bool | Awaitable[bool]"]
SessionCallback = Callable[[str, "Claims | None", Any], "None | Awaitable[None]"]

_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{20,}")


class _RedactTickets(logging.Filter):
    """Blank anything shaped like a ticket in a record (websockets logs request paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_SHAPE.sub("<ticket>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_ws_log = logging.getLogger("multiconsole.proxy.websockets")
_ws_log.addFilter(_RedactTickets())


class Refused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def normalize_origin(origin: str) -> str | None:
    """`scheme://host:port`, lowercased, with the default port made explicit; None if invalid."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return None
    if port is None:
        port = 443 if scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def token_from_path(path: str) -> str:
    """The ticket of a request target: `/<ticket>` or `/?token=<ticket>` (also `/websockify?...`).

    Split by hand, not by urlsplit: a target like `//host:port/<ticket>` is a path here.
    """
    path, _, query = path.partition("#")[0].partition("?")
    tokens = parse_qs(query, keep_blank_values=True).get("token")
    if tokens is not None:
        if len(tokens) != 1 or path not in ("", "/", "/websockify"):
            raise TicketError("malformed")
        return tokens[0]
    if not path.startswith("/"):
        raise TicketError("malformed")
    segment = path[1:-1] if path.endswith("/") else path[1:]
    if not segment:
        raise TicketError("no ticket")
    if "/" in segment:
        raise TicketError("malformed")
    return segment


class _Session:
    """One relay between a browser's websocket and its console's TCP port.

    Bytes move in the transports' callbacks, not in tasks: a data frame from the browser is
    written to the target as it is parsed, and what the target sends becomes one binary frame
    as it arrives (no queue, no task switch, no copy besides the frame's own). Flow control
    is the transports': when one side's write buffer is full, the other side stops reading.
    """

    __slots__ = (
        "claims",
        "peer",
        "ws",
        "target",
        "pending",
        "started",
        "last",
        "up",
        "down",
        "ended_by",
        "target_done",
    )

    def __init__(self, claims: Claims, ws: _Connection):
        self.claims = claims
        self.peer = ws.remote_address
        self.ws = ws
        self.target: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # from the browser before the target answered
        self.started = self.last = time.monotonic()
        self.up = 0  # bytes browser -> target
        self.down = 0  # bytes target -> browser
        self.ended_by = "?"
        self.target_done: asyncio.Future = asyncio.get_running_loop().create_future()

    # browser -> target (called from the websocket's frame parser)

    def from_browser(self, data: bytes) -> None:
        self.up += len(data)
        self.last = time.monotonic()
        target = self.target
        if target is None:
            self.pending.append(data)
        elif not target.is_closing():
            target.write(data)

    # target -> browser (called from the target's transport)

    def from_target(self, data: bytes) -> None:
        self.down += len(data)
        self.last = time.monotonic()
        ws = self.ws
        if ws.protocol.state is not OPEN:
            return  # closing: nothing more goes to the browser
        try:
            ws.protocol.send_binary(data)
            ws.send_data()
        except Exception as err:  # a broken browser connection: end the session
            log.info("proxy: browser write failed (%s) jti=%s", type(err).__name__, self.claims.jti_prefix)
            self.end_target("browser")

    def end_target(self, by: str) -> None:
        if not self.target_done.done():
            self.target_done.set_result(by)


class _Connection(ServerConnection):
    """A websocket connection that carries the verified claims from handshake to handler, and
    hands data frames straight to its session instead of queueing them for recv()."""

    claims: Claims | None = None
    session: _Session | None = None

    def process_event(self, event: Any) -> None:
        session = self.session
        if session is not None and isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            session.from_browser(event.data)
        else:
            super().process_event(event)

    # the browser's write buffer is full / drained: stop / resume reading the target
    def pause_writing(self) -> None:
        super().pause_writing()
        if self.session is not None and self.session.target is not None:
            self.session.target.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.session is not None and self.session.target is not None:
            self.session.target.resume_reading()


class _Target(asyncio.Protocol):
    """The TCP side of a session."""

    def __init__(self, session: _Session):
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_write_buffer_limits(high=TARGET_WRITE_LIMIT)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.session.from_target(data)

    def eof_received(self) -> bool:
        self.session.end_target("target")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.end_target("target")

    # the target's write buffer is full / drained: stop / resume reading the browser
    def pause_writing(self) -> None:
        self.session.ws.transport.pause_reading()

    def resume_writing(self) -> None:
        self.session.ws.transport.resume_reading()


class ProxyServer:
    """A websocket-to-VNC proxy that opens only what signed, single-use tickets name.

    key                 the HMAC key shared with the engine (`tickets.load_or_create_key`)
    allowed_origins     browser origins allowed to connect, e.g. "https://engine.example:8443"
                        (exact scheme://host:port after normalising default ports)
    host, port          where to listen (port 0: any free port; see `.port` after start)
    ssl                 an ssl.SSLContext for wss://, else ws://
    target_check        claims -> bool (or awaitable bool): a last veto before the upgrade,
                        e.g. "does this port still belong to that VM?"; False or an exception
                        refuses the ticket
    on_session          (event, claims, peer): "opened" (target connected), "closed" (either
                        side ended), "failed" (target unreachable), "refused" (claims are None
                        unless the ticket itself was genuine); sync or async; must be quick
    allow_missing_origin   accept requests without an Origin header (non-browser clients)
    idle_timeout        close a session after this many seconds without bytes either way
    max_lifetime        close a session this many seconds after it opened
    connect_timeout     seconds to reach the target
    clock               the wall clock tickets are checked against (tests)
    """

    def __init__(
        self,
        key: bytes,
        allowed_origins: Iterable[str],
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        ssl: ssl_module.SSLContext | None = None,
        target_check: TargetCheck | None = None,
        on_session: SessionCallback | None = None,
        *,
        allow_missing_origin: bool = False,
        idle_timeout: float | None = None,
        max_lifetime: float | None = None,
        connect_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ):
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("the ticket key must be at least 16 bytes")
        self.key = key
        self.allowed_origins: set[str] = set()
        for origin in allowed_origins:
            normal = normalize_origin(origin)
            if normal is None:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
            self.allowed_origins.add(normal)
        self.host = host
        self.port = port
        self.ssl = ssl
        self.target_check = target_check
        self.on_session = on_session
        self.allow_missing_origin = allow_missing_origin
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.connect_timeout = connect_timeout
        self.clock = clock
        self._used: dict[str, float] = {}  # jti -> until when to remember it
        self._last_prune = 0.0
        self._server: Server | None = None
        self._sessions: set[_Session] = set()
        self.opened = 0
        self.failed = 0
        self.refused: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; returns once the socket is bound (self.port is then the real port)."""
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=self.ssl,
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=_select_subprotocol,
            compression=None,  # noVNC does not need permessage-deflate; it costs CPU and memory
            server_header=None,
            max_size=MAX_FRAME,
            write_limit=WS_WRITE_LIMIT,
            create_connection=_Connection,
            logger=_ws_log,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "proxy listening on %s:%d (%s), origins: %s",
            self.host,
            self.port,
            "wss" if self.ssl else "ws",
            ", ".join(sorted(self.allowed_origins)) or "none",
        )

    async def stop(self) -> None:
        """Stop listening, close every session (both sides) and wait for them."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        await server.wait_closed()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (the `multiconsole proxy` process)."""

        async def main() -> None:
            await self.start()
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stopping.set)
            try:
                await stopping.wait()
            finally:
                await self.stop()

        asyncio.run(main())

    @property
    def active(self) -> int:
        return len(self._sessions)

    def stats(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "opened": self.opened,
            "failed": self.failed,
            "refused": dict(self.refused),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "remembered_tickets": len(self._used),
        }

    # --- the handshake -----------------------------------------------------------------

    async def _process_request(self, conn: _Connection, request: Request) -> Response | None:
        peer = conn.remote_address
        claims: Claims | None = None
        try:
            try:
                claims = verify(token_from_path(request.path), self.key, self.clock())
            except TicketError as err:
                raise Refused(err.reason) from None
            self._check_origin(request)
            if self._is_used(claims.jti):
                raise Refused("ticket already used")
            if self.target_check is not None:
                try:
                    ok = self.target_check(claims)
                    if inspect.isawaitable(ok):
                        ok = await ok
                except Exception:
                    log.exception("proxy: target check failed jti=%s", claims.jti_prefix)
                    ok = False
                if not ok:
                    raise Refused("target not allowed")
        except Refused as refusal:
            return await self._refuse(conn, refusal.reason, claims, peer)
        conn.claims = claims
        return None

    async def _process_response(
        self, conn: _Connection, _request: Request, response: Response
    ) -> Response | None:
        claims = conn.claims
        if claims is None or response.status_code != 101:
            return None
        # Synchronous from the check to the mark: of two upgrades with one ticket, one wins.
        if self._is_used(claims.jti):
            conn.claims = None
            return await self._refuse(conn, "ticket already used", claims, conn.remote_address)
        self._used[claims.jti] = claims.exp + CLOCK_SKEW
        # From the first frame on, data goes to the session (held until the target answers).
        conn.session = _Session(claims, conn)
        return None

    def _check_origin(self, request: Request) -> None:
        origins = request.headers.get_all("Origin")
        if not origins:
            if self.allow_missing_origin:
                return
            raise Refused("origin missing")
        if len(origins) != 1 or normalize_origin(origins[0]) not in self.allowed_origins:
            raise Refused("origin not allowed")

    def _is_used(self, jti: str) -> bool:
        now = self.clock()
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            for old in [j for j, until in self._used.items() if until < now]:
                del self._used[old]
        return jti in self._used

    async def _refuse(self, conn: _Connection, reason: str, claims: Claims | None, peer: Any) -> Response:
        self.refused[reason] += 1
        level = logging.INFO if reason in ("expired", "no ticket") else logging.WARNING
        if claims is None:
            log.log(level, "proxy: refused (%s) peer=%s", reason, _peer_text(peer))
        else:
            log.log(
                level,
                "proxy: refused (%s) jti=%s vm=%s user=%s peer=%s",
                reason,
                claims.jti_prefix,
                claims.vm,
                claims.user,
                _peer_text(peer),
            )
        await self._emit("refused", claims, peer)
        return conn.respond(403, f"refused: {reason}\n")

    # --- sessions ----------------------------------------------------------------------

    async def _handle(self, ws: _Connection) -> None:
        session = ws.session
        if session is None:  # cannot happen: the handshake refuses first
            await ws.close(1008, "no ticket")
            return
        claims = session.claims
        loop = asyncio.get_running_loop()
        ws.transport.pause_reading()  # until the target answers
        try:
            target, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _Target(session), claims.host, claims.port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as err:
            self.failed += 1
            log.warning(
                "proxy: target %s:%d unreachable (%s) jti=%s vm=%s",
                claims.host,
                claims.port,
                type(err).__name__,
                claims.jti_prefix,
                claims.vm,
            )
            await self._emit("failed", claims, session.peer)
            ws.transport.resume_reading()
            await ws.close(1011, "console unreachable")
            return

        session.target = target
        for data in session.pending:
            target.write(data)
        session.pending.clear()
        ws.transport.resume_reading()
        self.opened += 1
        self._sessions.add(session)
        log.info(
            "proxy: session opened jti=%s vm=%s console=%s user=%s peer=%s target=%s:%d",
            claims.jti_prefix,
            claims.vm,
            claims.console,
            claims.user,
            _peer_text(session.peer),
            claims.host,
            claims.port,
        )
        await self._emit("opened", claims, session.peer)
        browser_done = asyncio.ensure_future(ws.wait_closed())
        waits = [browser_done, session.target_done]
        if self.idle_timeout or self.max_lifetime:
            waits.append(asyncio.ensure_future(self._watchdog(session)))
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if session.target_done in done:
                session.ended_by = session.target_done.result()
            elif browser_done in done:
                session.ended_by = "browser"
        finally:
            for w in waits:
                if w is not session.target_done:
                    w.cancel()
            target.close()  # flushes what is buffered for the target, then closes
            if target.get_write_buffer_size():
                loop.call_later(CLOSE_GRACE, target.abort)  # a target that stopped reading
            # Read the browser again (a full target may have paused it) to get its close frame;
            # what else it sends now is dropped, the target being closed.
            ws.transport.resume_reading()
            reason = {"idle": "idle timeout", "lifetime": "session lifetime over"}.get(session.ended_by)
            await ws.close(1000, reason or "console closed")
            ws.session = None
            self._sessions.discard(session)
            self.bytes_up += session.up
            self.bytes_down += session.down
            log.info(
                "proxy: session closed jti=%s vm=%s by=%s up=%d down=%d seconds=%.1f",
                claims.jti_prefix,
                claims.vm,
                session.ended_by,
                session.up,
                session.down,
                time.monotonic() - session.started,
            )
            await self._emit("closed", claims, session.peer)

    async def _watchdog(self, session: _Session) -> None:
        while True:
            now = time.monotonic()
            deadlines = []
            if self.idle_timeout:
                deadlines.append((session.last + self.idle_timeout, "idle"))
            if self.max_lifetime:
                deadlines.append((session.started + self.max_lifetime, "lifetime"))
            deadline, why = min(deadlines)
            if now >= deadline:
                session.ended_by = why
                return
            await asyncio.sleep(deadline - now)

    async def _emit(self, event: str, claims: Claims | None, peer: Any) -> None:
        if self.on_session is None:
            return
        try:
            result = self.on_session(event, claims, peer)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("proxy: on_session(%s) failed", event)


def _select_subprotocol(_conn: ServerConnection, offered: Any) -> str | None:
    """noVNC may offer "binary"; accept it then, else speak without a subprotocol."""
    return "binary" if "binary" in offered else None


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
