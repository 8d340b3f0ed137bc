"""The web UI: server-rendered pages (Jinja2, autoescaped) behind a cookie login.

Pages read through the REST API's own route functions, so they show exactly what the API
would show this user; everything that changes state is done by the UI's JavaScript calling
/api/v1 with the session cookie (api.current_user checks the cookie and the Origin).
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasicCredentials
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from multiconsole.domain.devices import VideoModel
from multiconsole.domain.display import DisconnectAction
from multiconsole.engine import api, auth, images_api
from multiconsole.engine.auth import CONSOLE_USER, VM_OPERATOR
from multiconsole.engine.db import Template, User, Vm
from multiconsole.engine.errors import EngineError
from multiconsole.engine.permissions import Grants
from multiconsole.engine.schemas import LoginIn

WEB = Path(__file__).parent
STATIC_DIR = WEB / "static"
STATIC_URL = "/static/ui"
templates = Environment(
    loader=FileSystemLoader(WEB / "templates"), autoescape=select_autoescape(["html"]), trim_blocks=True
)
NO_STORE = {"Cache-Control": "no-store"}
# Pages in the navigation: (path, label, admins only).
NAV = [
    ("/ui/vms", "VMs", False),
    ("/ui/templates", "Templates", False),
    ("/ui/images", "Images", False),
    ("/ui/hosts", "Hosts", False),
    ("/ui/clusters", "Clusters", False),
    ("/ui/audit", "Audit log", False),
    ("/ui/users", "Users and permissions", True),
]
# What the launcher offers for each configured console.
LAUNCHERS = {
    "spice": [("vv", "SPICE in remote-viewer")],
    "vnc": [("vv", "VNC in remote-viewer"), ("browser", "VNC in the browser")],
}

router = APIRouter(include_in_schema=False)


def page_user(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    basic: HTTPBasicCredentials | None = Depends(api._basic),
    bearer: HTTPAuthorizationCredentials | None = Depends(api._bearer),
) -> User | None:
    """The logged-in user, or None (pages then send the browser to the login page)."""
    if basic is None and bearer is None and not request.cookies.get(api.SESSION_COOKIE):
        return None
    try:
        return api.current_user(request, session, basic, bearer)
    except auth.Unauthorized:
        return None  # an expired or revoked session: log in again


def _to_login(request: Request) -> Response:
    if request.headers.get("x-fragment"):
        # The page's own refresh: a redirect would swap the login page into a table.
        return Response(status_code=401)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(target: str | None) -> str:
    """Only paths on this engine (no open redirect to another site)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target)  # browsers drop tabs: "/\t/evil"
    ):
        return "/ui/vms"
    return target


def _render(template_name: str, status: int = 200, **context) -> HTMLResponse:
    html = templates.get_template(template_name).render(static=STATIC_URL, **context)
    return HTMLResponse(html, status_code=status, headers=NO_STORE)


def _page(request: Request, session: Session, user: User, template_name: str, **context) -> HTMLResponse:
    g = context.pop("g", None) or Grants.load(session, user)
    status = context.pop("status", 200)
    nav = [(path, label) for path, label, admin in NAV if g.is_admin or not admin]
    return _render(template_name, status, me=user.name, nav=nav, current=request.url.path, **context)


# --- login ---------------------------------------------------------------------------


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/vms", status_code=303)


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/vms", status_code=303)


@router.get("/ui/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None):
    return _render("login.html", next=_safe_next(next), error=None, name="")


@router.post("/ui/login", response_class=HTMLResponse)
async def login_form(request: Request):
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    name, password, target = form.get("name", ""), form.get("password", ""), _safe_next(form.get("next"))

    def refuse(message: str, status: int, headers: dict | None = None) -> HTMLResponse:
        page = _render("login.html", status, next=target, error=message, name=name)
        # Retry-After of the login throttle only: a WWW-Authenticate challenge on this 401
        # page would make the browser replace it with its own password prompt.
        page.headers.update({k: v for k, v in (headers or {}).items() if k.lower() == "retry-after"})
        return page

    # Login CSRF: a foreign page must not log the browser in as somebody else.
    if not api.same_origin(request):
        return refuse("refused: the login form must be sent from this engine's own page", 403)
    if not name or not password:
        return refuse("enter your user name and password", 422)
    try:
        body = LoginIn(name=name, password=password)
    except ValueError:
        return refuse("the user name or password is too long", 422)
    # The REST login route does the checking (and any throttling); the token goes in a cookie.
    with request.app.state.sessions() as session:
        scratch = Response()
        try:
            out = api.login(body, request, scratch, session)
        except EngineError as err:
            return refuse(err.reason, err.status, getattr(err, "headers", None))
        session.commit()
    ttl = getattr(request.app.state.settings, "token_ttl", auth.TOKEN_TTL_DEFAULT)
    reply = RedirectResponse(target, status_code=303)
    reply.set_cookie(
        api.SESSION_COOKIE,
        out.token,
        max_age=ttl,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return reply


@router.post("/ui/logout")
def logout_form(request: Request, session: Session = Depends(api.db, scope="function")):
    if not api.same_origin(request):
        return _render(
            "login.html", 403, next="/ui/vms", error="refused: log out from this engine's page", name=""
        )
    token = request.cookies.get(api.SESSION_COOKIE)
    if token:
        auth.revoke_token(session, token)
    reply = RedirectResponse("/ui/login", status_code=303)
    reply.delete_cookie(api.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return reply


# --- VMs -----------------------------------------------------------------------------


def _vm_rows(session: Session, g: Grants) -> list[dict]:
    vms = session.scalars(
        select(Vm)
        .where(g.vm_filter())
        .order_by(Vm.name)
        .options(selectinload(Vm.consoles), selectinload(Vm.cluster), selectinload(Vm.host))
    ).all()
    rows = []
    for vm in vms:
        roles = g.on_vm(vm)
        out = api._vm_out(session, vm, g)
        may_console = CONSOLE_USER in roles
        live = {c.protocol: c for c in vm.consoles} if may_console else {}
        consoles = []
        if may_console:
            for protocol in out.display.consoles:
                c = live.get(protocol)
                consoles.append(
                    {
                        "protocol": protocol,
                        "address": c.address if c else None,
                        "port": c.port if c else None,
                        "tls_port": c.tls_port if c else None,
                        "holder": c.holder if c else None,
                        "client": c.client_address if c else None,
                        "launchers": LAUNCHERS.get(protocol, []),
                    }
                )
        # The dialog edits what the VM will have next: the pending configuration if any.
        pending = out.next_run
        edit = {
            "name": out.name,
            "cluster": out.cluster,
            "template": out.template,
            "os_type": (pending.os_type if pending and pending.os_type else out.os_type),
            "memory_mib": (pending.memory_mib if pending and pending.memory_mib else out.memory_mib),
            "vcpus": (pending.vcpus if pending and pending.vcpus else out.vcpus),
            **(pending.display if pending else out.display).model_dump(),
            **_drive_edit(out.drives),
            "pinned_to_host": out.pinned_to_host,
            "status": out.status,
        }
        rows.append(
            {
                "vm": out,
                "running": out.status not in ("Down", "Unknown") and bool(out.host),
                "may_console": may_console,
                "may_operate": VM_OPERATOR in roles,
                "consoles": consoles,
                "edit": edit,
            }
        )
    return rows


def _drive_edit(drives) -> dict:
    """The dialog's boot media controls: one CD-ROM, one disk (an image's overlay or empty), an order."""
    disk = drives.disks[0] if drives.disks else None
    return {
        "cdrom": drives.cdrom.name if drives.cdrom else "",
        "disk_image": (disk.image.name if disk.image else "") if disk else "",
        "disk_size_gib": disk.size_gib if disk else None,
        "boot": ",".join(drives.boot),
    }


def _dialog_context(session: Session, g: Grants) -> dict:
    image_list = images_api.list_images(session, g) if images_api.may_use_images(g) else []
    return {
        "isos": [i for i in image_list if i.format == "iso"],
        "disk_images": [i for i in image_list if i.format != "iso"],
        "clusters": api.list_clusters(session, g),
        "templates": api.list_templates(session, g),
        "os_types": api.os_types(),
        "videos": [v.value for v in VideoModel],
        "disconnect_actions": [a.value for a in DisconnectAction],
    }


@router.get("/ui/vms", response_class=HTMLResponse)
def vms_page(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    if user is None:
        return _to_login(request)
    g = Grants.load(session, user)
    may_create = g.is_admin or any(VM_OPERATOR in g.on_cluster(c.id) for c in api.list_clusters(session, g))
    return _page(
        request,
        session,
        user,
        "vms.html",
        g=g,
        rows=_vm_rows(session, g),
        may_create=may_create,
        now=int(time.time()),
        **_dialog_context(session, g),
    )


@router.get("/ui/vms/rows", response_class=HTMLResponse)
def vms_rows(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    """The VM table's body alone, for the page's periodic refresh."""
    if user is None:
        return Response(status_code=401)
    g = Grants.load(session, user)
    return _render("_vm_rows.html", rows=_vm_rows(session, g), now=int(time.time()))


# --- the other pages -----------------------------------------------------------------


@router.get("/ui/templates", response_class=HTMLResponse)
def templates_page(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    if user is None:
        return _to_login(request)
    g = Grants.load(session, user)
    rows = []
    for t in api.list_templates(session, g):
        orm = session.get(Template, t.id)
        may_edit = g.is_admin or (orm is not None and VM_OPERATOR in g.on_template(orm))
        edit = {
            "name": t.name,
            "cluster": t.cluster,
            "os_type": t.os_type,
            "memory_mib": t.memory_mib,
            "vcpus": t.vcpus,
            "description": t.description,
            **t.display.model_dump(),
            **_drive_edit(t.drives),
        }
        rows.append({"t": t, "may_edit": may_edit, "edit": edit})
    may_create = g.is_admin or any(VM_OPERATOR in g.on_cluster(c.id) for c in api.list_clusters(session, g))
    return _page(
        request,
        session,
        user,
        "templates.html",
        g=g,
        rows=rows,
        may_create=may_create,
        **_dialog_context(session, g),
    )


@router.get("/ui/images", response_class=HTMLResponse)
def images_page(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    if user is None:
        return _to_login(request)
    g = Grants.load(session, user)
    may_see = images_api.may_use_images(g)
    rows = (
        [images_api.get_image(i.id, session, g) for i in images_api.list_images(session, g)]
        if may_see
        else []
    )
    return _page(request, session, user, "images.html", g=g, rows=rows, may_see=may_see, is_admin=g.is_admin)


@router.get("/ui/hosts", response_class=HTMLResponse)
def hosts_page(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    if user is None:
        return _to_login(request)
    g = Grants.load(session, user)
    rows = []
    for h in api.list_hosts(session, g):
        caps = h.capabilities or {}
        virt = caps.get("virtType")
        accel = (
            {"kvm": "KVM", "qemu": "TCG", "test": "test driver"}.get(virt, "unknown") if virt else "unknown"
        )
        tls = caps.get("spiceTls")
        spice_tls = "unknown" if not isinstance(tls, bool) else ("yes" if tls else "no")
        rows.append({"h": h, "accel": accel, "spice_tls": spice_tls})
    return _page(request, session, user, "hosts.html", g=g, rows=rows)


@router.get("/ui/clusters", response_class=HTMLResponse)
def clusters_page(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    if user is None:
        return _to_login(request)
    g = Grants.load(session, user)
    return _page(request, session, user, "clusters.html", g=g, clusters=api.list_clusters(session, g))


@router.get("/ui/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    vm: str | None = None,
    user_name: str | None = None,
    event: str | None = None,
    protocol: str | None = None,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    if user is None:
        return _to_login(request)
    g = Grants.load(session, user)
    filters = {
        "vm": vm or None,
        "user": user_name or None,
        "event": event or None,
        "protocol": protocol or None,
    }
    entries = api.audit_log(
        vm=filters["vm"],
        user=filters["user"],
        event=filters["event"],
        protocol=filters["protocol"],
        since=None,
        until=None,
        limit=200,
        session=session,
        g=g,
    )
    return _page(request, session, user, "audit.html", g=g, entries=list(reversed(entries)), filters=filters)


@router.get("/ui/users", response_class=HTMLResponse)
def users_page(
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User | None = Depends(page_user),
):
    if user is None:
        return _to_login(request)
    g = Grants.load(session, user)
    if not g.is_admin:
        return _page(
            request,
            session,
            user,
            "error.html",
            g=g,
            status=403,
            status_message="Only administrators see users and permissions.",
        )
    return _page(
        request,
        session,
        user,
        "users.html",
        g=g,
        users=api.list_users(session, g),
        grants=api.list_permissions(user=None, object_type=None, object=None, session=session, g=g),
        roles=list(auth.ROLES),
    )
