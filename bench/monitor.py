"""Benchmark of the engine's monitor: one polling cycle over many simulated hosts.

    .venv/bin/python bench/monitor.py [--quick]

N simulated hosts are N ``multiconsole agent --insecure`` subprocesses, each on its own
libvirt test driver (``test:///<tmp>/hostK.xml``, 1 TiB of memory, no domains), started
in parallel. M VMs per host with SPICE + VNC are created as rows through
``service.create_vm`` (PostgreSQL, the largest scenario), then on the agents through
JSON-RPC batches of ``VM.create`` with ``builder.vm_create`` parameters; the monitor's
first cycle adopts them (Down, no host -> Up on their host). Smaller scenarios get copies
of the same rows (same ids) in their own database, so every scenario polls the same VMs.

Measured for each scenario, with ``Monitor(sessions, follow_events=False)`` and its
defaults (8 workers, 5 s timeout): the wall time of one full ``monitor.cycle()`` (median
of 5 after the adoption cycle and one warm-up), the engine process's CPU per cycle
(``time.process_time``), the CPU of the PostgreSQL backends serving it and of the agents
(``/proc/<pid>/stat``), side by side with the 3 s polling interval; and the same cycle on
SQLite (a temp file) as a second baseline.

PostgreSQL: a fresh database ``multiconsole_bench_<pid>`` (one schema per scenario),
dropped at the end. Agent subprocesses die with this one (atexit, signals, PDEATHSIG).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import os
import platform
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from agentproc import AgentProcess
from rich.console import Console
from rich.table import Table
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from multiconsole.domain.display import DisplayConfig
from multiconsole.engine import builder, db, service
from multiconsole.engine.broker import AgentClient
from multiconsole.engine.db import Cluster, Host, Vm
from multiconsole.engine.hosts import Agents
from multiconsole.engine.monitor import CAPS_EVERY, Monitor

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql://multiconsole:multiconsole@127.0.0.1/multiconsole_test"
PG_DB = f"multiconsole_bench_{os.getpid()}"
PG_URL = f"postgresql+psycopg://multiconsole:multiconsole@127.0.0.1/{PG_DB}"
BATCH = 100  # VM.create calls per JSON-RPC batch
CYCLES = 5  # measured cycles per scenario, after the adoption cycle and one warm-up
CLUSTER = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST_NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>
  <memory>1073741824</memory>
</node>"""  # 1 TiB: scheduling never refuses

out = Console(width=None if sys.stdout.isatty() else 132)
progress = Console(stderr=True, style="dim")


@dataclass(frozen=True)
class Scenario:
    db: str  # "pg" or "sqlite"
    hosts: int
    vms: int  # per host

    @property
    def label(self) -> str:
        name = "PostgreSQL" if self.db == "pg" else "SQLite"
        return f"{name} {self.hosts}x{self.vms}"

    @property
    def short(self) -> str:
        return f"{'PG' if self.db == 'pg' else 'SQLite'} {self.hosts}x{self.vms}"

    @property
    def key(self) -> str:
        return f"{self.db}_{self.hosts}x{self.vms}"


FULL = (Scenario("pg", 10, 100), Scenario("sqlite", 10, 100), Scenario("pg", 50, 100))
QUICK = (Scenario("pg", 5, 20), Scenario("sqlite", 5, 20))


# --- small helpers ----------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ms(seconds: float) -> str:
    value = round(seconds * 1000, 6)
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def pct(x: float) -> str:
    return f"{x:.1%}" if x < 0.1 else f"{x:.0%}"


def ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b > 0 else "-"


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def machine_counters() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return values[3] + values[4], sum(values)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all bound at once, so no duplicates)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- agent subprocesses -----------------------------------------------------------

_AGENTS: list[Agent] = []
_AGENTS_LOCK = threading.Lock()


class Agent(AgentProcess):
    """An agent on a test driver of its own; started, not yet waited for."""

    def __init__(self, index: int, port: int, tmp: Path):
        self.index, self.name = index, f"host{index:02d}"
        node = tmp / f"{self.name}.xml"
        node.write_text(HOST_NODE_XML)
        super().__init__(f"test://{node}", port, tmp / f"agent-{self.name}.log")
        with _AGENTS_LOCK:
            _AGENTS.append(self)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def create_many(self, specs: list[tuple[str, dict]]) -> None:
        super().create_many(specs, BATCH)


def start_agents(n: int, tmp: Path, timeout: float = 180) -> tuple[list[Agent], float, float]:
    """n agents started at once; returns them, the wall time until all answer /health, and
    the slowest single agent's start."""
    t0 = time.perf_counter()
    agents = [Agent(i, port, tmp) for i, port in enumerate(free_ports(n))]
    pending = {a.index: a for a in agents}
    slowest = 0.0
    while pending:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{len(pending)} agents did not answer /health in {timeout:.0f} s")
        for a in list(pending.values()):
            if a.ready():
                slowest = max(slowest, time.perf_counter() - a.t_start)
                del pending[a.index]
        if pending:
            time.sleep(0.2)
    return agents, time.perf_counter() - t0, slowest


def stop_agents() -> None:
    """Terminate every agent first, then reap them: 50 agents stop in about a second."""
    with _AGENTS_LOCK:
        agents = list(_AGENTS)
        _AGENTS.clear()
    for a in agents:
        a.terminate()
    for a in agents:
        with contextlib.suppress(Exception):
            a.reap()


# --- PostgreSQL ---------------------------------------------------------------------

_PG_CREATED = False


def pg_admin() -> psycopg.Connection:
    return psycopg.connect(PG_ADMIN_URL, autocommit=True)


def create_database() -> str:
    global _PG_CREATED
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{PG_DB}"')
        _PG_CREATED = True
        return conn.execute("SHOW server_version").fetchone()[0]


def drop_database() -> None:
    global _PG_CREATED
    if not _PG_CREATED:
        return
    with contextlib.suppress(psycopg.Error), pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        _PG_CREATED = False


def scenario_url(s: Scenario, tmp: Path) -> str:
    if s.db == "sqlite":
        return f"sqlite:///{tmp / (s.key + '.db')}"
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_DB}", autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA bench_{s.key}")
    return f"{PG_URL}?options=-csearch_path%3Dbench_{s.key}"


class PgBackends:
    """CPU of the PostgreSQL backends connected to the bench database (not this watcher's)."""

    def __init__(self) -> None:
        self.conn = pg_admin()

    def snapshot(self) -> dict[int, float]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (PG_DB,)
        ).fetchall()
        return {pid: proc_cpu(pid) for (pid,) in rows}

    @staticmethod
    def delta(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())

    def close(self) -> None:
        self.conn.close()


# --- engine side: database contents -------------------------------------------------


@dataclass
class VmSpec:
    id: str
    name: str
    host: int  # index of the agent that runs it
    os_type: str
    memory_mib: int
    vcpus: int
    display: dict


@dataclass
class Statements:
    """SQL statements the engine sends (executemany counted per row), by verb."""

    counts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def _count(_conn, _cursor, statement, parameters, _context, executemany):
            verb = statement.lstrip().split(None, 1)[0].upper()
            n = len(parameters) if executemany and parameters else 1
            with self.lock:
                self.counts[verb] += n

    def take(self) -> Counter:
        with self.lock:
            counts, self.counts = self.counts, Counter()
        return counts


def setup_hosts(sessions, agents: list[Agent]) -> str:
    """A cluster and the hosts, through the service layer (each agent answers
    Host.getCapabilities); returns the cluster's id."""
    clients = Agents()
    try:
        with sessions() as session:
            cluster = service.create_cluster(session, CLUSTER)
            for a in agents:
                service.add_host(session, clients, a.name, "127.0.0.1", CLUSTER, port=a.port, insecure=True)
            session.commit()
            return cluster.id
    finally:
        clients.close()


def create_vm_rows(sessions, cluster_id: str, hosts: int, per_host: int) -> list[VmSpec]:
    """M rows per host through service.create_vm: SPICE + VNC (qxl), 256 MiB, Down.
    One session per host, 4 at a time (the database round trips overlap)."""
    done = [0]
    lock = threading.Lock()

    def one_host(k: int) -> list[VmSpec]:
        specs = []
        with sessions() as session:
            session.get(Cluster, cluster_id)  # in the identity map: create_vm finds it by id
            for j in range(per_host):
                vm = service.create_vm(
                    session,
                    {"name": f"h{k:02d}-vm{j:03d}", "cluster": cluster_id, "consoles": ["spice", "vnc"]},
                )
                specs.append(VmSpec(vm.id, vm.name, k, vm.os_type, vm.memory_mib, vm.vcpus, vm.display))
            session.commit()
        with lock:
            done[0] += len(specs)
            progress.print(f"  service.create_vm: {done[0]}/{hosts * per_host}", end="\r")
        return specs

    with ThreadPoolExecutor(4) as pool:
        specs = [v for host_specs in pool.map(one_host, range(hosts)) for v in host_specs]
    progress.print()
    return specs


def copy_vm_rows(sessions, cluster_id: str, specs: list[VmSpec]) -> None:
    """The same VMs (same ids and devices) in another database, as create_vm left them."""
    with sessions() as session:
        session.add_all(
            Vm(
                id=s.id,
                name=s.name,
                cluster_id=cluster_id,
                os_type=s.os_type,
                memory_mib=s.memory_mib,
                vcpus=s.vcpus,
                display=s.display,
                status="Down",
            )
            for s in specs
        )
        session.commit()


def create_on_agents(agents: list[Agent], specs: list[VmSpec], compat_level: str) -> float:
    """VM.create of every spec on its agent, in batches, a few agents at a time."""
    by_host: dict[int, list[tuple[str, dict]]] = {}
    for s in specs:
        params = builder.vm_create(
            vm_id=s.id,
            name=s.name,
            memory_mib=s.memory_mib,
            vcpus=s.vcpus,
            display=DisplayConfig.from_json(s.display),
            cluster_level=compat_level,
        )
        by_host.setdefault(s.host, []).append((s.id, params))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: agents[k].create_many(by_host[k]), sorted(by_host)))
    return time.perf_counter() - t0


def db_state(sessions, hosts: list[Agent]) -> dict[str, int]:
    """Counts that tell whether the monitor did its job."""
    names = {a.name for a in hosts}
    with sessions() as session:
        rows = session.execute(select(Vm.name, Vm.status, Host.name).join(Host, Vm.host_id == Host.id)).all()
        host_rows = session.execute(select(Host.status, Host.failures)).all()
        total = session.scalar(select(func.count()).select_from(Vm))
        consoles = session.scalar(select(func.count()).select_from(db.VmConsole))
    right_host = sum(1 for vm, st, h in rows if st == "Up" and h == f"host{vm[1:3]}" and h in names)
    return {
        "vms": total,
        "up_on_right_host": right_host,
        "hosts_up": sum(1 for st, _f in host_rows if st == "Up"),
        "failures": sum(f for _st, f in host_rows),
        "consoles": consoles,
    }


# --- the monitor, instrumented -----------------------------------------------------


class _TimedClient:
    def __init__(self, client: AgentClient, record):
        self._client, self._record = client, record

    def call(self, method: str, **params: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._client.call(method, **params)
        finally:
            self._record(method, time.perf_counter() - t0)


class TimedMonitor(Monitor):
    """The engine's Monitor, unchanged, with the time of each poll, each agent call and
    each _apply recorded (a perf_counter pair each: negligible)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.samples: dict[str, list[float]] = {}
        self._samples_lock = threading.Lock()

    def _record(self, what: str, seconds: float) -> None:
        with self._samples_lock:
            self.samples.setdefault(what, []).append(seconds)

    def take(self) -> dict[str, list[float]]:
        with self._samples_lock:
            samples, self.samples = self.samples, {}
        return samples

    def _client(self, host: Host) -> AgentClient:
        return _TimedClient(super()._client(host), self._record)  # type: ignore[return-value]

    # Signatures passed through as they are: the monitor's internals may change.
    def poll(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return super().poll(*args, **kwargs)
        finally:
            self._record("poll", time.perf_counter() - t0)

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return super()._apply(*args, **kwargs)
        finally:
            self._record("apply", time.perf_counter() - t0)


@dataclass
class Cycle:
    wall: float
    engine_cpu: float
    db_cpu: float | None  # PostgreSQL backends; None for SQLite (in the engine process)
    agents_cpu: float
    machine_busy: float  # share of all CPUs busy during the cycle
    machine_cpu: float  # CPU seconds all processes used during the cycle
    polled: int
    statements: Counter
    samples: dict[str, list[float]]


def one_cycle(monitor: TimedMonitor, agents: list[Agent], pg: PgBackends | None, stmts: Statements) -> Cycle:
    monitor.take()
    stmts.take()
    pg0 = pg.snapshot() if pg else {}
    agents0 = [a.cpu() for a in agents]
    idle0, total0 = machine_counters()
    cpu0, t0 = time.process_time(), time.perf_counter()
    polled = monitor.cycle()
    t1, cpu1 = time.perf_counter(), time.process_time()
    idle1, total1 = machine_counters()
    agents_cpu = sum(a.cpu() for a in agents) - sum(agents0)
    db_cpu = PgBackends.delta(pg0, pg.snapshot()) if pg else None
    busy = 1 - (idle1 - idle0) / max(total1 - total0, 1)
    busy_s = ((total1 - total0) - (idle1 - idle0)) / CLK_TCK
    return Cycle(t1 - t0, cpu1 - cpu0, db_cpu, agents_cpu, busy, busy_s, polled, stmts.take(), monitor.take())


@dataclass
class Result:
    """One scenario: its database and monitor while it runs, then its figures."""

    scenario: Scenario
    rows_s: float  # putting the hosts and VM rows in the database
    rows_how: str
    engine: Engine
    sessions: Any
    hosts: list[Agent]
    monitor: TimedMonitor
    stmts: Statements
    before: dict[str, int] = field(default_factory=dict)
    adoption: Cycle | None = None
    after_adoption: dict[str, int] = field(default_factory=dict)
    cycles: list[Cycle] = field(default_factory=list)
    caps: Cycle | None = None  # a cycle that also refreshes capabilities (every CAPS_EVERY-th)
    after: dict[str, int] = field(default_factory=dict)

    @property
    def interval(self) -> float:
        return self.monitor.interval

    def med(self, attr: str) -> float:
        return median([getattr(c, attr) for c in self.cycles])

    def sample_med(self, what: str) -> float:
        xs = [x for c in self.cycles for x in c.samples.get(what, [])]
        return median(xs) if xs else 0.0

    def db_cpu(self) -> float:
        return median([c.db_cpu for c in self.cycles]) if self.scenario.db == "pg" else 0.0

    def others_cpu(self) -> float:
        """CPU of other processes on the machine during the cycles (other work, PostgreSQL's
        background processes, the kernel)."""
        return median(
            [max(0.0, c.machine_cpu - c.engine_cpu - (c.db_cpu or 0.0) - c.agents_cpu) for c in self.cycles]
        )

    def per_cycle_statements(self) -> float:
        return median([sum(c.statements.values()) for c in self.cycles])

    def verbs(self) -> str:
        c = self.cycles[len(self.cycles) // 2].statements
        return " ".join(f"{v.lower()} {n}" for v, n in c.most_common())


def prepare(
    s: Scenario,
    agents: list[Agent],
    url: str,
    pg: PgBackends | None,
    specs: list[VmSpec],
    sessions=None,
    engine: Engine | None = None,
    rows_s: float = 0.0,
) -> Result:
    """A scenario up to its measured cycles: its database (without `sessions`: a fresh one
    with the hosts and copies of the rows of `specs` for them), the adoption cycle and one
    warm-up cycle."""
    hosts = agents[: s.hosts]
    rows_how = "create_vm"
    if sessions is None:
        engine = db.make_engine(url)
        db.migrate(engine)
        sessions = db.sessions(engine)
        t0 = time.perf_counter()
        cluster_id = setup_hosts(sessions, hosts)
        copy_vm_rows(sessions, cluster_id, [v for v in specs if v.host < s.hosts])
        rows_how = "copied"
        rows_s = time.perf_counter() - t0
    stmts = Statements()
    stmts.attach(engine)
    r = Result(
        s, rows_s, rows_how, engine, sessions, hosts, TimedMonitor(sessions, follow_events=False), stmts
    )
    r.before = db_state(sessions, hosts)
    progress.print(f"  {s.label}: adoption cycle and a warm-up")
    r.adoption = one_cycle(r.monitor, hosts, pg, stmts)
    r.after_adoption = db_state(sessions, hosts)
    one_cycle(r.monitor, hosts, pg, stmts)
    return r


def measure(results: list[Result], pg: PgBackends | None) -> None:
    """CYCLES rounds; in each, one cycle of every scenario, in a rotating order, so that
    whatever else loads the machine meanwhile weighs on all of them alike."""
    gc.collect()
    for i in range(CYCLES):
        progress.print(f"  round {i + 1}/{CYCLES}: one cycle of each scenario")
        k = i % len(results)
        for r in results[k:] + results[:k]:
            if (r.monitor.cycles + 1) % CAPS_EVERY == 0:
                r.monitor.cycles += 1  # keep the refresh of capabilities out of the series
            r.cycles.append(one_cycle(r.monitor, r.hosts, pg, r.stmts))


def finish(r: Result, pg: PgBackends | None) -> None:
    """One cycle with the capabilities refresh, the final state; the database let go."""
    try:
        r.monitor.cycles = CAPS_EVERY - 1 + CAPS_EVERY * (r.monitor.cycles // CAPS_EVERY)
        r.caps = one_cycle(r.monitor, r.hosts, pg, r.stmts)
        r.after = db_state(r.sessions, r.hosts)
    finally:
        release(r)


def release(r: Result) -> None:
    r.monitor.stop()
    r.engine.dispose()


# --- tables ---------------------------------------------------------------------------


def setup_table(results: list[Result], info: dict) -> Table:
    t = Table(
        title="1. Set-up, and the adoption cycle (VMs Down with no host -> Up on their host)",
        caption=(
            f"{info['agents']} agents started at once: all answering /health after "
            f"{info['start_s']:.1f} s (slowest single agent {info['slowest_s']:.1f} s); "
            f"{info['vms']} VM.create in JSON-RPC batches of {BATCH}, 4 agents at a time: "
            f"{info['create_s']:.1f} s ({info['vms'] / info['create_s']:.0f}/s); rows s = migrated "
            "database -> cluster, hosts (service.add_host) and VM rows"
        ),
    )
    cols = (
        "scenario",
        "VM rows by",
        "rows s",
        "adoption cycle ms",
        "engine CPU ms",
        "SQL stmts",
        "VMs Up on their host",
        "hosts Up",
        "failed polls",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right", no_wrap=col == "scenario")
    for r in results:
        a = r.adoption
        n = r.scenario.hosts * r.scenario.vms
        t.add_row(
            r.scenario.short,
            r.rows_how,
            f"{r.rows_s:.1f}",
            ms(a.wall),
            ms(a.engine_cpu),
            str(sum(a.statements.values())),
            f"{r.after_adoption['up_on_right_host']}/{n}",
            f"{r.after_adoption['hosts_up']}/{r.scenario.hosts}",
            str(r.after_adoption["failures"]),
        )
    return t


def _ratio_label(pg_base: Result, base: Result) -> str:
    return f"PG / SQLite {base.scenario.hosts}x{base.scenario.vms}"


def time_table(results: list[Result], base: Result | None, pg_base: Result | None) -> Table:
    interval = results[0].interval
    t = Table(
        title=f"2. Wall time of one full monitor.cycle(), beside the {interval:.0f} s polling interval",
        caption=(
            f"median of {CYCLES} cycles after the adoption cycle and one warm-up, the scenarios' cycles "
            f"interleaved (rounds in rotating order); Monitor defaults "
            f"(8 workers, 5 s timeout), follow_events=False. Per poll (median over all polls of those "
            f"cycles): poll = Monitor.poll of one host, RPC = its Host.getAllVmStats round trip, "
            f"_apply = matching the stats to the VM rows. caps = one cycle that also calls "
            f"Host.getCapabilities (every {CAPS_EVERY}th cycle; kept out of the median)"
        ),
    )
    cols = (
        "scenario",
        "cycle ms",
        "min-max ms",
        "of interval",
        "ms/host",
        "poll ms",
        "RPC ms",
        "_apply ms",
        "SQL/cycle",
        "caps ms",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right", no_wrap=col == "scenario")
    t.add_row("polling interval", f"{interval * 1000:.0f}", "", "100%", "", "", "", "", "", "", style="dim")
    for r in results:
        walls = [c.wall for c in r.cycles]
        t.add_row(
            r.scenario.short,
            ms(median(walls)),
            f"{ms(min(walls))}-{ms(max(walls))}",
            pct(median(walls) / interval),
            ms(median(walls) / r.scenario.hosts),
            ms(r.sample_med("poll")),
            ms(r.sample_med("Host.getAllVmStats")),
            ms(r.sample_med("apply")),
            f"{r.per_cycle_statements():.0f}",
            ms(r.caps.wall),
            style="bold" if r.scenario.db == "pg" else None,
        )
    if base is not None and pg_base is not None:
        t.add_row(
            _ratio_label(pg_base, base),
            ratio(pg_base.med("wall"), base.med("wall")),
            "",
            "",
            "",
            ratio(pg_base.sample_med("poll"), base.sample_med("poll")),
            ratio(pg_base.sample_med("Host.getAllVmStats"), base.sample_med("Host.getAllVmStats")),
            ratio(pg_base.sample_med("apply"), base.sample_med("apply")),
            "",
            ratio(pg_base.caps.wall, base.caps.wall),
            style="bold cyan",
        )
    return t


def cpu_table(results: list[Result], base: Result | None, pg_base: Result | None, cores: int) -> Table:
    interval = results[0].interval
    t = Table(
        title=f"3. CPU per cycle (engine, database, agents), beside the {interval:.0f} s interval",
        caption=(
            "median of the same cycles. engine = this process (time.process_time, all threads); "
            "PG = the PostgreSQL backends connected to the bench database (/proc/<pid>/stat, 10 ms "
            "ticks, like the agents'), SQLite "
            "runs inside the engine; agents = utime+stime of the polled agent processes, summed; "
            "'/ intvl' = CPU per cycle / interval (one core = 100%); others = CPU of everything else "
            f"on the machine during the cycles; busy = share of all {cores} CPUs busy during the cycles"
        ),
    )
    cols = (
        "scenario",
        "engine ms",
        "/ intvl",
        "PG ms",
        "engine+PG / intvl",
        "agents ms",
        "/ intvl",
        "ms/agent",
        f"agents {CYCLES} cycles s",
        "others ms",
        "busy",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right", no_wrap=col == "scenario")
    t.add_row(
        f"1 core x {interval:.0f} s",
        f"{interval * 1000:.0f}",
        "100%",
        "",
        "100%",
        "",
        "",
        "",
        "",
        "",
        "",
        style="dim",
    )
    for r in results:
        engine, agents, db_cpu = r.med("engine_cpu"), r.med("agents_cpu"), r.db_cpu()
        t.add_row(
            r.scenario.short,
            ms(engine),
            pct(engine / interval),
            ms(db_cpu) if r.scenario.db == "pg" else "in engine",
            pct((engine + db_cpu) / interval),
            ms(agents),
            pct(agents / interval),
            ms(agents / r.scenario.hosts),
            f"{sum(c.agents_cpu for c in r.cycles):.2f}",
            ms(r.others_cpu()),
            pct(r.med("machine_busy")),
            style="bold" if r.scenario.db == "pg" else None,
        )
    if base is not None and pg_base is not None:
        t.add_row(
            _ratio_label(pg_base, base),
            ratio(pg_base.med("engine_cpu"), base.med("engine_cpu")),
            "",
            "",
            ratio(pg_base.med("engine_cpu") + pg_base.db_cpu(), base.med("engine_cpu")),
            ratio(pg_base.med("agents_cpu"), base.med("agents_cpu")),
            "",
            "",
            "",
            "",
            "",
            style="bold cyan",
        )
    return t


# --- main ---------------------------------------------------------------------------


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def cleanup() -> None:
    stop_agents()
    drop_database()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {QUICK[0].hosts}x{QUICK[0].vms}")
    args = ap.parse_args()
    scenarios = QUICK if args.quick else FULL
    sys.stdout.reconfigure(line_buffering=True)  # tables and progress in order when piped
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)

    t_start = time.perf_counter()
    n_agents = max(s.hosts for s in scenarios)
    per_host = max(s.vms for s in scenarios)
    master = max((s for s in scenarios if s.db == "pg"), key=lambda s: s.hosts)
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    pg_version = create_database()
    env = (
        f"{cores} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.python_implementation()} {platform.python_version()}, PostgreSQL "
        f"{pg_version.split()[0]}, SQLite {sqlite3.sqlite_version}, libvirt test driver"
    )
    out.rule(f"multiconsole monitor bench ({'quick' if args.quick else 'full'})")
    out.print(
        f"{datetime.now():%Y-%m-%d %H:%M}  {env}; load average before the run "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )

    results: list[Result] = []
    info: dict[str, Any] = {}
    pg = None
    with tempfile.TemporaryDirectory(prefix="mc-bench-monitor-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            progress.print(f"starting {n_agents} agents in parallel")
            agents, info["start_s"], info["slowest_s"] = start_agents(n_agents, tmp)
            info["agents"] = n_agents
            pg = PgBackends()

            # The largest PostgreSQL scenario's rows come from service.create_vm; the VMs
            # are then created on the agents with the same ids, for every scenario to poll.
            progress.print(f"{master.label}: migrating, adding {master.hosts} hosts, creating VM rows")
            m_url = scenario_url(master, tmp)
            m_engine = db.make_engine(m_url)
            db.migrate(m_engine)
            m_sessions = db.sessions(m_engine)
            t0 = time.perf_counter()
            cluster_id = setup_hosts(m_sessions, agents[: master.hosts])
            specs = create_vm_rows(m_sessions, cluster_id, master.hosts, per_host)
            m_rows_s = time.perf_counter() - t0
            with m_sessions() as session:
                level = session.scalar(select(Cluster.compat_level))
            progress.print(f"creating {len(specs)} VMs on {n_agents} agents (VM.create batches of {BATCH})")
            info["create_s"] = create_on_agents(agents, specs, level)
            info["vms"] = len(specs)

            for s in scenarios:
                if s == master:
                    r = prepare(s, agents, m_url, pg, specs, m_sessions, m_engine, rows_s=m_rows_s)
                else:
                    r = prepare(s, agents, scenario_url(s, tmp), pg, specs)
                results.append(r)
            progress.print(f"measuring: {CYCLES} rounds")
            measure(results, pg)
            for r in results:
                finish(r, pg)
        finally:
            for r in results:
                with contextlib.suppress(Exception):
                    release(r)
            if pg is not None:
                pg.close()
            stop_agents()
            drop_database()

    base = next((r for r in results if r.scenario.db == "sqlite"), None)
    pg_base = (
        next(
            (r for r in results if r.scenario.db == "pg" and r.scenario.hosts == base.scenario.hosts),
            None,
        )
        if base
        else None
    )
    out.print(setup_table(results, info))
    out.print(time_table(results, base, pg_base))
    out.print(cpu_table(results, base, pg_base, cores))
    problems = check(results)
    for p in problems:
        out.print(f"[bold red]check:[/] {p}")

    total = time.perf_counter() - t_start
    out.rule("summary (paste into a note)")
    for line in summary_lines(args.quick, env, results, info, base, pg_base, total, problems):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    return 1 if problems else 0


def check(results: list[Result]) -> list[str]:
    """What would make the figures meaningless: VMs not adopted, hosts failing, polls missed."""
    problems = []
    for r in results:
        n = r.scenario.hosts * r.scenario.vms
        for label, state in (("after the adoption cycle", r.after_adoption), ("at the end", r.after)):
            if state["up_on_right_host"] != n:
                problems.append(
                    f"{r.scenario.label} {label}: {state['up_on_right_host']}/{n} VMs Up on their host"
                )
            if state["hosts_up"] != r.scenario.hosts or state["failures"]:
                problems.append(
                    f"{r.scenario.label} {label}: {state['hosts_up']}/{r.scenario.hosts} hosts Up, "
                    f"{state['failures']} failed polls"
                )
        if r.before["up_on_right_host"]:
            problems.append(f"{r.scenario.label}: {r.before['up_on_right_host']} VMs Up before any cycle")
        if any(c.polled != r.scenario.hosts for c in [*r.cycles, r.adoption, r.caps]):
            problems.append(f"{r.scenario.label}: a cycle did not poll every host")
    return problems


def summary_lines(
    quick: bool,
    env: str,
    results: list[Result],
    info: dict,
    base: Result | None,
    pg_base: Result | None,
    total: float,
    problems: list[str],
) -> list[str]:
    interval = results[0].interval
    lines = [
        f"Monitor bench {datetime.now():%Y-%m-%d} ({'quick' if quick else 'full'}, {total:.0f} s): {env}; "
        f"Monitor defaults (8 workers), follow_events=False, interval {interval:.0f} s.",
    ]
    for r in results:
        engine = r.med("engine_cpu")
        db_text = f", PostgreSQL backends {ms(r.db_cpu())} ms" if r.scenario.db == "pg" else ""
        wall, agents = r.med("wall"), r.med("agents_cpu")
        rpc, apply = r.sample_med("Host.getAllVmStats"), r.sample_med("apply")
        lines.append(
            f"- {r.scenario.label} ({r.scenario.hosts * r.scenario.vms} VMs): cycle "
            f"{ms(wall)} ms median ({pct(wall / interval)} of the interval; "
            f"{ms(wall / r.scenario.hosts)} ms/host; per poll getAllVmStats {ms(rpc)} ms, "
            f"_apply {ms(apply)} ms); engine CPU {ms(engine)} ms/cycle "
            f"({pct(engine / interval)} of a core){db_text}; agents {ms(agents)} ms/cycle in all "
            f"({pct(agents / interval)} of a core); {r.per_cycle_statements():.0f} SQL "
            f"statements/cycle; adoption cycle {ms(r.adoption.wall)} ms; machine "
            f"{pct(r.med('machine_busy'))} busy, other processes {ms(r.others_cpu())} ms/cycle."
        )
    if base is not None and pg_base is not None:
        pg_db = pg_base.db_cpu()
        lines.append(
            f"- PostgreSQL vs SQLite at {base.scenario.hosts}x{base.scenario.vms}: cycle "
            f"{ratio(pg_base.med('wall'), base.med('wall'))}, engine CPU "
            f"{ratio(pg_base.med('engine_cpu'), base.med('engine_cpu'))}, engine + PostgreSQL backends vs "
            f"engine with SQLite {ratio(pg_base.med('engine_cpu') + pg_db, base.med('engine_cpu'))}."
        )
    big = max(results, key=lambda r: (r.scenario.db == "pg", r.scenario.hosts))
    wall_per_host = big.med("wall") / big.scenario.hosts
    cpu_per_host = (big.med("engine_cpu") + big.db_cpu()) / big.scenario.hosts
    lines.append(
        f"- Set-up: {info['agents']} agents in parallel in {info['start_s']:.1f} s; {info['vms']} VM.create "
        f"in batches of {BATCH}: {info['create_s']:.1f} s. Linear extrapolation from {big.scenario.label}: "
        f"the cycle fills the {interval:.0f} s interval at ~{interval / wall_per_host:.0f} hosts of "
        f"{big.scenario.vms} VMs (agents on the same CPUs), the engine's CPU (+ database) one core at "
        f"~{interval / cpu_per_host:.0f} hosts."
    )
    if problems:
        lines.append(f"- CHECKS FAILED: {'; '.join(problems)}")
    return lines


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        cleanup()
