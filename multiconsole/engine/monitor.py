"""Host monitoring: poll every host's VM stats, follow its event stream, move states along.

Polls each Up (or NonResponsive) host every `interval` seconds with Host.getAllVmStats,
the first time as soon as it starts (what the database says of a host may be old);
an event from a host's stream (a VM stopped, a console connected) polls that host at
once. After `max_failures` failed polls in a row a host is NonResponsive and its VMs
Unknown; the next good poll brings both back.

A host's stream is followed from its first good poll on, and re-followed at once when it
drops (short backoff), asking for the events missed (Last-Event-ID). The poll also
corrects console sessions whose events were lost anyway (consoles.reconcile_sessions).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload, sessionmaker

from multiconsole.engine import consoles, service
from multiconsole.engine.broker import AgentCallError, AgentClient
from multiconsole.engine.db import Host, Vm, now, released, utc
from multiconsole.engine.hosts import Agents
from multiconsole.wire.exits import ExitReason, VmExit

log = logging.getLogger(__name__)
POLLED = ("Up", "NonResponsive")
CAPS_EVERY = 10  # cycles between capability refreshes (free memory for scheduling)


class Monitor:
    def __init__(
        self,
        sessions: sessionmaker,
        interval: float = 3.0,
        max_failures: int = 3,
        timeout: float = 5.0,
        workers: int = 8,
        follow_events: bool = True,
        agents: Agents | None = None,
    ):
        """`agents`: the monitor's own clients of the agents (TLS set up), closed by stop()."""
        self.sessions = sessions
        self.interval = interval
        self.max_failures = max_failures
        self.timeout = timeout
        self.workers = workers
        self.follow_events = follow_events
        self.cycles = 0
        self.listeners: list = []  # called with (host_id, event) for every agent event
        self.agents = agents or Agents(timeout=timeout)
        self._followers: dict[str, _Follower] = {}
        self._wake = threading.Event()
        self._woken: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- running -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for f in self._followers.values():
            f.stop()
        if self._thread:
            self._thread.join(10)
        self.agents.close()

    def poke(self, host_id: str | None = None) -> None:
        """Poll soon: one host, or all of them."""
        with self._lock:
            self._woken.add(host_id or "*")
        self._wake.set()

    def _run(self) -> None:
        last_full = -float("inf")  # the first cycle at once
        while not self._stop.is_set():
            timeout = max(0.0, last_full + self.interval - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                woken, self._woken = self._woken, set()
            try:
                if "*" in woken or time.monotonic() >= last_full + self.interval:
                    last_full = time.monotonic()
                    self.cycle()
                else:
                    for host_id in woken:
                        self.poll(host_id)
            except Exception:
                log.exception("monitor cycle failed")

    # --- one cycle --------------------------------------------------------------------

    def cycle(self) -> int:
        """Poll every monitored host once; returns how many were polled."""
        with self.sessions() as session:
            host_ids = session.scalars(select(Host.id).where(Host.status.in_(POLLED))).all()
        self.cycles += 1
        if len(host_ids) <= 1:
            for h in host_ids:
                self.poll(h)
        else:
            with ThreadPoolExecutor(min(self.workers, len(host_ids))) as pool:
                list(pool.map(self.poll, host_ids))
        if self.follow_events:
            self._sync_followers(set(host_ids))
        return len(host_ids)

    def _client(self, host: Host) -> AgentClient:
        return self.agents.for_host(host)

    def poll(self, host_id: str) -> None:
        with self.sessions() as session:
            host = session.get(Host, host_id)
            if host is None or host.status not in POLLED:
                return
            asked_at = now()
            caps = None
            try:
                client = self._client(host)
                with released(session):  # a hung host holds no connection of the monitor's
                    stats = client.call("Host.getAllVmStats")
                    if self.cycles % CAPS_EVERY == 0 or host.status != "Up":
                        caps = client.call("Host.getCapabilities")
            except (httpx.HTTPError, AgentCallError, ValueError) as err:
                self._failed(session, host, err)
                session.commit()
                return
            if caps is not None:
                host.capabilities = caps
            if host.status != "Up":
                log.warning("host responds again host=%s", host.name)
            host.status, host.failures, host.last_seen = "Up", 0, now()
            self._apply(session, host, stats, client, asked_at)
            session.commit()
            if self.follow_events:
                self._follow(host)

    def _failed(self, session, host: Host, err: Exception) -> None:
        host.failures += 1
        if host.failures >= self.max_failures and host.status != "NonResponsive":
            log.warning("host not responding host=%s error=%s", host.name, type(err).__name__)
            host.status = "NonResponsive"
        if host.status == "NonResponsive":
            for vm in session.scalars(select(Vm).where(Vm.host_id == host.id)):
                if vm.status in service.ON_HOST:
                    vm.status = "Unknown"

    def _apply(self, session, host: Host, stats: list[dict], client: AgentClient, asked_at) -> None:
        by_id = {s.get("vmId"): s for s in stats if isinstance(s, dict)}
        vms = session.scalars(
            select(Vm)
            .where(or_(Vm.host_id == host.id, Vm.id.in_(list(by_id))))
            .options(selectinload(Vm.consoles), selectinload(Vm.cluster))
        ).all()
        for vm in vms:
            if vm.acted_at is not None and utc(vm.acted_at) >= asked_at:
                continue  # started or stopped while these stats were on their way
            s = by_id.get(vm.id)
            if s is None:
                if vm.host_id == host.id and vm.status in service.ON_HOST:
                    service.mark_down(
                        vm, "no longer running on its host", VmExit.of(ExitReason.LIBVIRT_DOMAIN_MISSING)
                    )
                continue
            if s.get("status") == "Down":
                # The guest powered off or QEMU died: let the host forget it, the VM is Down.
                try:
                    client.call("VM.destroy", vmID=vm.id)
                except (httpx.HTTPError, AgentCallError):
                    pass
                why = VmExit.from_stats(s)
                service.mark_down(
                    vm, f"crashed: {why.message}" if why and why.crashed else "powered off", why
                )
                continue
            if vm.host_id not in (None, host.id):
                continue  # another host claims it; leave it to that host's poll
            if vm.host_id != host.id:
                vm.host_id = host.id
                vm.host = host
            service.apply_vm_stats(vm, host, s)
            consoles.reconcile_sessions(session, vm, s, asked_at)

    # --- event streams -------------------------------------------------------------------

    def _sync_followers(self, host_ids: set[str]) -> None:
        with self._lock:
            for host_id in list(self._followers):
                if host_id not in host_ids:
                    self._followers.pop(host_id).stop()
        with self.sessions() as session:
            for host in session.scalars(select(Host).where(Host.id.in_(list(host_ids)))):
                self._follow(host)

    def _follow(self, host: Host) -> None:
        """Follow the host's event stream, unless that is already done (on the same terms)."""
        if self._stop.is_set():
            return
        with self._lock:
            follower = self._followers.get(host.id)
            if follower is not None and follower.key == _follow_key(host):
                return
            if follower is not None:  # the host's address or certificate changed
                follower.stop()
            try:
                client = self.agents.for_host(host)
            except httpx.HTTPError:
                return
            self._followers[host.id] = _Follower(
                host.id, client, self._on_event, _follow_key(host), self.poke
            )

    def _on_event(self, host_id: str, event: dict) -> None:
        for listener in self.listeners:
            try:
                listener(host_id, event)
            except Exception:
                log.exception("event listener failed")
        self.poke(host_id)


def _follow_key(host: Host) -> tuple:
    return (host.address, host.port, host.cert_fingerprint)


class _Follower:
    """Reads one agent's server-sent events on a thread, reconnecting when it drops: at once,
    then after a backoff growing to BACKOFF_MAX while the agent does not answer; with the id
    of the last event read, so that the agent sends what was missed meanwhile."""

    BACKOFF_FIRST, BACKOFF_MAX = 0.1, 2.0

    def __init__(self, host_id: str, client: AgentClient, on_event, key: tuple = (), recheck=None):
        """`recheck(host_id)`: read the host's state again (events may have been lost)."""
        self.host_id, self.client, self.on_event, self.key = host_id, client, on_event, key
        self.recheck = recheck or (lambda _host_id: None)
        self.last_id: str | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._run, name=f"events-{host_id[:8]}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = self.BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                with self.client.events(self.last_id) as reply:
                    backoff = self.BACKOFF_FIRST
                    # Connected (again): what happened while nobody listened, read from the stats.
                    self.recheck(self.host_id)
                    self._read(reply)
            except httpx.HTTPError:
                pass
            self._stop.wait(backoff)
            backoff = min(self.BACKOFF_MAX, backoff * 2)

    def _read(self, reply: httpx.Response) -> None:
        event_id, data = None, None
        for line in reply.iter_lines():
            if self._stop.is_set():
                return
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "":  # end of one event
                if data is not None:
                    self._dispatch(event_id, data)
                event_id, data = None, None

    def _dispatch(self, event_id: str | None, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if event_id:
            self.last_id = event_id
        if isinstance(event, dict):
            if event.get("event") == "reset":
                log.info("host %s lost events: %s", self.host_id, event.get("reason"))
                self.recheck(self.host_id)
            self.on_event(self.host_id, event)
