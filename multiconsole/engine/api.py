"""REST API /api/v1 (JSON). Thin: parse, call the service, shape the answer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from multiconsole.domain.display import OS_TYPES, DisplayConfig, violations
from multiconsole.engine import auth, consoles, service
from multiconsole.engine.db import Cluster, Host, Template, User, Vm
from multiconsole.engine.errors import EngineError
from multiconsole.engine.schemas import (
    AuditOut,
    ClusterIn,
    ClusterOut,
    ClusterPatch,
    ConfiguredConsole,
    ConsoleState,
    HostIn,
    HostOut,
    OsTypeOut,
    RuleCheckIn,
    TemplateIn,
    TemplateOut,
    TemplatePatch,
    TicketIn,
    TicketOut,
    UserIn,
    UserOut,
    Violation,
    VmConsoles,
    VmIn,
    VmOut,
    VmPatch,
)
from multiconsole.wire import vvfile

_basic = HTTPBasic(auto_error=False)
MIME_VV = "application/x-virt-viewer"


def db(request: Request) -> Iterator[Session]:
    """One session per request, committed before the response leaves (scope="function" at
    every use): a client that got its 201 must find what it created."""
    with request.app.state.sessions() as session:
        yield session
        session.commit()


def current_user(
    session: Session = Depends(db, scope="function"), creds: HTTPBasicCredentials | None = Depends(_basic)
) -> User:
    if creds is None:
        raise EngineError(None, "log in: this API needs a user name and password", 401)
    user = auth.verify(session, creds.username, creds.password)
    if user is None:
        raise EngineError(None, "wrong user name or password", 401)
    return user


router = APIRouter(prefix="/api/v1", dependencies=[Depends(current_user)])


def _fields(model) -> dict:
    return model.model_dump(exclude_unset=True, mode="json")


def _vm_out(session: Session, vm: Vm) -> VmOut:
    template = session.get(Template, vm.template_id) if vm.template_id else None
    return VmOut.of(vm, template.name if template else None)


def _template_out(session: Session, t: Template) -> TemplateOut:
    cluster = session.get(Cluster, t.cluster_id) if t.cluster_id else None
    return TemplateOut.of(t, cluster.name if cluster else None)


# --- clusters ------------------------------------------------------------------------


@router.get("/clusters", response_model=list[ClusterOut])
def list_clusters(session: Session = Depends(db, scope="function")):
    return [ClusterOut.of(c) for c in session.scalars(select(Cluster).order_by(Cluster.name))]


@router.post("/clusters", response_model=ClusterOut, status_code=201)
def create_cluster(body: ClusterIn, session: Session = Depends(db, scope="function")):
    return ClusterOut.of(service.create_cluster(session, **body.model_dump()))


@router.get("/clusters/{key}", response_model=ClusterOut)
def get_cluster(key: str, session: Session = Depends(db, scope="function")):
    return ClusterOut.of(service.get_cluster(session, key))


@router.patch("/clusters/{key}", response_model=ClusterOut)
def patch_cluster(key: str, body: ClusterPatch, session: Session = Depends(db, scope="function")):
    c = service.get_cluster(session, key)
    fields = _fields(body)
    if "console_address" in fields:
        service._check_address(fields["console_address"], "console_address")
        c.console_address = fields["console_address"]
    if fields.get("description") is not None:
        c.description = fields["description"]
    return ClusterOut.of(c)


@router.delete("/clusters/{key}", status_code=204)
def delete_cluster(key: str, session: Session = Depends(db, scope="function")):
    service.delete_cluster(session, key)


# --- hosts ---------------------------------------------------------------------------


@router.get("/hosts", response_model=list[HostOut])
def list_hosts(session: Session = Depends(db, scope="function")):
    return [HostOut.of(h) for h in session.scalars(select(Host).order_by(Host.name))]


@router.post("/hosts", response_model=HostOut, status_code=201)
def add_host(body: HostIn, request: Request, session: Session = Depends(db, scope="function")):
    host = service.add_host(session, request.app.state.agents, **body.model_dump())
    request.app.state.monitor.poke(host.id)
    return HostOut.of(host)


@router.get("/hosts/{key}", response_model=HostOut)
def get_host(key: str, session: Session = Depends(db, scope="function")):
    return HostOut.of(service.get_host(session, key))


@router.post("/hosts/{key}/maintenance", response_model=HostOut)
def host_maintenance(key: str, session: Session = Depends(db, scope="function")):
    return HostOut.of(service.set_host_maintenance(session, key, True))


@router.post("/hosts/{key}/activate", response_model=HostOut)
def host_activate(key: str, request: Request, session: Session = Depends(db, scope="function")):
    host = service.set_host_maintenance(session, key, False)
    request.app.state.monitor.poke(host.id)
    return HostOut.of(host)


@router.delete("/hosts/{key}", status_code=204)
def delete_host(key: str, session: Session = Depends(db, scope="function")):
    service.delete_host(session, key)


# --- templates -----------------------------------------------------------------------


@router.get("/templates", response_model=list[TemplateOut])
def list_templates(session: Session = Depends(db, scope="function")):
    return [_template_out(session, t) for t in session.scalars(select(Template).order_by(Template.name))]


@router.post("/templates", response_model=TemplateOut, status_code=201)
def create_template(body: TemplateIn, session: Session = Depends(db, scope="function")):
    return _template_out(session, service.create_template(session, _fields(body)))


@router.get("/templates/{key}", response_model=TemplateOut)
def get_template(key: str, session: Session = Depends(db, scope="function")):
    return _template_out(session, service.get_template(session, key))


@router.patch("/templates/{key}", response_model=TemplateOut)
def patch_template(key: str, body: TemplatePatch, session: Session = Depends(db, scope="function")):
    return _template_out(session, service.update_template(session, key, _fields(body)))


@router.delete("/templates/{key}", status_code=204)
def delete_template(key: str, session: Session = Depends(db, scope="function")):
    service.delete_template(session, key)


# --- VMs -----------------------------------------------------------------------------


@router.get("/vms", response_model=list[VmOut])
def list_vms(session: Session = Depends(db, scope="function")):
    vms = session.scalars(
        select(Vm)
        .order_by(Vm.name)
        .options(selectinload(Vm.consoles), selectinload(Vm.cluster), selectinload(Vm.host))
    )
    return [_vm_out(session, vm) for vm in vms]


@router.post("/vms", response_model=VmOut, status_code=201)
def create_vm(body: VmIn, session: Session = Depends(db, scope="function")):
    return _vm_out(session, service.create_vm(session, _fields(body)))


@router.get("/vms/{key}", response_model=VmOut)
def get_vm(key: str, session: Session = Depends(db, scope="function")):
    return _vm_out(session, service.get_vm(session, key))


@router.patch("/vms/{key}", response_model=VmOut)
def patch_vm(key: str, body: VmPatch, session: Session = Depends(db, scope="function")):
    return _vm_out(session, service.update_vm(session, key, _fields(body)))


@router.delete("/vms/{key}", status_code=204)
def delete_vm(key: str, session: Session = Depends(db, scope="function")):
    service.delete_vm(session, key)


@router.post("/vms/{key}/start", response_model=VmOut)
def start_vm(key: str, request: Request, session: Session = Depends(db, scope="function")):
    vm = service.start_vm(session, request.app.state.agents, key)
    return _vm_out(session, vm)


@router.post("/vms/{key}/stop", response_model=VmOut)
def stop_vm(key: str, request: Request, session: Session = Depends(db, scope="function")):
    return _vm_out(session, service.stop_vm(session, request.app.state.agents, key))


@router.get("/vms/{key}/consoles", response_model=VmConsoles)
def vm_consoles(key: str, session: Session = Depends(db, scope="function")):
    vm = service.get_vm(session, key)
    configured = DisplayConfig.from_json(vm.display).graphics
    nxt = None
    if vm.next_run and "display" in vm.next_run:
        pending = DisplayConfig.from_json(vm.next_run["display"]).graphics
        if pending != configured:
            nxt = [ConfiguredConsole(protocol=g.value) for g in pending]
    return VmConsoles(
        vm=vm.name,
        status=vm.status,
        configured=[ConfiguredConsole(protocol=g.value) for g in configured],
        current=[
            ConsoleState(
                protocol=c.protocol,
                address=c.address,
                port=c.port,
                tls_port=c.tls_port,
                holder=c.holder,
                client_address=c.client_address,
                connected_at=c.connected_at,
            )
            for c in vm.consoles
        ],
        next_run=nxt,
    )


def console_user_required(user: User) -> None:
    if not auth.has_role(user, auth.CONSOLE_USER):
        raise EngineError(None, f"{user.name} may not open consoles (needs the console_user role)", 403)


@router.post("/vms/{key}/consoles/{protocol}/ticket", response_model=TicketOut)
def console_ticket(
    key: str,
    protocol: str,
    request: Request,
    body: TicketIn | None = None,
    session: Session = Depends(db, scope="function"),
    user: User = Depends(current_user),
):
    """A fresh one-time password for one console of a running VM."""
    console_user_required(user)
    body = body or TicketIn()
    return consoles.issue_ticket(
        session,
        request.app.state.agents,
        key,
        protocol,
        user,
        body.ttl,
        body.existing_connection,
        body.take_over,
    )


@router.get(
    "/vms/{key}/consoles/{protocol}.vv",
    response_class=Response,
    responses={200: {"content": {MIME_VV: {}}, "description": "a remote-viewer connection file"}},
)
def console_vv(
    key: str,
    protocol: str,
    request: Request,
    ttl: int = Query(consoles.TICKET_TTL_DEFAULT, ge=1, le=consoles.TICKET_TTL_MAX),
    take_over: bool = False,
    session: Session = Depends(db, scope="function"),
    user: User = Depends(current_user),
):
    """Issue a ticket and return it as a remote-viewer file (open it with remote-viewer)."""
    console_user_required(user)
    ticket = consoles.issue_ticket(
        session, request.app.state.agents, key, protocol, user, ttl, None, take_over
    )
    return Response(
        vvfile.from_ticket(ticket),
        media_type=MIME_VV,
        headers={
            "Content-Disposition": f'attachment; filename="{ticket["vm"]}-{ticket["protocol"]}.vv"',
            "Cache-Control": "no-store",
        },
    )


# --- audit and users -----------------------------------------------------------------


@router.get("/audit", response_model=list[AuditOut])
def audit_log(
    vm: str | None = None,
    user: str | None = None,
    event: str | None = None,
    protocol: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(100, ge=1, le=10000),
    session: Session = Depends(db, scope="function"),
):
    """Console audit entries, oldest first: the newest `limit` that match every filter."""
    rows = consoles.audit_entries(session, vm, user, event, protocol, since, until, limit)
    return [AuditOut.model_validate(r, from_attributes=True) for r in rows]


def _admin(user: User) -> None:
    if not auth.has_role(user, auth.ROLE_ADMIN):
        raise EngineError(None, f"{user.name} is not an administrator", 403)


@router.get("/users", response_model=list[UserOut])
def list_users(session: Session = Depends(db, scope="function"), me: User = Depends(current_user)):
    _admin(me)
    return [UserOut(id=u.id, name=u.name, roles=u.roles or []) for u in session.scalars(select(User))]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(
    body: UserIn, session: Session = Depends(db, scope="function"), me: User = Depends(current_user)
):
    _admin(me)
    if session.scalar(select(User).where(User.name == body.name)) is not None:
        raise EngineError("name", f"a user named {body.name!r} already exists", 409)
    u = User(name=body.name, password_hash=auth.hash_password(body.password), roles=list(body.roles))
    session.add(u)
    session.flush()
    return UserOut(id=u.id, name=u.name, roles=u.roles)


# --- rules ---------------------------------------------------------------------------


@router.get("/os-types", response_model=list[OsTypeOut])
def os_types():
    return [
        OsTypeOut(
            name=o.name,
            label=o.label,
            arch=o.arch,
            pairs=[{"graphics": g.value, "video": v.value} for g, v in sorted(o.pairs)],
        )
        for o in OS_TYPES.values()
    ]


@router.post("/rules/check", response_model=list[Violation])
def check_rules(body: RuleCheckIn, session: Session = Depends(db, scope="function")):
    """Every rule a display configuration breaks, for forms to explain before submit."""
    level, arch = body.compat_level, body.arch
    if body.cluster:
        c = service.get_cluster(session, body.cluster)
        level, arch = level or c.compat_level, arch or c.arch
    display = service.display_from_fields(_fields(body))
    found = violations(display, body.os_type, level or "4.7", arch or "x86_64")
    return [Violation(field=v.field, reason=v.reason) for v in found]


# --- screenshots ---------------------------------------------------------------------


@router.get(
    "/vms/{key}/screenshot.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the VM's screen as a PNG"}},
)
def vm_screenshot(
    key: str,
    request: Request,
    width: int | None = Query(None, ge=16, le=4096, description="at most this many pixels wide"),
    screen: int = Query(0, ge=0, le=3, description="which screen of a multi-head VM"),
    session: Session = Depends(db, scope="function"),
):
    """A live thumbnail of a running VM's screen, taken without opening (or disturbing) a console."""
    png = service.screenshot(session, request.app.state.agents, key, width, screen)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
