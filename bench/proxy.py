"""Benchmark of the browser-console proxy beside websockify and a raw TCP relay, in one run.

    .venv/bin/python bench/proxy.py [--quick]

Three relays between a client in this process and the same TCP target server (its own
process) on loopback, each relay its own process:

* ours: ``multiconsole proxy`` (websocket -> TCP, a fresh signed ticket per session);
* websockify (PyPI), run as ``websockify PORT 127.0.0.1:TARGET`` (a process per session);
* raw: a minimal asyncio TCP <-> TCP forwarder, the ceiling (no websocket at all).

Figures: bulk throughput each way (MB/s, 64 KiB frames, median of 5 alternating runs, CPU
seconds of the relay per GB), round-trip latency of 32-byte messages (p50, p99), and memory
for 1,000 idle sessions: the relay's RSS delta (summed over its processes) and PSS delta
(shared pages split between processes: the fair figure for websockify's forked children).

websockify forks a process per session and its children wait in select(): past about 500
sessions their sockets get descriptors above 1023 and they fail ("filedescriptor out of range
in select()"); the bench counts the sessions each relay actually holds and says why others
failed, from the relay's own log. The host may be shared: the load average is printed, and
CPU seconds per GB are steadier than MB/s when it is busy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ORIGIN = "http://bench.invalid:8080"
MB = 1_000_000
CHUNK = 1 << 20  # what the target writes at a time in SOURCE mode

out = Console(width=None if sys.stdout.isatty() else 140)
progress = Console(stderr=True, style="dim")


@dataclass(frozen=True)
class Sizes:
    bulk_mb: int
    frame: int
    repeats: int
    pings: int
    sessions: int


FULL = Sizes(bulk_mb=200, frame=64 * 1024, repeats=5, pings=2000, sessions=1000)
QUICK = Sizes(bulk_mb=20, frame=64 * 1024, repeats=1, pings=300, sessions=100)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --- the target server and the raw relay (run as `bench/proxy.py --serve-...`) ---------------


async def serve_target(port: int) -> None:
    """One line names the mode: SINK n (read n, reply K), SOURCE n (write n), ECHO."""
    blob = os.urandom(CHUNK)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            mode, _, arg = (await reader.readline()).decode().strip().partition(" ")
            if mode == "SINK":
                left = int(arg)
                while left > 0:
                    data = await reader.read(min(left, 1 << 20))
                    if not data:
                        return
                    left -= len(data)
                writer.write(b"K")
            elif mode == "SOURCE":
                left = int(arg)
                while left > 0:
                    writer.write(blob[: min(left, CHUNK)])
                    left -= CHUNK
                    await writer.drain()
            elif mode == "ECHO":
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            await writer.drain()
            await reader.read()  # until the client goes
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


class _Forward(asyncio.Protocol):
    """One side of the raw relay: what arrives is written to the peer as is, no copies."""

    def __init__(self, peer: _Forward | None = None):
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # data that came before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # the peer's write buffer is full: stop reading this side until it drains
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve_relay(port: int, target_port: int) -> None:
    """The ceiling: a minimal asyncio TCP <-> TCP forwarder (protocols, flow control, no copies)."""
    loop = asyncio.get_running_loop()

    class Client(_Forward):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            transport.pause_reading()
            loop.create_task(self.connect())

        async def connect(self) -> None:
            try:
                _, target = await loop.create_connection(lambda: _Forward(self), "127.0.0.1", target_port)
            except OSError:
                self.transport.close()
                return
            self.peer = target
            for data in self.pending:
                target.transport.write(data)
            self.pending.clear()
            self.transport.resume_reading()

    server = await loop.create_server(Client, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- processes and their memory ----------------------------------------------------------


def proc_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def memory_kib(pid: int) -> tuple[int, int, int]:
    """(RSS, PSS, processes) of a process and its descendants, KiB."""
    rss = pss = n = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            n += 1
        except OSError:
            continue
    return rss, pss, n


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, its live descendants and its reaped children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for i, p in enumerate(proc_tree(pid)):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if i == 0:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / tick


class Process:
    def __init__(self, label: str, argv: list[str], port: int, log_dir: Path):
        self.label = label
        self.port = port
        self.log_path = log_dir / f"{label}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{label} exited: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not listen on {port}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# --- the relays under test ---------------------------------------------------------------


class Relay:
    """How the client reaches the target through one relay."""

    label: str
    websocket: bool = True

    def __init__(self, process: Process):
        self.process = process

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.process.port}/"

    async def open(self) -> Conn:
        ws = await connect(
            self.url(),
            origin=ORIGIN,
            subprotocols=["binary"],
            compression=None,
            max_size=None,
            open_timeout=30,
            ping_interval=None,
        )
        return WsConn(ws)


class Ours(Relay):
    label = "ours (multiconsole proxy)"

    def __init__(self, process: Process, key: bytes, target_port: int):
        super().__init__(process)
        self.key = key
        self.target_port = target_port

    def url(self) -> str:
        from multiconsole.proxy.tickets import issue

        ticket, _ = issue(self.key, "bench-vm", "vnc", "127.0.0.1", self.target_port, "bench", ttl=600)
        return f"ws://127.0.0.1:{self.process.port}/{ticket}"


class Websockify(Relay):
    label = f"websockify {version('websockify')}"


class Raw(Relay):
    label = "raw asyncio TCP relay (ceiling)"
    websocket = False

    async def open(self) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.process.port, limit=1 << 20)
        return TcpConn(reader, writer)


class Conn:
    async def send(self, data: bytes | memoryview) -> None: ...
    async def recv(self) -> bytes: ...
    async def close(self) -> None: ...


class WsConn(Conn):
    def __init__(self, ws: ClientConnection):
        self.ws = ws

    async def send(self, data: bytes | memoryview) -> None:
        await self.ws.send(data)

    async def recv(self) -> bytes:
        return await self.ws.recv(decode=False)

    async def close(self) -> None:
        await self.ws.close()


class TcpConn(Conn):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes | memoryview) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> bytes:
        data = await self.reader.read(1 << 20)
        if not data:
            raise ConnectionError("closed")
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# --- measurements ------------------------------------------------------------------------


@dataclass
class Result:
    up: list[float] = field(default_factory=list)  # MB/s
    down: list[float] = field(default_factory=list)
    cpu_up: list[float] = field(default_factory=list)  # relay CPU s per GB
    cpu_down: list[float] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)  # seconds
    sessions: int = 0
    open_s: float = 0.0
    rss_kib: int = 0
    pss_kib: int = 0
    procs: int = 0
    base_rss_kib: int = 0
    failed: int = 0
    errors: str = ""
    log_reason: str = ""

    def per_session_kib(self) -> float:
        return self.pss_kib / max(self.sessions, 1)


async def settle(relay: Relay, seconds: float = 3.0) -> None:
    """Wait until the relay has no extra processes (websockify reaps children) and is idle."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and memory_kib(relay.process.pid)[2] > 1:
        await asyncio.sleep(0.05)


async def bulk_up(relay: Relay, total: int, frame: int) -> tuple[float, float]:
    conn = await relay.open()
    blob = memoryview(os.urandom(frame))
    await conn.send(f"SINK {total}\n".encode())
    cpu0 = cpu_seconds(relay.process.pid)
    t0 = time.perf_counter()
    for _ in range(total // frame):
        await conn.send(blob)
    if await conn.recv() != b"K":
        raise RuntimeError(f"{relay.label}: no acknowledgement from the sink")
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds(relay.process.pid) - cpu0  # read while the session's process is alive
    await conn.close()
    await settle(relay)
    return total / MB / seconds, cpu / (total / 1e9)


async def bulk_down(relay: Relay, total: int) -> tuple[float, float]:
    conn = await relay.open()
    cpu0 = cpu_seconds(relay.process.pid)
    t0 = time.perf_counter()
    await conn.send(f"SOURCE {total}\n".encode())
    got = 0
    while got < total:
        got += len(await conn.recv())
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds(relay.process.pid) - cpu0
    await conn.close()
    await settle(relay)
    return total / MB / seconds, cpu / (total / 1e9)


async def pings(relay: Relay, n: int) -> list[float]:
    conn = await relay.open()
    await conn.send(b"ECHO\n")
    message = os.urandom(32)
    samples = []
    for i in range(n + 50):  # 50 warm-up round trips
        t0 = time.perf_counter()
        await conn.send(message)
        got = b""
        while len(got) < len(message):
            got += await conn.recv()
        if i >= 50:
            samples.append(time.perf_counter() - t0)
    await conn.close()
    await settle(relay)
    return samples


async def idle_sessions(relay: Relay, n: int, result: Result) -> None:
    """Open n sessions (each proven end to end by one echo), measure the relay, close them."""
    await settle(relay)
    await asyncio.sleep(0.5)
    rss0, pss0, _ = memory_kib(relay.process.pid)
    conns: list[Conn] = []
    errors: Counter[str] = Counter()

    async def one() -> None:
        try:
            conn = await relay.open()
        except Exception as err:
            errors[type(err).__name__] += 1
            return
        conns.append(conn)
        try:
            await conn.send(b"ECHO\n")
            await conn.send(b"hi")
            got = b""
            while len(got) < 2:
                got += await asyncio.wait_for(conn.recv(), 10)
            result.sessions += 1
        except Exception as err:
            errors[type(err).__name__] += 1

    t0 = time.perf_counter()
    try:
        batch = 50
        for i in range(0, n, batch):
            await asyncio.gather(*(one() for _ in range(min(batch, n - i))))
        result.open_s = time.perf_counter() - t0
        await asyncio.sleep(1.0)
        rss1, pss1, procs = memory_kib(relay.process.pid)
        result.rss_kib, result.pss_kib, result.procs = rss1 - rss0, pss1 - pss0, procs
        result.base_rss_kib = rss0
        result.failed = sum(errors.values())
        result.errors = ", ".join(f"{k} x{v}" for k, v in errors.most_common())
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    await settle(relay, 30)
    with contextlib.suppress(OSError):  # why the relay refused, in its own words
        reasons = Counter(
            line.strip()
            for line in relay.process.log_path.read_text(errors="replace").splitlines()
            if "exception" in line.lower() or "error" in line.lower()
        )
        result.log_reason = "; ".join(f"{k!r} x{v}" for k, v in reasons.most_common(2))


async def run_all(relays: list[Relay], sizes: Sizes) -> dict[str, Result]:
    results = {r.label: Result() for r in relays}
    total = sizes.bulk_mb * MB // sizes.frame * sizes.frame
    for relay in relays:  # one unrecorded warm-up each
        await bulk_up(relay, 8 * sizes.frame, sizes.frame)
        await bulk_down(relay, 8 * sizes.frame)
    for i in range(sizes.repeats):
        order = relays if i % 2 == 0 else relays[::-1]
        for relay in order:
            progress.print(f"  bulk {i + 1}/{sizes.repeats}: {relay.label}")
            mbs, cpu = await bulk_up(relay, total, sizes.frame)
            results[relay.label].up.append(mbs)
            results[relay.label].cpu_up.append(cpu)
            mbs, cpu = await bulk_down(relay, total)
            results[relay.label].down.append(mbs)
            results[relay.label].cpu_down.append(cpu)
    for relay in relays:
        progress.print(f"  {sizes.pings} pings: {relay.label}")
        results[relay.label].rtt = await pings(relay, sizes.pings)
    for relay in relays:
        progress.print(f"  {sizes.sessions} idle sessions: {relay.label}")
        await idle_sessions(relay, sizes.sessions, results[relay.label])
    return results


# --- output ------------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def tables(results: dict[str, Result], sizes: Sizes) -> list[Table]:
    t1 = Table(
        title=f"1. Bulk throughput, {sizes.bulk_mb} MB each way in {sizes.frame // 1024} KiB frames "
        f"(median of {sizes.repeats})"
    )
    for col in ("relay", "up MB/s", "down MB/s", "up CPU s/GB", "down CPU s/GB", "runs up", "runs down"):
        t1.add_column(col, justify="left" if col == "relay" else "right")
    for label, r in results.items():
        t1.add_row(
            label,
            f"{med(r.up):.0f}",
            f"{med(r.down):.0f}",
            f"{med(r.cpu_up):.2f}",
            f"{med(r.cpu_down):.2f}",
            " ".join(f"{x:.0f}" for x in r.up),
            " ".join(f"{x:.0f}" for x in r.down),
            style="bold" if label.startswith("ours") else None,
        )
    t1.caption = (
        "up = client -> target (masked client frames), down = target -> client (VNC's main "
        "direction); CPU = the relay's processes only; client and target run in other processes"
    )

    t2 = Table(title=f"2. Round trip of 32-byte messages through the relay ({sizes.pings} after 50 warm-up)")
    for col in ("relay", "p50 µs", "p90 µs", "p99 µs", "max µs"):
        t2.add_column(col, justify="left" if col == "relay" else "right")
    for label, r in results.items():
        t2.add_row(
            label,
            us(pct(r.rtt, 0.5)),
            us(pct(r.rtt, 0.9)),
            us(pct(r.rtt, 0.99)),
            us(max(r.rtt)),
            style="bold" if label.startswith("ours") else None,
        )

    t3 = Table(title=f"3. Memory of the relay for {sizes.sessions} idle sessions")
    cols = ("relay", "sessions up", "processes", "RSS delta MiB", "PSS delta MiB", "KiB/session", "open s")
    for col in cols:
        t3.add_column(col, justify="left" if col == "relay" else "right")
    notes = []
    for label, r in results.items():
        t3.add_row(
            label,
            f"{r.sessions}/{sizes.sessions}",
            str(r.procs),
            mib(r.rss_kib),
            mib(r.pss_kib),
            f"{r.per_session_kib():.0f}",
            f"{r.open_s:.1f}",
            style="bold" if label.startswith("ours") else None,
        )
        if r.failed:
            notes.append(f"{label}: {r.failed} sessions failed ({r.errors}); its log: {r.log_reason or '-'}")
    t3.caption = "\n".join(
        [
            "delta over the idle relay after one session of each kind; RSS summed over the relay's "
            "processes counts shared pages once per process, PSS splits them; KiB/session from PSS",
            *notes,
        ]
    )
    return [t1, t2, t3]


def verdict(results: dict[str, Result], sessions: int) -> list[str]:
    ours = next(r for label, r in results.items() if label.startswith("ours"))
    peer = next(r for label, r in results.items() if label.startswith("websockify"))
    raw = next(r for label, r in results.items() if label.startswith("raw"))

    def x(a: float, b: float) -> str:
        return f"x{a / b:.2f}" if b else "-"

    checks = [
        ("throughput up", med(ours.up) > med(peer.up), f"{x(med(ours.up), med(peer.up))} websockify's MB/s"),
        ("throughput down", med(ours.down) > med(peer.down), f"{x(med(ours.down), med(peer.down))}"),
        (
            "CPU per GB relayed",
            med(ours.cpu_up) < med(peer.cpu_up) and med(ours.cpu_down) < med(peer.cpu_down),
            f"up {med(ours.cpu_up):.2f} vs {med(peer.cpu_up):.2f} s/GB, "
            f"down {med(ours.cpu_down):.2f} vs {med(peer.cpu_down):.2f}",
        ),
        (
            "memory per idle session (PSS)",
            ours.per_session_kib() < peer.per_session_kib(),
            f"{ours.per_session_kib():.0f} vs {peer.per_session_kib():.0f} KiB "
            f"({x(peer.per_session_kib(), ours.per_session_kib())} less)",
        ),
        (
            "idle sessions held",
            ours.sessions > peer.sessions or ours.sessions == peer.sessions == sessions,
            f"{ours.sessions} vs {peer.sessions} of {sessions}",
        ),
    ]
    lines = [f"{'BEATS' if ok else 'LOSES'} websockify on {what}: {detail}" for what, ok, detail in checks]
    up, down = med(ours.up) / med(raw.up), med(ours.down) / med(raw.down)
    lines.append(
        f"ours vs the raw TCP ceiling: up {up:.0%}, down {down:.0%}, "
        f"p50 RTT +{us(pct(ours.rtt, 0.5) - pct(raw.rtt, 0.5))} µs"
    )
    return lines


def summary(results: dict[str, Result], sizes: Sizes, quick: bool, env: str, total: float) -> list[str]:
    lines = [f"Proxy bench {datetime.now():%Y-%m-%d} ({'quick' if quick else 'full'}, {total:.0f} s): {env}."]
    for label, r in results.items():
        lines.append(
            f"- {label}: up {med(r.up):.0f} MB/s, down {med(r.down):.0f} MB/s "
            f"(CPU {med(r.cpu_up):.2f}/{med(r.cpu_down):.2f} s/GB); RTT p50 {us(pct(r.rtt, 0.5))} µs, "
            f"p99 {us(pct(r.rtt, 0.99))} µs; {r.sessions}/{sizes.sessions} idle sessions up: "
            f"+{mib(r.rss_kib)} MiB RSS, +{mib(r.pss_kib)} MiB PSS ({r.per_session_kib():.0f} KiB each, "
            f"{r.procs} processes), opened in {r.open_s:.1f} s"
            + (f"; failures: {r.log_reason or r.errors}" if r.failed else "")
            + "."
        )
    caveat = " (quick: one short run each, a smoke check, not a verdict)" if quick else ""
    lines += [f"- {line}{caveat}" for line in verdict(results, sizes.sessions)]
    return lines


# --- main --------------------------------------------------------------------------------


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    ap.add_argument("--serve-target", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-relay", type=int, nargs=2, metavar=("PORT", "TARGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    raise_nofile()
    if args.serve_target:
        asyncio.run(serve_target(args.serve_target))
        return 0
    if args.serve_relay:
        asyncio.run(serve_relay(*args.serve_relay))
        return 0

    sizes = QUICK if args.quick else FULL
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    t_start = time.perf_counter()
    env = (
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
        f"websockets {version('websockets')}, websockify {version('websockify')}, "
        f"numpy {version('numpy')}, loopback, RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    out.rule(f"multiconsole proxy bench ({'quick' if args.quick else 'full'})")
    out.print(f"{datetime.now():%Y-%m-%d %H:%M}  {env}")

    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="mc-proxy-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            me = [sys.executable, str(Path(__file__).resolve())]
            target_port = free_port()
            processes.append(Process("target", me + ["--serve-target", str(target_port)], target_port, tmp))

            from multiconsole.proxy.tickets import load_or_create_key

            key_file = tmp / "proxy.key"
            key = load_or_create_key(key_file)
            ours_port = free_port()
            ours = Process(
                "ours",
                [sys.executable, "-m", "multiconsole.cli", "proxy", "--listen", f"127.0.0.1:{ours_port}"]
                + ["--key-file", str(key_file), "--allowed-origin", ORIGIN],
                ours_port,
                tmp,
            )
            processes.append(ours)
            wsf_port = free_port()
            wsf = Process(
                "websockify",
                [str(VENV_BIN / "websockify"), f"127.0.0.1:{wsf_port}", f"127.0.0.1:{target_port}"],
                wsf_port,
                tmp,
            )
            processes.append(wsf)
            raw_port = free_port()
            raw = Process("raw", me + ["--serve-relay", str(raw_port), str(target_port)], raw_port, tmp)
            processes.append(raw)

            relays: list[Relay] = [Ours(ours, key, target_port), Websockify(wsf), Raw(raw)]
            results = asyncio.run(run_all(relays, sizes))
        finally:
            for p in reversed(processes):
                p.stop()

    for table in tables(results, sizes):
        out.print(table)
    total = time.perf_counter() - t_start
    env += f", at end {os.getloadavg()[0]:.1f}"
    out.rule("summary (paste into a note)")
    for line in summary(results, sizes, args.quick, env, total):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
