"""Opening consoles: one-time tickets, remote-viewer files, who holds a console, the audit log.

A console is held by the user whose ticket a client authenticated with (learned from the
host's graphics events). Another user gets a ticket for it only by taking it over, which
needs the console-reconnect role or the VM's "allow console reconnect".
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session, object_session, selectinload, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from multiconsole.domain.devices import GraphicsType
from multiconsole.domain.display import DisplayConfig, multi_console
from multiconsole.engine import permissions
from multiconsole.engine.broker import AgentCallError
from multiconsole.engine.db import AuditEntry, Host, User, Vm, VmConsole, now, released, utc
from multiconsole.engine.errors import Conflict, EngineError, HostUnreachable, NotFound
from multiconsole.engine.hosts import Agents
from multiconsole.engine.service import get_vm
from multiconsole.wire.errors import ErrorCode

log = logging.getLogger(__name__)

TICKET_TTL_DEFAULT = 120
TICKET_TTL_MAX = 7200
# States in which a console can be opened (tickets set, .vv files served).
CONSOLE_STATES = ("Up", "Paused", "PoweringUp")
AUDIT_EVENTS = (
    "console ticket issued",
    "console connected",
    "console disconnected",
    "console taken over",
    "VM crashed",
    "keys typed",
)


def new_console_password() -> str:
    """8 characters (VNC's limit) from 6 random bytes."""
    return secrets.token_urlsafe(6)


def audit(
    session: Session,
    event: str,
    user: str | None,
    vm: Vm | None,
    protocol: str | None = None,
    client_address: str | None = None,
    detail: str = "",
    at: datetime | None = None,
) -> None:
    """One audit entry; `at` is when it happened, if that was before now."""
    session.add(
        AuditEntry(
            time=at or now(),
            event=event,
            user=user,
            vm_id=vm.id if vm else None,
            vm_name=vm.name if vm else None,
            protocol=protocol,
            client_address=client_address,
            detail=detail[:1024],
        )
    )


def _protocol(protocol: str) -> GraphicsType:
    try:
        return GraphicsType(protocol)
    except ValueError:
        raise NotFound("protocol", f"no console protocol {protocol!r}: spice or vnc") from None


def running_console(session: Session, key: str, protocol: str) -> tuple[Vm, VmConsole]:
    vm = get_vm(session, key)
    gtype = _protocol(protocol)
    if vm.status not in CONSOLE_STATES:
        raise Conflict("status", f"VM {vm.name!r} is {vm.status}: consoles open only while it runs")
    console = next((c for c in vm.consoles if c.protocol == gtype.value), None)
    if console is None:
        configured = [g.value for g in DisplayConfig.from_json(vm.display).graphics]
        if gtype.value in configured:
            raise Conflict("protocol", f"the {gtype.value} console of VM {vm.name!r} has no address yet")
        raise NotFound("protocol", f"VM {vm.name!r} has no {gtype.value} console")
    return vm, console


def _policy(vm: Vm, console: VmConsole, user: User, take_over: bool, requested: str | None) -> str:
    """What happens to a client already connected: refuse, or the SPICE 'connected' action."""
    holder = console.holder
    if holder and holder != user.name:
        allowed = DisplayConfig.from_json(vm.display).allow_reconnect or permissions.may_take_over(
            object_session(vm), user, vm
        )
        since = utc(console.connected_at)
        held = (
            f"the {console.protocol} console of VM {vm.name!r} is in use by {holder}"
            f" from {console.client_address or 'an unknown address'}"
            f"{f' since {since:%H:%M:%S} UTC' if since else ''}"
        )
        if not allowed:
            raise EngineError(
                "take_over",
                f"{held}; taking it over needs console_reconnect on the VM "
                "or the VM's allow-console-reconnect setting",
                403,
            )
        if not take_over:
            raise Conflict("take_over", f"{held}; ask again with take_over to disconnect them")
        return "disconnect"
    if requested:
        return requested
    # Nobody (that we know of) is connected: "fail" makes QEMU refuse the ticket if
    # somebody is after all, rather than silently disconnecting them.
    return "disconnect" if holder == user.name else "fail"


def issue_ticket(
    session: Session,
    agents: Agents,
    key: str,
    protocol: str,
    user: User,
    ttl: int = TICKET_TTL_DEFAULT,
    existing_connection: str | None = None,
    take_over: bool = False,
) -> dict[str, Any]:
    """A one-time password on one console of a running VM, valid for `ttl` seconds."""
    if not 1 <= ttl <= TICKET_TTL_MAX:
        raise EngineError("ttl", f"must be 1..{TICKET_TTL_MAX} seconds", 422)
    vm, console = running_console(session, key, protocol)
    previous_holder = console.holder
    action = _policy(vm, console, user, take_over, existing_connection)
    host = session.get(Host, vm.host_id)
    password = new_console_password()
    legacy = not multi_console(vm.cluster.compat_level) or not (host.capabilities or {}).get(
        "graphicsDevices"
    )
    client = agents.for_host(host)
    # Stamped before the host acts: its disconnect events come after the takeover.
    at = now()
    with released(session):  # no connection held while the host sets the ticket
        try:
            if legacy:
                # Old hosts know only setTicket, on the VM's one console.
                client.call(
                    "VM.setTicket",
                    vmID=vm.id,
                    password=password,
                    ttl=ttl,
                    existingConnAction=action,
                    params={"userName": user.name, "userId": user.id},
                )
            else:
                client.call(
                    "VM.updateDevice",
                    vmID=vm.id,
                    params={
                        "deviceType": "graphics",
                        "graphicsType": console.protocol,
                        "password": password,
                        "ttl": ttl,
                        "existingConnAction": action,
                        "disconnectAction": DisplayConfig.from_json(vm.display).disconnect_action.value,
                        "params": {"userName": user.name, "userId": user.id},
                    },
                )
        except AgentCallError as err:
            if err.code == ErrorCode.CONSOLE_IN_USE:
                raise Conflict(
                    "take_over",
                    f"a client is connected to the {console.protocol} console of "
                    f"VM {vm.name!r}; ask again with take_over to disconnect it",
                ) from None
            raise EngineError(
                "host", f"host {host.name} could not set the ticket: {err.message}", 409
            ) from None
        except httpx.HTTPError as err:
            raise HostUnreachable("host", f"host {host.name} did not answer: {type(err).__name__}") from None
    console.ticket_user = user.name
    if previous_holder and previous_holder != user.name:
        audit(
            session,
            "console taken over",
            user.name,
            vm,
            console.protocol,
            console.client_address,
            f"from {previous_holder}",
            at=at,
        )
        # The host disconnects them (SPICE); their "disconnected" entry follows from its event.
    audit(
        session,
        "console ticket issued",
        user.name,
        vm,
        console.protocol,
        detail=f"valid {ttl} s, existing client: {action}",
        at=at,
    )
    expires = now() + timedelta(seconds=ttl)
    return {
        **_tls_details(agents, host, vm, console),
        "vm": vm.name,
        "vm_id": vm.id,
        "protocol": console.protocol,
        "password": password,
        "expires": expires,
        "ttl": ttl,
        "address": console.address,
        "port": console.port,
        "tls_port": console.tls_port,
    }


def _tls_details(agents: Agents, host: Host, vm: Vm, console: VmConsole) -> dict[str, Any]:
    """What a SPICE client needs to check the host over TLS: the host's SPICE certificate
    subject and the engine's CA (which signed it), and the channels the VM wants secure."""
    if console.protocol != GraphicsType.SPICE.value or console.tls_port is None:
        return {"host_subject": None, "ca": None, "secure_channels": []}
    ca = None
    if host.spice_subject and agents.tls is not None:
        try:
            ca = agents.tls.ca_file.read_text()
        except OSError as err:
            log.warning("cannot read the CA for console files: %s", err)
    return {
        "host_subject": host.spice_subject if ca else None,
        "ca": ca,
        "secure_channels": list(DisplayConfig.from_json(vm.display).spice_secure_channels),
    }


# --- sessions from the hosts' graphics events ------------------------------------------


def on_agent_event(sessions: sessionmaker, host_id: str, event: dict) -> None:
    """Follow who is connected to which console, and write it to the audit log."""
    if event.get("event") != "graphics":
        return
    phase, proto, vm_id = event.get("phase"), event.get("consoleType"), event.get("vmId")
    if phase not in ("initialize", "disconnect") or not vm_id:
        return
    with sessions() as session:
        vm = session.scalar(select(Vm).where(Vm.id == vm_id).options(selectinload(Vm.consoles)))
        if vm is None or vm.host_id != host_id:
            return
        console = next((c for c in vm.consoles if c.protocol == proto), None)
        if console is None:
            return
        ip = event.get("clientIp") or None
        # When it happened: an event may come late (replayed after a reconnect).
        at = _agent_time(event.get("time")) or now()
        newcomer = console.ticket_user and console.holder not in (None, console.ticket_user)
        if phase == "initialize" and (console.holder is None or newcomer):
            _connected(session, vm, console, ip, at)
        elif phase == "disconnect" and console.holder is not None:
            remaining = [c for c in event.get("clients", []) if c.get("type") == proto]
            if not remaining:
                _disconnected(session, vm, console, at)
        session.commit()


def _claim(session: Session, console: VmConsole, **values: Any) -> bool:
    """Change who holds a console only if nobody changed it since this session read it: the
    graphics event and the monitor's poll may record the same session at the same moment, and
    only one of them may write it (and its audit entry)."""
    seen = console.holder
    done = session.execute(
        update(VmConsole)
        .where(
            VmConsole.vm_id == console.vm_id,
            VmConsole.protocol == console.protocol,
            VmConsole.holder.is_(None) if seen is None else VmConsole.holder == seen,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        session.refresh(console)  # the other writer's version
        return False
    for key, value in values.items():
        set_committed_value(console, key, value)
    return True


def _connected(session: Session, vm: Vm, console: VmConsole, ip: str | None, at: datetime, detail="") -> None:
    holder = console.ticket_user or "unknown"
    if _claim(session, console, holder=holder, client_address=ip, connected_at=at, session_at=now()):
        audit(session, "console connected", holder, vm, console.protocol, ip, detail, at=at)


def _disconnected(session: Session, vm: Vm, console: VmConsole, at: datetime | None, detail="") -> None:
    holder, address = console.holder, console.client_address
    if _claim(session, console, holder=None, client_address=None, connected_at=None, session_at=now()):
        audit(session, "console disconnected", holder, vm, console.protocol, address, detail, at=at)


def _agent_time(value: object) -> datetime | None:
    """An agent's epoch seconds as a time, or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# The detail of a session change the poll found before (or instead of) its graphics event.
POLLED = "found by polling the host"


def reconcile_sessions(session: Session, vm: Vm, stats: dict, asked_at: datetime) -> None:
    """Correct who holds the VM's consoles from the clients its host's stats list
    (`consoleClients`), for sessions whose events were lost (an agent restarted, a stream
    reconnected). Sessions changed after the stats were asked for are newer news: kept."""
    clients = stats.get("consoleClients")
    if not isinstance(clients, list):
        return  # an older agent: it does not say
    known_since = _agent_time(stats.get("consoleClientsSince"))
    for console in vm.consoles:
        if console.session_at is not None and utc(console.session_at) >= asked_at:
            continue
        mine = [c for c in clients if isinstance(c, dict) and c.get("type") == console.protocol]
        if mine and console.holder is None:
            first = min(mine, key=lambda c: c.get("since") or 0)
            ip = first.get("ipAddress") if isinstance(first.get("ipAddress"), str) else None
            at = _agent_time(first.get("since")) or now()
            _connected(session, vm, console, ip, at, POLLED)
        elif not mine and console.holder is not None:
            # The host knows only clients that connected since it started: of an older
            # session it cannot say it ended.
            connected = utc(console.connected_at)
            if known_since is not None and connected is not None and connected >= known_since:
                _disconnected(session, vm, console, None, POLLED)


def audit_entries(
    session: Session,
    vm: str | None = None,
    user: str | None = None,
    event: str | None = None,
    protocol: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    scope: ColumnElement[bool] | None = None,
) -> list[AuditEntry]:
    """Entries matching every filter given, the newest `limit` of them in time order;
    `scope` limits them to what one user may read (permissions.Grants.audit_filter)."""
    q = select(AuditEntry)
    if scope is not None:
        q = q.where(scope)
    if vm:
        q = q.where((AuditEntry.vm_id == vm) | (AuditEntry.vm_name == vm))
    if user:
        q = q.where(AuditEntry.user == user)
    if event:
        q = q.where(AuditEntry.event == event)
    if protocol:
        q = q.where(AuditEntry.protocol == protocol)
    if since:
        q = q.where(AuditEntry.time >= since)
    if until:
        q = q.where(AuditEntry.time <= until)
    rows = session.scalars(q.order_by(AuditEntry.time.desc(), AuditEntry.id.desc()).limit(limit)).all()
    return list(reversed(rows))
