"""What the engine does: clusters, hosts, templates and VMs, their rules and lifecycle.

Every entry point (REST API, CLI through it, web UI, oVirt API) calls these functions
with a database session; they check the rules, talk to agents, and raise EngineError.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from multiconsole.domain.devices import GraphicsType, VideoModel
from multiconsole.domain.display import (
    ARCHES,
    CLUSTER_LEVELS,
    OS_TYPES,
    DisconnectAction,
    DisplayConfig,
    multi_console,
    violations,
)
from multiconsole.domain.errors import FieldError
from multiconsole.engine import builder, drives, transfer
from multiconsole.engine.broker import AgentCallError, CertificateMismatch
from multiconsole.engine.db import (
    AuditEntry,
    Cluster,
    EnrollmentToken,
    Host,
    Image,
    Template,
    Vm,
    VmConsole,
    now,
    release,
    released,
)
from multiconsole.engine.errors import Conflict, EngineError, HostUnreachable, NotFound
from multiconsole.engine.hosts import Agents
from multiconsole.wire.exits import ExitReason, VmExit
from multiconsole.wire.stats import consoles_from_stats

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9.:\-\[\]]{0,254}$")
# States in which a host holds the VM: its memory is used there, the host cannot be removed.
ON_HOST = ("PoweringUp", "Up", "Paused", "PoweringDown", "Unknown", "Migrating")
# How long a start waits for a NonResponsive host being re-checked to be Up again.
HOST_RECHECK_WAIT = 5.0
# Agent status -> engine status.
AGENT_STATUS = {
    "Up": "Up",
    "Paused": "Paused",
    "Powering down": "PoweringDown",
    "Suspended": "Suspended",
    "Down": "Down",
    "Unknown": "Unknown",
}


def check_name(name: str, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise EngineError(
            field,
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            422,
        )
    return check_not_id(name, field)


def check_not_id(name: str, field: str = "name") -> str:
    """Objects are found by id, else by name (`_one`): a name shaped like an id (a UUID)
    could stand for another object, so no name may have that shape."""
    try:
        uuid.UUID(name)
    except ValueError:
        return name
    raise EngineError(field, "must not look like an id (a UUID): objects are looked up by id or name", 422)


def _one(session: Session, model, key: str, what: str):
    """Find by id, else by name."""
    obj = session.get(model, key)
    if obj is None:
        obj = session.scalar(select(model).where(model.name == key))
    if obj is None:
        raise NotFound(what.lower(), f"no {what} {key!r}")
    return obj


def _unique(session: Session, model, name: str, what: str, except_id: str | None = None) -> None:
    other = session.scalar(select(model).where(model.name == name))
    if other is not None and other.id != except_id:
        raise Conflict("name", f"a {what} named {name!r} already exists")


# --- clusters ----------------------------------------------------------------------


def create_cluster(
    session: Session,
    name: str,
    compat_level: str = CLUSTER_LEVELS[-1],
    arch: str = "x86_64",
    console_address: str | None = None,
    description: str = "",
    shared_dir: str | None = None,
) -> Cluster:
    check_name(name)
    _unique(session, Cluster, name, "cluster")
    if compat_level not in CLUSTER_LEVELS:
        raise EngineError("compat_level", f"must be one of {', '.join(CLUSTER_LEVELS)}", 422)
    if arch not in ARCHES:
        raise EngineError("arch", f"must be one of {', '.join(ARCHES)}", 422)
    _check_address(console_address, "console_address")
    cluster = Cluster(
        name=name,
        compat_level=compat_level,
        arch=arch,
        console_address=console_address,
        description=description,
        shared_dir=check_shared_dir(shared_dir),
    )
    session.add(cluster)
    session.flush()
    return cluster


def _check_address(address: str | None, field: str) -> None:
    if address is not None and not ADDRESS_RE.fullmatch(address):
        raise EngineError(field, f"{address!r} is not a host name or IP address", 422)


def check_shared_dir(path: str | None) -> str | None:
    """An absolute path without '..' (each host's agent makes disks under <path>/disks)."""
    if path in (None, ""):
        return None
    if not path.startswith("/") or ".." in path.split("/") or "\x00" in path:
        raise EngineError("shared_dir", "must be an absolute path without '..'", 422)
    return path.rstrip("/") or "/"


def get_cluster(session: Session, key: str) -> Cluster:
    return _one(session, Cluster, key, "cluster")


def delete_cluster(session: Session, key: str) -> None:
    cluster = get_cluster(session, key)
    if session.scalar(select(Vm.id).where(Vm.cluster_id == cluster.id).limit(1)):
        raise Conflict("cluster", f"cluster {cluster.name!r} still has VMs")
    if session.scalar(select(Host.id).where(Host.cluster_id == cluster.id).limit(1)):
        raise Conflict("cluster", f"cluster {cluster.name!r} still has hosts")
    session.delete(cluster)


# --- hosts -------------------------------------------------------------------------


def add_host(
    session: Session,
    agents: Agents,
    name: str,
    address: str,
    cluster: str,
    port: int = 54321,
    console_address: str | None = None,
    insecure: bool = False,
) -> Host:
    """Register a host: its agent must answer, and it must speak the cluster's level.

    The host must have enrolled (a certificate from the engine's CA for this name): the
    engine then reaches its agent over TLS and accepts only that certificate. `insecure`:
    plain HTTP, for an agent run with --insecure."""
    check_name(name)
    _check_address(address, "address")
    _check_address(console_address, "console_address")
    if not 0 < port < 65536:
        raise EngineError("port", "must be 1..65535", 422)
    _unique(session, Host, name, "host")
    c = get_cluster(session, cluster)
    if session.scalar(select(Host).where(Host.address == address, Host.port == port)):
        raise Conflict("address", f"a host at {address}:{port} is already registered")
    certificate = fingerprint = spice_subject = None
    if not insecure:
        enrolment = host_enrolment(session, name)
        if enrolment is None:
            raise EngineError(
                "name",
                f"host {name!r} has not enrolled: make a token (multiconsole host token {name}), run "
                "`multiconsole agent enroll` on the host, then add it; or add it as insecure if its "
                "agent runs with --insecure",
                422,
            )
        certificate, fingerprint = enrolment.certificate, enrolment.cert_fingerprint
        spice_subject = enrolment.spice_subject  # the .vv's host-subject for its SPICE TLS
    with released(session):
        try:
            caps = agents.for_address(address, port, fingerprint, name).call("Host.getCapabilities")
        except CertificateMismatch as err:
            raise EngineError("address", str(err), 422) from None
        except (httpx.HTTPError, AgentCallError, ValueError) as err:
            url = agents.url(address, port, tls=fingerprint is not None)
            raise EngineError("address", f"no agent answers at {url}: {_short(err)}", 422) from None
    if not host_supports_level(caps, c.compat_level):
        levels = caps.get("clusterLevels") or ["3.3 (legacy display protocol only)"]
        raise EngineError(
            "cluster", f"the host supports cluster levels {', '.join(levels)}, not {c.compat_level}", 422
        )
    if caps.get("arch") and caps["arch"] != c.arch:
        raise EngineError("cluster", f"the host is {caps['arch']}, the cluster is {c.arch}", 422)
    host = Host(
        name=name,
        address=address,
        port=port,
        cluster_id=c.id,
        status="Up",
        capabilities=caps,
        console_address=console_address,
        last_seen=now(),
        certificate=certificate,
        cert_fingerprint=fingerprint,
        spice_subject=spice_subject,
    )
    session.add(host)
    session.flush()
    return host


def host_enrolment(session: Session, name: str) -> EnrollmentToken | None:
    """The newest enrolment of the host `name` (the certificate it got), if any."""
    return session.scalar(
        select(EnrollmentToken)
        .where(EnrollmentToken.host_name == name, EnrollmentToken.certificate.is_not(None))
        .order_by(EnrollmentToken.used_at.desc())
        .limit(1)
    )


def host_supports_level(caps: dict, level: str) -> bool:
    """Hosts list their levels; an old host that lists none speaks only the legacy form."""
    if "clusterLevels" in caps:
        return level in caps["clusterLevels"]
    return not multi_console(level)


def _short(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0][:200]


def get_host(session: Session, key: str) -> Host:
    return _one(session, Host, key, "host")


def set_host_maintenance(session: Session, key: str, on: bool) -> Host:
    host = get_host(session, key)
    if on:
        if session.scalar(select(Vm.id).where(Vm.host_id == host.id, Vm.status.in_(ON_HOST)).limit(1)):
            raise Conflict("host", f"host {host.name!r} still runs VMs: stop them first")
        host.status = "Maintenance"
    elif host.status == "Maintenance":
        host.status = "Up"
        host.failures = 0
    return host


def delete_host(session: Session, key: str) -> None:
    host = get_host(session, key)
    if session.scalar(select(Vm.id).where(Vm.host_id == host.id, Vm.status.in_(ON_HOST)).limit(1)):
        raise Conflict("host", f"host {host.name!r} still runs VMs")
    session.delete(host)


def console_address(host: Host) -> str:
    return host.cluster.console_address or host.console_address or host.address


# --- display -----------------------------------------------------------------------


def display_from_fields(fields: dict[str, Any], base: DisplayConfig | None = None) -> DisplayConfig:
    """A DisplayConfig from API fields (video, consoles, monitors, ...), over `base`."""
    d = base or DisplayConfig()
    changes: dict[str, Any] = {}
    try:
        if fields.get("consoles") is not None:
            consoles = [GraphicsType(c) for c in fields["consoles"]]
            changes["graphics"] = tuple(consoles)
            if fields.get("video") is None:
                # Sensible video for the consoles when none was asked for.
                if not consoles:
                    changes["video"] = VideoModel.NONE
                elif d.video == VideoModel.NONE or (
                    GraphicsType.SPICE in consoles and d.video != VideoModel.QXL
                ):
                    changes["video"] = VideoModel.QXL if GraphicsType.SPICE in consoles else VideoModel.VGA
        if fields.get("video") is not None:
            changes["video"] = VideoModel(fields["video"])
    except ValueError as err:
        raise EngineError("consoles" if "consoles" in str(err) else "video", str(err), 422) from None
    for key in (
        "monitors",
        "vram",
        "keyboard_layout",
        "copy_paste",
        "file_transfer",
        "disconnect_action",
        "allow_reconnect",
    ):
        if key in fields and fields[key] is not None:
            changes[key] = fields[key]
    if "disconnect_action" in changes:  # the API hands over its value, the config keeps the enum
        changes["disconnect_action"] = DisconnectAction(changes["disconnect_action"])
    if fields.get("spice_secure_channels") is not None:
        changes["spice_secure_channels"] = tuple(fields["spice_secure_channels"])
    d = replace(d, **changes)
    ids = dict(d.device_ids)
    for key in ("video", *[g.value for g in d.graphics]):
        ids.setdefault(key, str(uuid.uuid4()))
    return replace(d, device_ids=ids)


def check_display(display: DisplayConfig, os_type: str, cluster: Cluster) -> None:
    problems = violations(display, os_type, cluster.compat_level, cluster.arch)
    if problems:
        raise EngineError.from_field(problems[0])


# --- templates -----------------------------------------------------------------------


def create_template(session: Session, fields: dict[str, Any]) -> Template:
    name = check_name(fields["name"])
    _unique(session, Template, name, "template")
    cluster = get_cluster(session, fields["cluster"]) if fields.get("cluster") else None
    os_type = fields.get("os_type") or "other"
    display = display_from_fields(fields)
    check_display(display, os_type, cluster or _any_level_cluster(os_type))
    t = Template(
        name=name,
        cluster_id=cluster.id if cluster else None,
        os_type=os_type,
        memory_mib=fields.get("memory_mib") or 256,
        vcpus=fields.get("vcpus") or 1,
        display=display.to_json(),
        description=fields.get("description") or "",
        drives=drives.from_fields(session, fields, None, fresh_ids=False),
    )
    session.add(t)
    session.flush()
    return t


def _any_level_cluster(os_type: str) -> Cluster:
    """Templates without a cluster are checked as for the newest level."""
    os = OS_TYPES.get(os_type)
    return Cluster(name="-", compat_level=CLUSTER_LEVELS[-1], arch=os.arch if os else "x86_64")


def get_template(session: Session, key: str) -> Template:
    return _one(session, Template, key, "template")


def update_template(session: Session, key: str, fields: dict[str, Any]) -> Template:
    t = get_template(session, key)
    if fields.get("name") is not None:
        _unique(session, Template, check_name(fields["name"]), "template", t.id)
        t.name = fields["name"]
    os_type = fields.get("os_type") or t.os_type
    display = display_from_fields(fields, DisplayConfig.from_json(t.display))
    cluster = session.get(Cluster, t.cluster_id) if t.cluster_id else None
    check_display(display, os_type, cluster or _any_level_cluster(os_type))
    t.os_type = os_type
    t.display = display.to_json()
    t.drives = drives.from_fields(session, fields, t.drives, fresh_ids=False)
    for key_ in ("memory_mib", "vcpus", "description"):
        if fields.get(key_) is not None:
            setattr(t, key_, fields[key_])
    return t


def delete_template(session: Session, key: str) -> None:
    session.delete(get_template(session, key))


# --- VMs -----------------------------------------------------------------------------


def create_vm(session: Session, fields: dict[str, Any]) -> Vm:
    name = check_name(fields["name"])
    _unique(session, Vm, name, "VM")
    cluster = get_cluster(session, fields["cluster"])
    template = get_template(session, fields["template"]) if fields.get("template") else None
    base = DisplayConfig.from_json(template.display) if template else None
    if base is not None:
        base = replace(base, device_ids={})  # a VM's devices are its own
    os_type = fields.get("os_type") or (template.os_type if template else "other")
    display = display_from_fields(fields, base)
    check_display(display, os_type, cluster)
    vm = Vm(
        name=name,
        cluster_id=cluster.id,
        template_id=template.id if template else None,
        os_type=os_type,
        memory_mib=fields.get("memory_mib") or (template.memory_mib if template else 256),
        vcpus=fields.get("vcpus") or (template.vcpus if template else 1),
        display=display.to_json(),
        status="Down",
        drives=drives.from_fields(
            session, fields, drives.for_new_vm(template.drives if template else None), True
        ),
    )
    session.add(vm)
    session.flush()
    return vm


def get_vm(session: Session, key: str) -> Vm:
    return _one(session, Vm, key, "VM")


HARDWARE = ("memory_mib", "vcpus", "os_type")


def update_vm(session: Session, key: str, fields: dict[str, Any]) -> Vm:
    """Edit a VM. Hardware and display changes of a running VM wait for its next start."""
    vm = get_vm(session, key)
    if fields.get("name") is not None and fields["name"] != vm.name:
        if vm.status in ON_HOST:
            raise Conflict("name", "a running VM cannot be renamed")
        _unique(session, Vm, check_name(fields["name"]), "VM", vm.id)
        vm.name = fields["name"]
    running = vm.status in ON_HOST
    if any(fields.get(k) is not None for k in ("cdrom", "disks", "boot")):
        if running:
            raise Conflict("disks", "stop the VM to change its CD-ROM, disks or boot order")
        vm.drives = drives.from_fields(session, fields, vm.drives, fresh_ids=True)
    pending = dict(vm.next_run or {}) if running else {}
    current = DisplayConfig.from_json(pending.get("display", vm.display))
    display = display_from_fields(fields, current)
    os_type = fields.get("os_type") or pending.get("os_type", vm.os_type)
    check_display(display, os_type, vm.cluster)
    hardware = {k: fields[k] for k in HARDWARE if fields.get(k) is not None}
    if not running:
        vm.display = display.to_json()
        for k, v in hardware.items():
            setattr(vm, k, v)
        vm.next_run = None
        return vm
    pending.update(hardware)
    pending["display"] = display.to_json()
    # Nothing differs from what runs: no next-run configuration.
    same = pending["display"] == vm.display and all(
        getattr(vm, k) == pending.get(k, getattr(vm, k)) for k in HARDWARE
    )
    vm.next_run = None if same else pending
    return vm


def delete_vm(session: Session, key: str, agents: Agents | None = None) -> None:
    """Remove a stopped VM, and its own disks from the host (or shared directory) that keeps them."""
    vm = get_vm(session, key)
    if vm.status in ON_HOST:
        raise Conflict("status", f"VM {vm.name!r} is {vm.status}: stop it first")
    if agents is not None and drives.has_disks(vm.drives):
        _remove_disks(session, agents, vm)
    session.delete(vm)


def _remove_disks(session: Session, agents: Agents, vm: Vm) -> None:
    shared = vm.cluster.shared_dir
    if vm.disk_host_id:
        host = session.get(Host, vm.disk_host_id)
    elif shared:
        host = session.scalar(
            select(Host).where(Host.cluster_id == vm.cluster_id, Host.status == "Up").limit(1)
        )
    else:
        return  # never started: no disks were made
    if host is None:
        return
    params: dict[str, Any] = {"vmID": vm.id}
    if shared:
        params["diskDir"] = shared
    try:
        agents.for_host(host).call("VM.removeDisks", **params)
    except AgentCallError as err:
        raise EngineError(
            "host", f"host {host.name} could not remove the VM's disks: {err.message}", 409
        ) from None
    except httpx.HTTPError as err:
        raise HostUnreachable(
            "host", f"host {host.name} keeps the VM's disks and did not answer: {_short(err)}"
        ) from None


def _apply_next_run(vm: Vm) -> None:
    if vm.next_run:
        for k in HARDWARE:
            if k in vm.next_run:
                setattr(vm, k, vm.next_run[k])
        vm.display = vm.next_run.get("display", vm.display)
        vm.next_run = None


def _wait_for_an_up_host(session: Session, vm: Vm, recheck: Callable[[str], None] | None) -> None:
    """When none of the cluster's hosts is Up but some are NonResponsive, wait up to
    HOST_RECHECK_WAIT seconds for one to be Up again: the monitor re-checks them (at once
    after the engine starts, and when `recheck(host_id)` asks). Reads only, so that the
    monitor can write meanwhile."""
    deadline = time.monotonic() + HOST_RECHECK_WAIT
    asked = False
    while True:
        statuses = session.execute(select(Host.id, Host.status).where(Host.cluster_id == vm.cluster_id)).all()
        rechecking = [host_id for host_id, status in statuses if status == "NonResponsive"]
        if any(status == "Up" for _, status in statuses) or not rechecking:
            return
        if time.monotonic() >= deadline:
            return
        release(session)  # no connection held while the monitor re-checks
        if recheck is not None and not asked:
            for host_id in rechecking:
                recheck(host_id)
            asked = True
        time.sleep(0.2)


def _pick_host(session: Session, vm: Vm, display: DisplayConfig, memory_mib: int) -> Host:
    # populate_existing: a host loaded earlier in this session may have changed since.
    hosts = session.scalars(
        select(Host).where(Host.cluster_id == vm.cluster_id).execution_options(populate_existing=True)
    ).all()
    pinned = pinned_host(session, vm)
    if pinned is not None:
        # The VM's disks are on that host alone: it runs there or not at all.
        if pinned.status != "Up":
            raise Conflict(
                "host", f"VM {vm.name!r} keeps its disks on host {pinned.name}, which is {pinned.status}"
            )
        hosts = [pinned]
    reasons = []
    busy: dict[str, int] = {}
    for vm_host_id, mem in session.execute(
        select(Vm.host_id, Vm.memory_mib).where(Vm.status.in_(ON_HOST), Vm.host_id.is_not(None))
    ):
        busy[vm_host_id] = busy.get(vm_host_id, 0) + mem
    candidates = []
    for h in hosts:
        caps = h.capabilities or {}
        if h.status != "Up":
            reasons.append(f"{h.name} is {h.status}")
            continue
        if (len(display.graphics) > 1 or multi_console(vm.cluster.compat_level)) and not caps.get(
            "graphicsDevices"
        ):
            if len(display.graphics) > 1:
                reasons.append(f"{h.name} speaks only the legacy display protocol: one console at most")
                continue
        missing = [
            g.value for g in display.graphics if g.value not in caps.get("graphicsTypes", ["spice", "vnc"])
        ]
        if missing:
            reasons.append(f"{h.name} has no {', '.join(missing)}")
            continue
        free = caps.get("memFree", 0)
        if free < memory_mib:
            reasons.append(f"{h.name} has {free} MiB free, the VM needs {memory_mib}")
            continue
        candidates.append((busy.get(h.id, 0), -free, h.name, h))
    if not candidates:
        why = "; ".join(reasons) or f"cluster {vm.cluster.name!r} has no hosts"
        raise Conflict("host", f"no host can run VM {vm.name!r}: {why}")
    return sorted(candidates, key=lambda c: c[:3])[0][3]


def start_vm(session: Session, agents: Agents, key: str, recheck: Callable[[str], None] | None = None) -> Vm:
    """Start a VM on the best Up host of its cluster. `recheck(host_id)`: ask the monitor to
    poll a host now (when none is Up, a start waits briefly for one being re-checked)."""
    vm = get_vm(session, key)
    if vm.status in ON_HOST:
        raise Conflict("status", f"VM {vm.name!r} is already {vm.status}")
    _wait_for_an_up_host(session, vm, recheck)
    # What waits for the next start runs now; the VM keeps it only once its host took it.
    pending = vm.next_run or {}
    display = DisplayConfig.from_json(pending.get("display", vm.display))
    memory_mib = pending.get("memory_mib", vm.memory_mib)
    check_display(display, pending.get("os_type", vm.os_type), vm.cluster)
    host = _pick_host(session, vm, display, memory_mib)
    files = _image_files(session, agents, vm)
    shared = vm.cluster.shared_dir
    params = builder.vm_create(
        vm_id=vm.id,
        name=vm.name,
        memory_mib=memory_mib,
        vcpus=pending.get("vcpus", vm.vcpus),
        display=display,
        cluster_level=vm.cluster.compat_level,
        drives=builder.drive_devices(vm.drives, {f.id: (f.sha256, f.format) for f in files}, shared),
    )
    with released(session):
        try:
            if files:  # a transfer may take minutes: no database connection is held meanwhile
                transfer.send_missing(agents.for_host(host), host.name, [f.file for f in files])
            reply = agents.for_host(host).call("VM.create", vmID=vm.id, vmParams=params)
        except AgentCallError as err:
            raise EngineError("host", f"host {host.name} refused the VM: {err.message}", 409) from None
        except httpx.HTTPError as err:
            raise HostUnreachable("host", f"host {host.name} did not answer: {_short(err)}") from None
    _apply_next_run(vm)
    if drives.has_disks(vm.drives) and not shared:
        vm.disk_host_id = host.id
    vm.host_id = host.id
    vm.host = host
    vm.started_at = vm.acted_at = now()
    vm.status_reason = ""
    vm.exit_code = vm.exit_reason = vm.exit_message = None
    apply_vm_stats(vm, host, reply["vmList"])
    log.info("vm started vm=%s host=%s", vm.name, host.name)
    return vm


def pinned_host(session: Session, vm: Vm) -> Host | None:
    """The host a VM must run on because its disks are there (None: any host)."""
    if vm.disk_host_id is None or vm.cluster.shared_dir:
        return None
    return session.get(Host, vm.disk_host_id)


@dataclass(frozen=True)
class _VmImage:
    id: str
    sha256: str
    format: str
    file: transfer.ImageFile


def _image_files(session: Session, agents: Agents, vm: Vm) -> list[_VmImage]:
    found = []
    for image_id in drives.image_ids(vm.drives):
        image = session.get(Image, image_id)
        if image is None:
            raise Conflict("disks", f"VM {vm.name!r} uses an image that was removed: edit its drives")
        if agents.image_store is None:
            raise EngineError("image", "this engine has no image store", 500)
        path = agents.image_store.path(image.id)
        found.append(
            _VmImage(
                image.id,
                image.sha256,
                image.format,
                transfer.ImageFile(image.name, image.sha256, path, image.size),
            )
        )
    return found


def stop_vm(session: Session, agents: Agents, key: str) -> Vm:
    vm = get_vm(session, key)
    if vm.status not in ON_HOST and vm.status != "Suspended":
        raise Conflict("status", f"VM {vm.name!r} is not running ({vm.status})")
    host = session.get(Host, vm.host_id) if vm.host_id else None
    if host is not None:
        with released(session):
            try:
                agents.for_host(host).call("VM.destroy", vmID=vm.id)
            except AgentCallError as err:
                if err.code != 1:  # 1: the host no longer has it, which is what we want
                    raise EngineError(
                        "host", f"host {host.name} could not stop the VM: {err.message}", 409
                    ) from None
            except httpx.HTTPError as err:
                raise HostUnreachable("host", f"host {host.name} did not answer: {_short(err)}") from None
    mark_down(vm, why=VmExit.of(ExitReason.ADMIN_SHUTDOWN))
    vm.acted_at = now()
    return vm


def mark_down(vm: Vm, reason: str = "", why: VmExit | None = None) -> None:
    """The VM stopped: its console sessions end, and what was waiting for its next start
    becomes its configuration. `why`: the host's exit code, reason and message; a crash
    is written to the audit log."""
    session = object_session(vm)
    if why is not None:
        vm.exit_code, vm.exit_reason, vm.exit_message = int(why.code), int(why.reason), why.message
        if why.crashed and session is not None:
            session.add(AuditEntry(event="VM crashed", vm_id=vm.id, vm_name=vm.name, detail=why.message))
            log.warning("vm crashed vm=%s reason=%s", vm.name, why.message)
    for console in vm.consoles:
        if console.holder and session is not None:
            session.add(
                AuditEntry(
                    event="console disconnected",
                    user=console.holder,
                    vm_id=vm.id,
                    vm_name=vm.name,
                    protocol=console.protocol,
                    client_address=console.client_address,
                    detail="the VM stopped",
                )
            )
    vm.status = "Down"
    vm.status_reason = reason
    vm.host_id = None
    vm.consoles.clear()
    _apply_next_run(vm)


def apply_vm_stats(vm: Vm, host: Host, stats: dict) -> None:
    """A VM's status and console addresses from the stats of the host that runs it."""
    status = AGENT_STATUS.get(stats.get("status", ""), "Unknown")
    if vm.status != status:  # assign only changes: a poll of 100 quiet VMs flushes nothing
        vm.status = status
    legacy = not multi_console(vm.cluster.compat_level)
    found = {c.protocol.value: c for c in consoles_from_stats(stats, console_address(host), legacy)}
    for existing in list(vm.consoles):
        if existing.protocol not in found:
            vm.consoles.remove(existing)
    by_protocol = {c.protocol: c for c in vm.consoles}
    for proto, c in found.items():
        row = by_protocol.get(proto)
        if row is None:
            vm.consoles.append(
                VmConsole(
                    protocol=proto,
                    address=c.address,
                    port=c.port,
                    tls_port=c.tls_port,
                    updated_at=now(),
                )
            )
        elif (row.address, row.port, row.tls_port) != (c.address, c.port, c.tls_port):
            row.address, row.port, row.tls_port, row.updated_at = (
                c.address,
                c.port,
                c.tls_port,
                now(),
            )


def field_error(err: FieldError) -> EngineError:
    return EngineError.from_field(err)


# --- screenshots -----------------------------------------------------------------------

SCREENSHOT_STATES = ("Up", "Paused", "PoweringUp", "PoweringDown")


def screenshot(
    session: Session, agents: Agents, key: str, max_width: int | None = None, screen: int = 0
) -> bytes:
    """A PNG of a running VM's screen, from its host (QEMU's framebuffer: consoles stay untouched)."""
    import base64

    vm = get_vm(session, key)
    if vm.status not in SCREENSHOT_STATES or vm.host_id is None:
        raise Conflict("status", f"VM {vm.name!r} is {vm.status}: screenshots only while it runs")
    if DisplayConfig.from_json(vm.display).video == VideoModel.NONE:
        raise Conflict("video", f"VM {vm.name!r} is headless: it has no screen")
    host = session.get(Host, vm.host_id)
    params: dict[str, Any] = {"vmID": vm.id, "screen": screen}
    if max_width is not None:
        params["maxWidth"] = max_width
    with released(session):
        try:
            reply = agents.for_host(host).call("VM.screenshot", **params)
        except AgentCallError as err:
            if err.code == 102:
                raise Conflict("status", f"VM {vm.name!r} is not running on host {host.name}") from None
            if err.code == 1:
                raise Conflict("status", f"host {host.name} no longer runs VM {vm.name!r}") from None
            if err.code == 101:
                raise Conflict("video", f"VM {vm.name!r}: {err.message}") from None
            if err.code == -32601:
                raise Conflict(
                    "host", f"host {host.name} cannot take screenshots (its agent is older)"
                ) from None
            raise EngineError(
                "host", f"host {host.name} could not take the screenshot: {err.message}", 502
            ) from None
        except httpx.HTTPError as err:
            raise HostUnreachable("host", f"host {host.name} did not answer: {_short(err)}") from None
    try:
        png = base64.b64decode(reply["png"], validate=True)
    except (KeyError, TypeError, ValueError):
        png = b""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise EngineError("host", f"host {host.name} sent a screenshot that is not a PNG", 502)
    return png
