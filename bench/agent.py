"""Benchmark of the host agent against raw libvirt, both measured in the same run.

    .venv/bin/python bench/agent.py [--quick]

1. ``VM.create`` over JSON-RPC to a real agent (qemu:///system) until the VM is Up with
   both console ports reported, versus raw ``defineXML`` + ``create`` of the same XML
   and reading the ports back from the live XML.
2. ``Host.getAllVmStats`` for 10, 100 and 1,000 VMs on libvirt's test driver, versus
   raw ``listAllDomains`` + ``XMLDesc`` of the same domains in-process.
3. The same for real QEMU VMs on qemu:///system.

Every domain on qemu:///system is named ``bench-<pid>-...`` and only those are torn
down (in parallel) at the end, also on failure. Agent subprocesses die with this one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import libvirt
from agentproc import AgentProcess
from rich.console import Console
from rich.table import Table

from multiconsole.agent import domxml
from multiconsole.agent.vms import spice_tls_configured
from multiconsole.engine.broker import AgentCallError, AgentClient
from multiconsole.wire.vmcreate import parse_vm_params

ROOT = Path(__file__).resolve().parent.parent
QEMU_URI = "qemu:///system"
PREFIX = f"bench-{os.getpid()}-"
BATCH = 100
SETTLE = 3.0  # seconds between creating real VMs and timing their stats
TEST_NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>
  <memory>8388608</memory>
</node>"""

out = Console(width=None if sys.stdout.isatty() else 132)
progress = Console(stderr=True, style="dim")
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@dataclass(frozen=True)
class Sizes:
    creates: int
    test_vms: tuple[int, ...]
    real_vms: int
    calls: int


FULL = Sizes(creates=10, test_vms=(10, 100, 1000), real_vms=20, calls=10)
QUICK = Sizes(creates=3, test_vms=(10, 100), real_vms=5, calls=5)


# --- small helpers ----------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    if len(xs) < 2:
        return xs[0]
    return statistics.quantiles(xs, n=10, method="inclusive")[-1]


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b > 0 else "-"


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[list[float], Any]:
    """Run fn warmup + repeat times; the durations of the timed runs and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return samples, result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_params(name: str, vm_id: str, memory: int = 64) -> dict:
    """A disk-less VM with qxl video, SPICE and VNC, in the engine's devices form."""
    return {
        "vmId": vm_id,
        "vmName": name,
        "memSize": memory,
        "smp": 1,
        "devices": [
            {"type": "video", "device": "qxl", "specParams": {"vram": "32768", "heads": "1"}},
            {"type": "graphics", "device": "spice"},
            {"type": "graphics", "device": "vnc"},
        ],
    }


def both_ports(stats: dict) -> bool:
    """True when displayInfo reports a SPICE and a VNC port, both > 0."""
    ports = {}
    for entry in stats.get("displayInfo", []):
        with contextlib.suppress(TypeError, ValueError):
            ports[entry["type"]] = int(entry["port"])
    return ports.get("spice", 0) > 0 and ports.get("vnc", 0) > 0


def live_ports_ok(xml: str) -> bool:
    ports = {c.type.value: c.port for c in domxml.live_consoles(xml)}
    return ports.get("spice", 0) > 0 and ports.get("vnc", 0) > 0


# --- agent subprocesses -----------------------------------------------------------

_AGENTS: list[Agent] = []


class Agent(AgentProcess):
    """An agent on a free loopback port (TCG), waited for, with a JSON-RPC client."""

    def __init__(self, uri: str, log_dir: Path, label: str):
        super().__init__(uri, free_port(), log_dir / f"agent-{label}.log", virt_type="qemu")
        _AGENTS.append(self)
        self.t_ready = self.wait_ready()
        self.client = AgentClient(self.url, timeout=600)

    def call(self, method: str, **params: Any) -> Any:
        return self.client.call(method, **params)

    def create_many(self, specs: list[tuple[str, dict]]) -> list[dict]:
        return super().create_many(specs, BATCH)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        super().stop()
        if self in _AGENTS:
            _AGENTS.remove(self)


def stop_agents() -> None:
    for agent in list(_AGENTS):
        agent.stop()


# --- qemu:///system domains of this run --------------------------------------------


def teardown(prefix: str = PREFIX, workers: int = 8) -> tuple[int, float]:
    """Destroy and undefine every domain named `prefix...`, in parallel (1-2 s each)."""
    t0 = time.perf_counter()
    conn = libvirt.open(QEMU_URI)
    try:
        names = [d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    finally:
        conn.close()
    if not names:
        return 0, 0.0
    local = threading.local()
    opened: list[libvirt.virConnect] = []
    lock = threading.Lock()

    def one(name: str) -> None:
        # One connection per worker: libvirtd serves at most 5 calls at once per client.
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = libvirt.open(QEMU_URI)
            with lock:
                opened.append(c)
        try:
            dom = c.lookupByName(name)
        except libvirt.libvirtError:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()

    with ThreadPoolExecutor(min(workers, len(names))) as pool:
        list(pool.map(one, names))
    for c in opened:
        with contextlib.suppress(libvirt.libvirtError):
            c.close()
    return len(names), time.perf_counter() - t0


# --- 1. VM.create -------------------------------------------------------------------


@dataclass
class CreateResult:
    agent: list[float]
    raw: list[float]
    raw_define: list[float]
    raw_start: list[float]
    raw_xml: list[float]
    polled: int  # agent creates whose reply lacked a port
    teardown_n: int
    teardown_s: float


def bench_create(agent: Agent, conn: libvirt.virConnect, n: int) -> CreateResult:
    host = domxml.HostDisplay(
        virt_type="qemu",
        arch=conn.getInfo()[0],
        listen_address="127.0.0.1",
        spice_tls=spice_tls_configured(QEMU_URI),
    )
    res = CreateResult([], [], [], [], [], 0, 0, 0.0)

    def via_agent(name: str) -> tuple[float, bool]:
        vm_id = str(uuid.uuid4())
        params = vm_params(name, vm_id)
        t0 = time.perf_counter()
        stats = agent.call("VM.create", vmID=vm_id, vmParams=params)["vmList"]
        polled = False
        while not (stats["status"] == "Up" and both_ports(stats)):
            polled = True
            if time.perf_counter() - t0 > 60:
                raise RuntimeError(f"agent VM {name}: no ports after 60 s: {stats}")
            time.sleep(0.005)
            stats = agent.call("VM.getStats", vmID=vm_id)[0]
        return time.perf_counter() - t0, polled

    def via_libvirt(name: str) -> tuple[float, float, float, float]:
        vm_id = str(uuid.uuid4())
        params = vm_params(name, vm_id)
        xml = domxml.build(parse_vm_params(params, vm_id), params, host)
        t0 = time.perf_counter()
        dom = conn.defineXML(xml)
        t1 = time.perf_counter()
        dom.create()
        t2 = time.perf_counter()
        while not (dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING or time.perf_counter() - t0 > 60):
            time.sleep(0.005)
        while not live_ports_ok(dom.XMLDesc(0)):
            if time.perf_counter() - t0 > 60:
                raise RuntimeError(f"raw VM {name}: no ports after 60 s")
            time.sleep(0.005)
        t3 = time.perf_counter()
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2

    # One unrecorded warm-up of each, then alternate which goes first.
    via_agent(f"{PREFIX}warm-a")
    via_libvirt(f"{PREFIX}warm-r")
    for i in range(n):
        progress.print(f"  create {i + 1}/{n}")
        order = ("a", "r") if i % 2 == 0 else ("r", "a")
        for kind in order:
            if kind == "a":
                seconds, polled = via_agent(f"{PREFIX}a{i:02d}")
                res.agent.append(seconds)
                res.polled += polled
            else:
                total, define, start, xml = via_libvirt(f"{PREFIX}r{i:02d}")
                res.raw.append(total)
                res.raw_define.append(define)
                res.raw_start.append(start)
                res.raw_xml.append(xml)
    progress.print(f"  tearing down {2 * n + 2} VMs in parallel")
    res.teardown_n, res.teardown_s = teardown()
    return res


def create_table(r: CreateResult) -> Table:
    t = Table(title="1. VM.create until Up with both ports (qemu:///system, TCG, 64 MiB, no disk)")
    for col in ("path", "n", "median ms", "p90 ms", "min ms", "max ms"):
        t.add_column(col, justify="left" if col == "path" else "right")

    def row(label: str, xs: list[float], style: str | None = None) -> None:
        t.add_row(label, str(len(xs)), ms(median(xs)), ms(p90(xs)), ms(min(xs)), ms(max(xs)), style=style)

    row("agent: VM.create over JSON-RPC", r.agent, "bold")
    row("raw: defineXML + create + XMLDesc", r.raw, "bold")
    row("  raw: defineXML", r.raw_define)
    row("  raw: create", r.raw_start)
    row("  raw: until ports in live XML", r.raw_xml)
    t.add_row(
        "ratio agent / raw",
        "",
        ratio(median(r.agent), median(r.raw)),
        ratio(p90(r.agent), p90(r.raw)),
        "",
        "",
        style="bold cyan",
    )
    t.caption = (
        f"ports already in the VM.create reply: {len(r.agent) - r.polled}/{len(r.agent)}; "
        f"one warm-up of each not counted; VMs stay up, so later creates run beside up to "
        f"{2 * len(r.agent) + 1} guests; parallel teardown of {r.teardown_n} VMs: "
        f"{r.teardown_s:.1f} s"
    )
    return t


# --- 2./3. Host.getAllVmStats -------------------------------------------------------


@dataclass
class StatsRow:
    label: str
    ours: int  # VMs of this bench in the agent's reply
    vms: int  # VMs in the agent's reply
    listed: int  # domains listAllDomains returned to the baseline
    agent: list[float]
    raw: list[float]
    raw_same: list[float]  # the libvirt calls all_stats makes, without HTTP and parsing
    reply_bytes: int
    cpu_busy: float  # share of the host's CPU time busy while the agent was timed


def cpu_counters() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return values[3] + values[4], sum(values)


def raw_list_xml(conn: libvirt.virConnect) -> int:
    doms = conn.listAllDomains(0)
    for d in doms:
        d.XMLDesc(0)
    return len(doms)


def raw_agent_calls(conn: libvirt.virConnect) -> int:
    """What VmManager.all_stats asks libvirt per domain: XMLDesc twice, info, name, UUID."""
    doms = conn.listAllDomains(0)
    for d in doms:
        d.XMLDesc(0)
        d.UUIDString()
        d.XMLDesc(0)
        d.info()
        d.name()
    return len(doms)


def measure_stats(
    label: str, agent: Agent, conn: libvirt.virConnect, calls: int, expect: int, prefix: str
) -> StatsRow:
    idle0, total0 = cpu_counters()
    agent_s, stats = timed(lambda: agent.call("Host.getAllVmStats"), calls)
    idle1, total1 = cpu_counters()
    busy = 1 - (idle1 - idle0) / max(total1 - total0, 1)
    ours = [s for s in stats if s["vmName"].startswith(prefix)]
    if len(ours) != expect:
        raise RuntimeError(f"{label}: agent reported {len(ours)} of our VMs, expected {expect}")
    raw_s, listed = timed(lambda: raw_list_xml(conn), calls)
    same_s, _ = timed(lambda: raw_agent_calls(conn), calls)
    size = len(json.dumps({"jsonrpc": "2.0", "id": 1, "result": stats}))
    return StatsRow(label, len(ours), len(stats), listed, agent_s, raw_s, same_s, size, busy)


def vms_text(r: StatsRow) -> str:
    text = str(r.ours) if r.ours == r.vms else f"{r.ours} + {r.vms - r.ours} other"
    return text if r.vms == r.listed else f"{text} ({r.listed} on host)"


def stats_table(title: str, rows: list[StatsRow], note: str) -> Table:
    t = Table(title=title, caption=note)
    cols = (
        "VMs",
        "agent median ms",
        "agent p90 ms",
        "raw median ms",
        "raw p90 ms",
        "agent / raw",
        "agent µs/VM",
        "raw µs/VM",
        "raw, same calls ms",
        "reply KiB",
    )
    for col in cols:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            vms_text(r),
            ms(median(r.agent)),
            ms(p90(r.agent)),
            ms(median(r.raw)),
            ms(p90(r.raw)),
            ratio(median(r.agent), median(r.raw)),
            us(median(r.agent) / max(r.vms, 1)),
            us(median(r.raw) / max(r.listed, 1)),
            ms(median(r.raw_same)),
            f"{r.reply_bytes / 1024:.0f}",
        )
    return t


def bench_test_driver(sizes: tuple[int, ...], calls: int, tmp: Path) -> tuple[list[StatsRow], dict]:
    node = tmp / "node.xml"
    node.write_text(TEST_NODE_XML)
    uri = f"test://{node}"
    agent = Agent(uri, tmp, "test")
    conn = libvirt.open(uri)  # a private test driver in this process: the baseline's
    host = domxml.HostDisplay(virt_type="test")
    rows: list[StatsRow] = []
    info = {"create_s": 0.0, "created": 0, "noop": []}
    try:
        info["noop"], _ = timed(lambda: noop(agent), 20, warmup=3)
        have = 0
        for n in sizes:
            specs = []
            for i in range(have, n):
                vm_id = str(uuid.uuid4())
                specs.append((vm_id, vm_params(f"bench-t{i:04d}", vm_id)))
            progress.print(f"  test driver: creating {len(specs)} VMs (to {n})")
            t0 = time.perf_counter()
            agent.create_many(specs)
            info["create_s"] += time.perf_counter() - t0
            info["created"] += len(specs)
            for vm_id, params in specs:
                xml = domxml.build(parse_vm_params(params, vm_id), params, host)
                conn.defineXML(xml).create()
            have = n
            progress.print(f"  test driver: getAllVmStats x{calls} with {n} VMs")
            rows.append(measure_stats(f"test {n}", agent, conn, calls, n, "bench-t"))
    finally:
        conn.close()
        agent.stop()
    return rows, info


def noop(agent: Agent) -> None:
    """A JSON-RPC round trip with no work behind it: an unknown method."""
    try:
        agent.call("Bench.noop")
    except AgentCallError:
        return
    raise RuntimeError("Bench.noop unexpectedly exists")


def bench_real_stats(agent: Agent, conn: libvirt.virConnect, n: int, calls: int) -> dict:
    specs = []
    for i in range(n):
        vm_id = str(uuid.uuid4())
        specs.append((vm_id, vm_params(f"{PREFIX}s{i:02d}", vm_id)))
    progress.print(f"  qemu: creating {n} VMs in one JSON-RPC batch")
    t0 = time.perf_counter()
    replies = agent.create_many(specs)
    create_s = time.perf_counter() - t0
    missing = sum(not both_ports(r) for r in replies)
    time.sleep(SETTLE)  # let the last guests get through their BIOS
    progress.print(f"  qemu: getAllVmStats x{calls} with {n} VMs")
    row = measure_stats(f"qemu {n}", agent, conn, calls, n, PREFIX)
    progress.print(f"  tearing down {n} VMs in parallel")
    td_n, td_s = teardown()
    return {
        "row": row,
        "create_s": create_s,
        "missing_ports": missing,
        "teardown_n": td_n,
        "teardown_s": td_s,
    }


# --- main ---------------------------------------------------------------------------


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    sys.stdout.reconfigure(line_buffering=True)  # tables and progress in order when piped
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    t_start = time.perf_counter()
    conn = libvirt.open(QEMU_URI)
    stale = [
        d.name()
        for d in conn.listAllDomains(0)
        if d.name().startswith("bench-") and not d.name().startswith(PREFIX)
    ]
    if stale:
        progress.print(f"note: bench- domains of other runs are left alone: {', '.join(stale)}")
    others = len(conn.listAllDomains(0))
    env = (
        f"libvirt {libvirt.getVersion() // 1_000_000}.{libvirt.getVersion() // 1000 % 1000}, "
        f"QEMU {conn.getVersion() // 1_000_000}.{conn.getVersion() // 1000 % 1000}, "
        f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, virt type qemu (TCG)"
    )
    out.rule(f"multiconsole agent bench ({'quick' if args.quick else 'full'})")
    out.print(f"{datetime.now():%Y-%m-%d %H:%M}  {env}; {others} other domains on {QEMU_URI}")

    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            progress.print("1. VM.create: agent vs raw libvirt")
            agent = Agent(QEMU_URI, tmp, "qemu")
            qemu_noop, _ = timed(lambda: noop(agent), 20, warmup=3)
            create = bench_create(agent, conn, sizes.creates)
            out.print(create_table(create))

            progress.print("2. getAllVmStats on the test driver")
            test_rows, test_info = bench_test_driver(sizes.test_vms, sizes.calls, tmp)
            out.print(
                stats_table(
                    "2. Host.getAllVmStats, test driver (agent subprocess vs in-process "
                    "listAllDomains + XMLDesc)",
                    test_rows,
                    f"median of {sizes.calls} calls after one warm-up; "
                    f"{test_info['created']} VM.create in batches of {BATCH}: "
                    f"{test_info['create_s']:.1f} s "
                    f"({test_info['created'] / test_info['create_s']:.0f}/s); "
                    "'raw, same calls' = the libvirt calls all_stats makes, "
                    "without HTTP or parsing",
                )
            )

            progress.print("3. getAllVmStats with real QEMU VMs")
            real = bench_real_stats(agent, conn, sizes.real_vms, sizes.calls)
            out.print(
                stats_table(
                    f"3. Host.getAllVmStats, {sizes.real_vms} real QEMU VMs on {QEMU_URI}",
                    [real["row"]],
                    f"median of {sizes.calls} calls after one warm-up; "
                    f"{sizes.real_vms} VM.create in one batch: {real['create_s']:.1f} s "
                    f"(serial in the agent), then {SETTLE:.0f} s to settle; host CPU busy while "
                    f"timing the agent: {real['row'].cpu_busy:.0%}; replies without both ports: "
                    f"{real['missing_ports']}; parallel teardown of {real['teardown_n']} VMs: "
                    f"{real['teardown_s']:.1f} s",
                )
            )
            noop_t = Table(title="JSON-RPC round trip with no work (unknown method), 20 calls")
            for col in ("agent", "median ms", "p90 ms"):
                noop_t.add_column(col, justify="right")
            noop_t.add_row("qemu:///system", ms(median(qemu_noop)), ms(p90(qemu_noop)))
            noop_t.add_row("test driver", ms(median(test_info["noop"])), ms(p90(test_info["noop"])))
            out.print(noop_t)
            agent.stop()
        finally:
            stop_agents()
            n, seconds = teardown()
            if n:
                progress.print(f"cleanup: tore down {n} leftover {PREFIX}* VMs in {seconds:.1f} s")
            time.sleep(0.5)  # a create the agent had in flight may land after the first pass
            teardown()
            conn.close()

    total = time.perf_counter() - t_start
    summary = summary_lines(args.quick, env, create, test_rows, real, qemu_noop, total)
    out.rule("summary (paste into a note)")
    for line in summary:
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


def summary_lines(
    quick: bool,
    env: str,
    create: CreateResult,
    test_rows: list[StatsRow],
    real: dict,
    noop_s: list[float],
    total: float,
) -> list[str]:
    r = real["row"]
    lines = [
        f"Agent bench {datetime.now():%Y-%m-%d} ({'quick' if quick else 'full'}, {total:.0f} s): {env}.",
        f"- VM.create -> Up with SPICE+VNC ports (n={len(create.agent)}): agent "
        f"{ms(median(create.agent))} ms median / {ms(p90(create.agent))} ms p90 vs raw "
        f"defineXML+create {ms(median(create.raw))} / {ms(p90(create.raw))} ms "
        f"({ratio(median(create.agent), median(create.raw))} median, "
        f"{ratio(p90(create.agent), p90(create.raw))} p90); ports in the create reply "
        f"{len(create.agent) - create.polled}/{len(create.agent)}.",
        "- Host.getAllVmStats, test driver: "
        + "; ".join(
            f"{t.vms} VMs {ms(median(t.agent))} ms vs raw {ms(median(t.raw))} ms "
            f"({ratio(median(t.agent), median(t.raw))}, "
            f"{us(median(t.agent) / t.vms)} vs {us(median(t.raw) / t.listed)} µs/VM)"
            for t in test_rows
        )
        + ".",
        f"- Host.getAllVmStats, {vms_text(r)} real QEMU VMs: {ms(median(r.agent))} ms vs raw "
        f"{ms(median(r.raw))} ms ({ratio(median(r.agent), median(r.raw))}, "
        f"{us(median(r.agent) / max(r.vms, 1))} vs {us(median(r.raw) / max(r.listed, 1))} µs/VM; "
        f"host CPU {r.cpu_busy:.0%} busy; "
        f"the agent's own libvirt calls alone: {ms(median(r.raw_same))} ms).",
        f"- Fixed JSON-RPC round trip (no work): {ms(median(noop_s))} ms median.",
    ]
    return lines


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_agents()
