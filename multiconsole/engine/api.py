"""REST API /api/v1 (JSON). Thin: parse, check who may, call the service, shape the answer.

Every route but POST /login needs a user (HTTP Basic or a bearer token from /login) and
checks their roles on the object it touches (engine/permissions.py has the table).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from types import SimpleNamespace
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from multiconsole.domain.display import OS_TYPES, DisplayConfig, violations
from multiconsole.engine import auth, consoles, drives, limits, permissions, service
from multiconsole.engine.auth import CONSOLE_USER, VM_OPERATOR
from multiconsole.engine.db import Cluster, Host, LoginToken, Permission, Template, User, Vm, release
from multiconsole.engine.errors import Conflict, EngineError, NotFound
from multiconsole.engine.permissions import (
    Grants,
    require_admin,
    require_cluster,
    require_template,
    require_vm,
)
from multiconsole.engine.schemas import (
    AuditOut,
    ClusterIn,
    ClusterOut,
    ClusterPatch,
    ConfiguredConsole,
    ConsoleState,
    DrivesOut,
    HostIn,
    HostOut,
    KeysIn,
    KeysOut,
    LoginIn,
    LoginOut,
    MeOut,
    OsTypeOut,
    PermissionIn,
    PermissionOut,
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

MIME_VV = "application/x-virt-viewer"
NO_STORE = {"Cache-Control": "no-store"}


def db(request: Request) -> Iterator[Session]:
    """One session per request, committed before the response leaves (scope="function" at
    every use): a client that got its 201 must find what it created."""
    with request.app.state.sessions() as session:
        yield session
        session.commit()


class _Basic(HTTPBasic):
    """HTTP Basic, UTF-8, that leaves the refusing to `current_user` (one message shape)."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        scheme, _, param = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            name, password = auth.basic_credentials(param)
        except ValueError:
            raise auth.Unauthorized("log in: the Basic credentials are not base64 of name:password") from None
        return HTTPBasicCredentials(username=name, password=password)


_basic = _Basic(auto_error=False, description="a user name and password")
_bearer = HTTPBearer(auto_error=False, description="a token from POST /api/v1/login")


SESSION_COOKIE = "multiconsole_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(request: Request) -> bool:
    """Whether a browser request comes from the engine's own pages (Origin, else Referer),
    or from an origin the settings allow. Guards cookie-authenticated writes against CSRF."""
    source = request.headers.get("origin")
    if not source or source == "null":
        referer = urlsplit(request.headers.get("referer") or "")
        source = f"{referer.scheme}://{referer.netloc}" if referer.scheme and referer.netloc else ""
    if not source:
        return False
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    allowed = getattr(getattr(request.app.state, "settings", None), "allowed_origins", None) or []
    return source.lower().rstrip("/") in {o.lower().rstrip("/") for o in (own, *allowed)}


def same_origin_navigation(request: Request) -> bool:
    """Whether a browser GET comes from the engine's own pages or from the user (a typed URL,
    a bookmark): `Sec-Fetch-Site: same-origin` or `none`; from browsers that send no
    Sec-Fetch-Site, an Origin or Referer of the engine (`same_origin`)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and not same_origin(request):
        return False
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() in ("same-origin", "none")
    return same_origin(request)


def cookie_get_from_own_pages(
    request: Request,
    basic: HTTPBasicCredentials | None = Depends(_basic),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> None:
    """For the GETs that issue a console ticket (or lead to one): a cookie session is taken
    only from the engine's own pages. SameSite=Strict does not cover another port of the same
    host or a sibling subdomain, which could otherwise link here and spend the user's session.
    Basic and Bearer are not ambient credentials: they pass."""
    if basic is None and bearer is None and request.cookies.get(SESSION_COOKIE):
        if not same_origin_navigation(request):
            raise permissions.Forbidden(
                None,
                "refused: a browser session may open a console only from the engine's own pages "
                "(Sec-Fetch-Site, Origin or Referer names another site, or none)",
            )


def current_user(
    request: Request,
    session: Session = Depends(db, scope="function"),
    basic: HTTPBasicCredentials | None = Depends(_basic),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
) -> User:
    user = _authenticate(request, session, basic, bearer)
    # Between the request's steps (each waits its turn for a thread) and while a route waits
    # on a host, no connection is held: a full thread pool cannot empty the connection pool.
    release(session)
    return user


def _authenticate(
    request: Request,
    session: Session,
    basic: HTTPBasicCredentials | None,
    bearer: HTTPAuthorizationCredentials | None,
) -> User:
    verified = limits.verified_user_id(request)  # checked before the body was read
    if verified is not None and (user := session.get(User, verified)) is not None:
        return user
    if bearer is not None:
        return auth.user_for_token(session, bearer.credentials)
    if basic is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            # The web UI's session. SameSite=Strict already keeps other sites' requests
            # cookie-less; the Origin check covers old browsers and sibling subdomains.
            if request.method not in SAFE_METHODS and not same_origin(request):
                raise permissions.Forbidden(
                    None,
                    "refused: a browser session may change things only from the engine's own pages "
                    "(the Origin or Referer header names another site, or none)",
                )
            return auth.user_for_token(session, cookie)
        raise auth.Unauthorized(
            "log in: this API needs a user name and password (HTTP Basic), "
            "a token from POST /api/v1/login (Authorization: Bearer) or the web UI's session cookie"
        )
    user = auth.verify(session, basic.username, basic.password)
    if user is None:
        raise auth.Unauthorized("wrong user name or password")
    return user


def grants(session: Session = Depends(db, scope="function"), user: User = Depends(current_user)) -> Grants:
    """What the caller was granted, loaded once per request."""
    g = Grants.load(session, user)
    release(session)  # as in current_user
    return g


router = APIRouter(prefix="/api/v1", dependencies=[Depends(current_user)])
# Only what must work before logging in.
public = APIRouter(prefix="/api/v1")


def _fields(model) -> dict:
    return model.model_dump(exclude_unset=True, mode="json")


def _vm_out(session: Session, vm: Vm, g: Grants) -> VmOut:
    template = session.get(Template, vm.template_id) if vm.template_id else None
    out = VmOut.of(vm, template.name if template else None)
    out.drives = DrivesOut(**drives.describe(session, vm.drives))
    pinned = service.pinned_host(session, vm)
    out.pinned_to_host = pinned.name if pinned else None
    if CONSOLE_USER not in g.on_vm(vm):
        out.consoles = []  # where consoles listen is for those who may open them
    return out


def _template_out(session: Session, t: Template) -> TemplateOut:
    cluster = session.get(Cluster, t.cluster_id) if t.cluster_id else None
    out = TemplateOut.of(t, cluster.name if cluster else None)
    out.drives = DrivesOut(**drives.describe(session, t.drives))
    return out


# --- login ---------------------------------------------------------------------------


@public.post("/login", response_model=LoginOut)
def login(
    body: LoginIn, request: Request, response: Response, session: Session = Depends(db, scope="function")
):
    """A bearer token for `Authorization: Bearer <token>`, valid 8 hours by default."""
    user = auth.verify(session, body.name, body.password)
    if user is None:
        raise auth.Unauthorized("wrong user name or password")
    ttl = getattr(request.app.state.settings, "token_ttl", auth.TOKEN_TTL_DEFAULT)
    token, expires = auth.issue_token(session, user, ttl)
    response.headers.update(NO_STORE)
    return LoginOut(token=token, expires=expires, user=user.name)


@router.post("/logout", status_code=204)
def logout(
    request: Request,
    response: Response,
    all: bool = Query(False, description="end every token of this user, not only this one"),
    session: Session = Depends(db, scope="function"),
    user: User = Depends(current_user),
    bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
):
    """End the token this request came with (with `all`, every token of the user)."""
    if all:
        auth.revoke_all(session, user)
    elif bearer is not None:
        auth.revoke_token(session, bearer.credentials)
    elif request.cookies.get(SESSION_COOKIE):
        auth.revoke_token(session, request.cookies[SESSION_COOKIE])
    if request.cookies.get(SESSION_COOKIE):
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


@router.get("/me", response_model=MeOut)
def me(session: Session = Depends(db, scope="function"), user: User = Depends(current_user)):
    """Who you are and what you were granted."""
    rows = session.scalars(select(Permission).where(Permission.user_id == user.id).order_by(Permission.id))
    return MeOut(
        id=user.id,
        name=user.name,
        roles=auth.system_roles(session, user),
        permissions=[_permission_out(session, p, user.name) for p in rows],
    )


# --- clusters ------------------------------------------------------------------------


@router.get("/clusters", response_model=list[ClusterOut])
def list_clusters(session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    visible = g.visible_cluster_ids(session)
    q = select(Cluster).order_by(Cluster.name)
    if visible is not None:
        q = q.where(Cluster.id.in_(visible))
    return [ClusterOut.of(c) for c in session.scalars(q)]


@router.post("/clusters", response_model=ClusterOut, status_code=201)
def create_cluster(
    body: ClusterIn, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    require_admin(g, "create clusters")
    return ClusterOut.of(service.create_cluster(session, **body.model_dump()))


@router.get("/clusters/{key}", response_model=ClusterOut)
def get_cluster(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    return ClusterOut.of(require_cluster(session, g, key, None, "see"))


@router.patch("/clusters/{key}", response_model=ClusterOut)
def patch_cluster(
    key: str,
    body: ClusterPatch,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    require_admin(g, "edit clusters")
    c = service.get_cluster(session, key)
    fields = _fields(body)
    if "console_address" in fields:
        service._check_address(fields["console_address"], "console_address")
        c.console_address = fields["console_address"]
    if fields.get("description") is not None:
        c.description = fields["description"]
    if "shared_dir" in fields:
        if session.scalar(select(Vm.id).where(Vm.cluster_id == c.id, Vm.disk_host_id.is_not(None)).limit(1)):
            raise Conflict("shared_dir", "VMs of this cluster keep disks on their hosts: remove them first")
        c.shared_dir = service.check_shared_dir(fields["shared_dir"])
    return ClusterOut.of(c)


@router.delete("/clusters/{key}", status_code=204)
def delete_cluster(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    require_admin(g, "remove clusters")
    cluster_id = service.get_cluster(session, key).id
    service.delete_cluster(session, key)
    permissions.forget(session, "cluster", cluster_id)


# --- hosts ---------------------------------------------------------------------------


def _visible_host(session: Session, g: Grants, key: str) -> Host:
    host = service.get_host(session, key)
    visible = g.visible_cluster_ids(session)
    if visible is not None and host.cluster_id not in visible:
        raise NotFound("host", f"no host {key!r}")
    return host


@router.get("/hosts", response_model=list[HostOut])
def list_hosts(session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    visible = g.visible_cluster_ids(session)
    q = select(Host).order_by(Host.name)
    if visible is not None:
        q = q.where(Host.cluster_id.in_(visible))
    return [HostOut.of(h) for h in session.scalars(q)]


@router.post("/hosts", response_model=HostOut, status_code=201)
def add_host(
    body: HostIn,
    request: Request,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    require_admin(g, "add hosts")
    host = service.add_host(session, request.app.state.agents, **body.model_dump())
    request.app.state.monitor.poke(host.id)
    return HostOut.of(host)


@router.get("/hosts/{key}", response_model=HostOut)
def get_host(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    return HostOut.of(_visible_host(session, g, key))


@router.post("/hosts/{key}/maintenance", response_model=HostOut)
def host_maintenance(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    require_admin(g, "put hosts in maintenance")
    return HostOut.of(service.set_host_maintenance(session, key, True))


@router.post("/hosts/{key}/activate", response_model=HostOut)
def host_activate(
    key: str, request: Request, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    require_admin(g, "activate hosts")
    host = service.set_host_maintenance(session, key, False)
    request.app.state.monitor.poke(host.id)
    return HostOut.of(host)


@router.delete("/hosts/{key}", status_code=204)
def delete_host(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    require_admin(g, "remove hosts")
    service.delete_host(session, key)


# --- templates -----------------------------------------------------------------------


@router.get("/templates", response_model=list[TemplateOut])
def list_templates(session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    q = select(Template).where(g.template_filter()).order_by(Template.name)
    return [_template_out(session, t) for t in session.scalars(q)]


@router.post("/templates", response_model=TemplateOut, status_code=201)
def create_template(
    body: TemplateIn, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    permissions.require_template_create(session, g, body.cluster)
    return _template_out(session, service.create_template(session, _fields(body)))


@router.get("/templates/{key}", response_model=TemplateOut)
def get_template(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    return _template_out(session, require_template(session, g, key, None))


@router.patch("/templates/{key}", response_model=TemplateOut)
def patch_template(
    key: str,
    body: TemplatePatch,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    t = require_template(session, g, key, "edit")
    return _template_out(session, service.update_template(session, t.id, _fields(body)))


@router.delete("/templates/{key}", status_code=204)
def delete_template(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    t = require_template(session, g, key, "remove")
    service.delete_template(session, t.id)
    permissions.forget(session, "template", t.id)


# --- VMs -----------------------------------------------------------------------------


@router.get("/vms", response_model=list[VmOut])
def list_vms(session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    """The VMs you have a role on."""
    vms = session.scalars(
        select(Vm)
        .where(g.vm_filter())
        .order_by(Vm.name)
        .options(selectinload(Vm.consoles), selectinload(Vm.cluster), selectinload(Vm.host))
    )
    return [_vm_out(session, vm, g) for vm in vms]


@router.post("/vms", response_model=VmOut, status_code=201)
def create_vm(body: VmIn, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    require_cluster(session, g, body.cluster, VM_OPERATOR, "create VMs")
    if body.template:
        require_template(session, g, body.template, None)
    return _vm_out(session, service.create_vm(session, _fields(body)), g)


@router.get("/vms/{key}", response_model=VmOut)
def get_vm(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    return _vm_out(session, require_vm(session, g, key, None, "see"), g)


@router.patch("/vms/{key}", response_model=VmOut)
def patch_vm(
    key: str, body: VmPatch, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    vm = require_vm(session, g, key, VM_OPERATOR, "edit")
    return _vm_out(session, service.update_vm(session, vm.id, _fields(body)), g)


@router.delete("/vms/{key}", status_code=204)
def delete_vm(
    key: str, request: Request, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    """Remove a stopped VM with its own disks."""
    vm = require_vm(session, g, key, VM_OPERATOR, "remove")
    service.delete_vm(session, vm.id, request.app.state.agents)
    permissions.forget(session, "vm", vm.id)


@router.post("/vms/{key}/start", response_model=VmOut)
def start_vm(
    key: str, request: Request, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    vm = require_vm(session, g, key, VM_OPERATOR, "start")
    started = service.start_vm(session, request.app.state.agents, vm.id, request.app.state.monitor.poke)
    return _vm_out(session, started, g)


@router.post("/vms/{key}/stop", response_model=VmOut)
def stop_vm(
    key: str, request: Request, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    vm = require_vm(session, g, key, VM_OPERATOR, "stop")
    return _vm_out(session, service.stop_vm(session, request.app.state.agents, vm.id), g)


OPEN_CONSOLES = "open the consoles of"


@router.get("/vms/{key}/consoles", response_model=VmConsoles)
def vm_consoles(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    vm = require_vm(session, g, key, CONSOLE_USER, OPEN_CONSOLES)
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


def console_vm(session: Session, g: Grants, key: str) -> Vm:
    """The VM whose consoles the caller may open: 404 if they may not see it, 403 if they
    see it without console_user."""
    return require_vm(session, g, key, CONSOLE_USER, OPEN_CONSOLES)


def ticket_rate(request: Request, user: User) -> None:
    """At most `ticket_rate_limit` console tickets a minute per user (429 beyond)."""
    _rate(request, user, "ticket_limiter", "console tickets")


def screenshot_rate(request: Request, user: User) -> None:
    """At most `screenshot_rate_limit` screenshots a minute per user (429 beyond)."""
    _rate(request, user, "screenshot_limiter", "screenshots")


def _rate(request: Request, user: User, limiter_name: str, what: str) -> None:
    limiter: auth.RateLimiter | None = getattr(request.app.state, limiter_name, None)
    if limiter is None:
        return
    wait = limiter.hit(user.id)
    if wait is not None:
        raise auth.TooManyRequests(
            f"too many {what}: {user.name} may get {limiter.limit} in {limiter.window:g} s; "
            f"try again in {max(1, round(wait))} s",
            wait,
        )


@router.post("/vms/{key}/consoles/{protocol}/ticket", response_model=TicketOut)
def console_ticket(
    key: str,
    protocol: str,
    request: Request,
    response: Response,
    body: TicketIn | None = None,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """A fresh one-time password for one console of a running VM."""
    vm = console_vm(session, g, key)
    ticket_rate(request, g.user)
    body = body or TicketIn()
    response.headers.update(NO_STORE)
    return consoles.issue_ticket(
        session,
        request.app.state.agents,
        vm.id,
        protocol,
        g.user,
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
    _own_pages: None = Depends(cookie_get_from_own_pages),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """Issue a ticket and return it as a remote-viewer file (open it with remote-viewer).
    A GET, for links and downloads: with the web UI's cookie, only from its own pages."""
    vm = console_vm(session, g, key)
    ticket_rate(request, g.user)
    ticket = consoles.issue_ticket(
        session, request.app.state.agents, vm.id, protocol, g.user, ttl, None, take_over
    )
    return Response(
        vvfile.from_ticket(ticket),
        media_type=MIME_VV,
        headers={
            "Content-Disposition": f'attachment; filename="{ticket["vm"]}-{ticket["protocol"]}.vv"',
            **NO_STORE,
        },
    )


# --- audit ---------------------------------------------------------------------------


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
    g: Grants = Depends(grants),
):
    """Console audit entries, oldest first: the newest `limit` that match every filter
    (the system admin reads all; others those of the VMs they have a role on)."""
    rows = consoles.audit_entries(
        session, vm, user, event, protocol, since, until, limit, scope=g.audit_filter()
    )
    return [AuditOut.model_validate(r, from_attributes=True) for r in rows]


# --- users and permissions -----------------------------------------------------------


def _user(session: Session, key: str, field: str = "user") -> User:
    u = session.get(User, key) or session.scalar(select(User).where(User.name == key))
    if u is None:
        raise NotFound(field, f"no user {key!r}")
    return u


def _user_out(session: Session, u: User) -> UserOut:
    return UserOut(id=u.id, name=u.name, roles=auth.system_roles(session, u))


@router.get("/users", response_model=list[UserOut])
def list_users(session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    require_admin(g, "list users")
    return [_user_out(session, u) for u in session.scalars(select(User).order_by(User.name))]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserIn, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    """A local user; `roles` are granted on the whole system (POST /permissions for one object)."""
    require_admin(g, "create users")
    service.check_not_id(body.name)
    if session.scalar(select(User).where(User.name == body.name)) is not None:
        raise Conflict("name", f"a user named {body.name!r} already exists")
    u = User(name=body.name, password_hash=auth.hash_password(body.password))
    session.add(u)
    session.flush()
    for role in dict.fromkeys(body.roles):
        auth.grant(session, u, role)
    return _user_out(session, u)


@router.delete("/users/{name}", status_code=204)
def delete_user(name: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    """Remove a user with their permissions and tokens."""
    require_admin(g, "remove users")
    u = _user(session, name, "name")
    if u.id == g.user.id:
        raise Conflict("name", "you cannot remove yourself: log in as another administrator")
    if permissions.system_admins(session) == {u.id}:
        raise Conflict("name", f"{u.name} is the last administrator")
    session.execute(delete(Permission).where(Permission.user_id == u.id))
    session.execute(delete(LoginToken).where(LoginToken.user_id == u.id))
    session.delete(u)
    auth.forget_cached_logins()


def _permission_out(session: Session, p: Permission, user_name: str | None = None) -> PermissionOut:
    if user_name is None:
        u = session.get(User, p.user_id)
        user_name = u.name if u else p.user_id
    return PermissionOut(
        id=p.id,
        user=user_name,
        role=p.role,
        object_type=p.object_type,
        object_id=p.object_id,
        object_name=permissions.object_name(session, p.object_type, p.object_id),
    )


@router.get("/permissions", response_model=list[PermissionOut])
def list_permissions(
    user: str | None = Query(None, max_length=128, description="a user's name or id"),
    object_type: str | None = Query(None, pattern="^(system|cluster|vm|template)$"),
    object: str | None = Query(None, max_length=64, description="an object's name or id (with object_type)"),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """Every grant, or those of one user or one object."""
    require_admin(g, "list permissions")
    q = select(Permission).order_by(Permission.id)
    if user:
        q = q.where(Permission.user_id == _user(session, user).id)
    if object_type:
        q = q.where(Permission.object_type == object_type)
        if object:
            object_id, _ = permissions.resolve_object(session, object_type, object)
            q = q.where(Permission.object_id == object_id)
    elif object:
        raise EngineError("object_type", "name the object's type (cluster, vm or template)", 422)
    return [_permission_out(session, p) for p in session.scalars(q)]


@router.post("/permissions", response_model=PermissionOut, status_code=201)
def grant_permission(
    body: PermissionIn, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    """Grant a role to a user on the system, a cluster, a VM or a template."""
    require_admin(g, "grant permissions")
    u = _user(session, body.user)
    object_id, name = permissions.resolve_object(session, body.object_type, body.object)
    exists = session.scalar(
        select(Permission.id).where(
            Permission.user_id == u.id,
            Permission.role == body.role,
            Permission.object_type == body.object_type,
            Permission.object_id.is_(None) if object_id is None else Permission.object_id == object_id,
        )
    )
    where = "the system" if object_id is None else f"{body.object_type} {name!r}"
    if exists is not None:
        raise Conflict("role", f"{u.name} already has {body.role} on {where}")
    p = auth.grant(session, u, body.role, body.object_type, object_id)
    return _permission_out(session, p, u.name)


@router.delete("/permissions/{permission_id}", status_code=204)
def revoke_permission(
    permission_id: int, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    require_admin(g, "revoke permissions")
    p = session.get(Permission, permission_id)
    if p is None:
        raise NotFound("permission", f"no permission {permission_id}")
    if (
        p.object_type == "system"
        and p.role == auth.ROLE_ADMIN
        and permissions.system_admins(session) == {p.user_id}
    ):
        raise Conflict("permission", "this is the last administrator's admin role")
    session.delete(p)


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
def check_rules(
    body: RuleCheckIn, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    """Every rule a display configuration breaks, for forms to explain before submit."""
    level, arch = body.compat_level, body.arch
    if body.cluster:
        c = require_cluster(session, g, body.cluster, None, "see")
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
    g: Grants = Depends(grants),
):
    """A live thumbnail of a running VM's screen, taken without opening (or disturbing) a console."""
    vm = require_vm(session, g, key, CONSOLE_USER, "see the screen of")
    screenshot_rate(request, g.user)
    at_once: auth.AtOnce | None = getattr(request.app.state, "screenshots_at_once", None)
    if at_once is not None and not at_once.enter(g.user.id):
        # A browser asks 6 at most at once: more is a script, which must not take every thread.
        raise auth.TooManyRequests(
            f"too many screenshots at once: {g.user.name} may wait on {at_once.limit} at a time", 1
        )
    try:
        png = service.screenshot(session, request.app.state.agents, vm.id, width, screen)
    finally:
        if at_once is not None:
            at_once.leave(g.user.id)
    return Response(png, media_type="image/png", headers=NO_STORE)


# --- typing into a VM ------------------------------------------------------------------


@router.post("/vms/{key}/keys", response_model=KeysOut)
def vm_keys(
    key: str,
    body: KeysIn,
    request: Request,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """Type text (with the VM's keyboard layout) or press named keys on a running VM, as if on
    its keyboard: works with any console and nothing in the guest. Audited without the text."""
    from multiconsole.engine import keys

    vm = require_vm(session, g, key, CONSOLE_USER, "type into")
    if body.keys is not None:
        keys.check_keys(body.keys)
    limiter: auth.RateLimiter | None = getattr(request.app.state, "keys_limiter", None)
    wait = limiter.hit(g.user.id) if limiter is not None else None
    if wait is not None:
        raise auth.TooManyRequests(
            f"too much typing: {g.user.name} may send {limiter.limit} texts or keys in "
            f"{limiter.window:g} s; try again in {max(1, round(wait))} s",
            wait,
        )
    t = keys.target(session, request.app.state.agents, vm)
    user_name = g.user.name
    session.commit()  # no database connection is held while the host types
    sent = keys.Sent()
    try:
        keys.send(t, body.text, body.keys, sent)
    finally:
        if sent.keys:
            consoles.audit(
                session,
                "keys typed",
                user_name,
                SimpleNamespace(id=t.vm_id, name=t.vm_name),  # type: ignore[arg-type]
                client_address=auth.client_address.get(),
                detail=keys.audit_detail(body.text, body.keys, sent, t.layout),
            )
            session.commit()
    return KeysOut(vm=t.vm_name, keyboard_layout=t.layout, characters=sent.characters, keys_sent=sent.keys)
