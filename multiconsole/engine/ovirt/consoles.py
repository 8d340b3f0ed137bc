"""Graphics consoles of VMs and templates (reference §6).

Without `current=true` a list shows the configured consoles (for a running VM, those of its
next run, as oVirt); with it, the consoles the running VM has, with address and ports. Adding
or removing changes the configuration through the engine's rules (domain/display.py):
one console per protocol, the last one removed makes the VM headless, a running VM gets it
at its next start.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from lxml import etree
from sqlalchemy.orm import Session

from multiconsole.domain.devices import GraphicsType
from multiconsole.domain.display import DisplayConfig
from multiconsole.domain.errors import FieldError
from multiconsole.engine import api, permissions, service
from multiconsole.engine import consoles as engine_consoles
from multiconsole.engine.auth import CONSOLE_USER, VM_OPERATOR
from multiconsole.engine.db import Host, Template, Vm
from multiconsole.engine.errors import Conflict, EngineError, NotFound
from multiconsole.engine.ovirt import render, search, xml
from multiconsole.engine.ovirt.deps import db, grants, raw_body
from multiconsole.engine.ovirt.faults import FaultRoute
from multiconsole.engine.permissions import Grants
from multiconsole.proxy import tickets
from multiconsole.wire import vvfile

router = APIRouter(route_class=FaultRoute)
NO_STORE = {"Cache-Control": "no-store"}
OPEN = "open the consoles of"


def _current(value: str | None) -> bool:
    return bool(xml.boolean(value, "current"))


def vm_display(vm: Vm) -> DisplayConfig:
    """What the VM will run with next: its next-run configuration, if it has one."""
    if vm.next_run and "display" in vm.next_run:
        return DisplayConfig.from_json(vm.next_run["display"])
    return DisplayConfig.from_json(vm.display)


def _display_fields(d: DisplayConfig) -> dict:
    return {"consoles": [g.value for g in d.graphics], "video": d.video.value, "monitors": d.monitors}


def _protocol_from(body: etree._Element) -> GraphicsType:
    text = xml.child_text(body, "protocol")
    if text is None:
        raise EngineError("protocol", "GraphicsConsole [protocol] required for add", 400)
    try:
        return GraphicsType(text.lower())
    except ValueError:
        raise EngineError(
            "protocol", f"{text[:64]!r} is not a graphics protocol: spice or vnc", 400
        ) from None


def _changed(d: DisplayConfig, change, gtype: GraphicsType, what: str) -> DisplayConfig:
    try:
        return change(d, gtype)
    except FieldError as err:
        # A duplicate, or a console that is not there: the operation fails (oVirt's 409).
        raise Conflict(err.field, f"{what}: {err.reason}") from None


def _apply(update, key: str, d: DisplayConfig, session: Session) -> None:
    """Store the new display through the service (its rules); a broken rule is a 409."""
    try:
        update(session, key, _display_fields(d))
    except EngineError as err:
        if err.status == 422:
            raise Conflict(err.field, err.reason) from None
        raise


def _location(request: Request, href: str) -> dict[str, str]:
    return {"Location": str(request.base_url).rstrip("/") + href}


# --- VMs -------------------------------------------------------------------------------------


def _vm_consoles(vm: Vm, g: Grants, current: bool) -> list[etree._Element]:
    href = render.vm_href(vm.id)
    if current:
        # Where a console listens is for those who may open it (as /api/v1).
        show = permissions.may_open_consoles(g, vm)
        return [render.console(c.protocol, "vm", href, vm.id, c if show else None) for c in vm.consoles]
    return [render.console(p, "vm", href, vm.id) for p in vm_display(vm).graphics]


@router.get("/vms/{vm_id}/graphicsconsoles")
def list_vm_consoles(
    vm_id: str,
    current: str | None = None,
    max_: int | None = Query(None, alias="max", ge=0, le=search.MAX_RESULTS),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    vm = permissions.require_vm(session, g, vm_id, None, "see")
    items = _vm_consoles(vm, g, _current(current))
    return xml.response(xml.collection("graphics_consoles", items[:max_] if max_ is not None else items))


@router.post("/vms/{vm_id}/graphicsconsoles", status_code=201)
def add_vm_console(
    vm_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    gtype = _protocol_from(xml.parse(body, "graphics_console"))
    vm = permissions.require_vm(session, g, vm_id, VM_OPERATOR, "edit")
    d = _changed(vm_display(vm), DisplayConfig.with_console, gtype, f"cannot add a console to VM {vm.name!r}")
    _apply(service.update_vm, vm.id, d, session)
    el = render.console(gtype, "vm", render.vm_href(vm.id), vm.id)
    return xml.response(el, 201, _location(request, el.get("href")))


@router.get("/vms/{vm_id}/graphicsconsoles/{console_id}")
def get_vm_console(
    vm_id: str,
    console_id: str,
    request: Request,
    current: str | None = None,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """One console; with `Accept: application/x-virt-viewer`, its remote-viewer file."""
    if vvfile.MIME in (request.headers.get("accept") or ""):
        vm = permissions.require_vm(session, g, vm_id, CONSOLE_USER, OPEN)
        text = _viewer_file(request, session, g, vm, console_id)
        if text is None:
            return Response(status_code=204)
        return Response(text, media_type=vvfile.MIME, headers=NO_STORE)
    vm = permissions.require_vm(session, g, vm_id, None, "see")
    gtype = render.protocol_of(console_id, f"VM {vm.name!r}")
    found = [el for el in _vm_consoles(vm, g, _current(current)) if el.get("id") == console_id]
    if not found:
        raise NotFound("graphics_console", f"VM {vm.name!r} has no {gtype.value} console")
    return xml.response(found[0])


@router.delete("/vms/{vm_id}/graphicsconsoles/{console_id}")
def remove_vm_console(
    vm_id: str, console_id: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    vm = permissions.require_vm(session, g, vm_id, VM_OPERATOR, "edit")
    gtype = render.protocol_of(console_id, f"VM {vm.name!r}")
    if gtype not in vm_display(vm).graphics:
        raise NotFound("graphics_console", f"VM {vm.name!r} has no {gtype.value} console")
    d = _changed(
        vm_display(vm), DisplayConfig.without_console, gtype, f"cannot remove the console of {vm.name!r}"
    )
    _apply(service.update_vm, vm.id, d, session)
    # The SDK accepts only 200 for a removal.
    return xml.response(render.action())


# --- tickets ---------------------------------------------------------------------------------


def console_ticket(
    request: Request, session: Session, g: Grants, vm: Vm, protocol: str, action: etree._Element
) -> Response:
    """`<action><ticket><value/><expiry/></ticket></action>`: a one-time password, valid
    `expiry` seconds (default 7200, as oVirt's ticket action)."""
    if xml.child_text(action, "ticket/value") is not None:
        raise EngineError(
            "ticket.value",
            "the engine chooses console passwords (one-time, 8 characters): leave value out",
            400,
        )
    ttl = xml.integer(action, "ticket/expiry", "ticket.expiry")
    if ttl is None:
        ttl = engine_consoles.TICKET_TTL_MAX
    api.ticket_rate(request, g.user)
    # oVirt gives the console to whoever may take it over; the engine still refuses others.
    t = engine_consoles.issue_ticket(
        session, request.app.state.agents, vm.id, protocol, g.user, ttl, None, take_over=True
    )
    ticket = xml.element("ticket")
    xml.sub(ticket, "expiry", t["ttl"])
    xml.sub(ticket, "value", t["password"])
    return xml.response(render.action("complete", ticket), headers=NO_STORE)


def _console_vm(session: Session, g: Grants, vm_id: str, console_id: str) -> tuple[Vm, GraphicsType]:
    vm = permissions.require_vm(session, g, vm_id, CONSOLE_USER, OPEN)
    gtype = render.protocol_of(console_id, f"VM {vm.name!r}")
    if gtype not in DisplayConfig.from_json(vm.display).graphics and gtype.value not in {
        c.protocol for c in vm.consoles
    }:
        raise NotFound("graphics_console", f"VM {vm.name!r} has no {gtype.value} console")
    return vm, gtype


@router.post("/vms/{vm_id}/graphicsconsoles/{console_id}/ticket")
def ticket(
    vm_id: str,
    console_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    action = xml.parse(body, "action", empty_ok=True)
    vm, gtype = _console_vm(session, g, vm_id, console_id)
    return console_ticket(request, session, g, vm, gtype.value, action)


def _viewer_file(request: Request, session: Session, g: Grants, vm: Vm, console_id: str) -> str | None:
    """The remote-viewer file of a running VM's console (a fresh 120 s ticket); None when
    the VM does not run."""
    vm, gtype = _console_vm(session, g, vm.id, console_id)
    if vm.status not in engine_consoles.CONSOLE_STATES:
        return None
    api.ticket_rate(request, g.user)
    t = engine_consoles.issue_ticket(
        session,
        request.app.state.agents,
        vm.id,
        gtype.value,
        g.user,
        engine_consoles.TICKET_TTL_DEFAULT,
        None,
        take_over=True,
    )
    return vvfile.from_ticket(t)


@router.post("/vms/{vm_id}/graphicsconsoles/{console_id}/remoteviewerconnectionfile")
def remote_viewer_connection_file(
    vm_id: str,
    console_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    xml.parse(body, "action", empty_ok=True)
    vm, _ = _console_vm(session, g, vm_id, console_id)
    text = _viewer_file(request, session, g, vm, console_id)
    if text is None:
        return Response(status_code=204)  # oVirt: no file while the VM is not running
    el = xml.element("action")
    xml.sub(el, "remote_viewer_connection_file", text)
    xml.sub(el, "status", "complete")
    return xml.response(el, headers=NO_STORE)


@router.post("/vms/{vm_id}/graphicsconsoles/{console_id}/proxyticket")
def proxy_ticket(
    vm_id: str,
    console_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """A signed, single-use ticket for the engine's websocket proxy, naming this console.
    The console's password is a separate ticket (as in oVirt)."""
    xml.parse(body, "action", empty_ok=True)
    vm, gtype = _console_vm(session, g, vm_id, console_id)
    if gtype.value not in tickets.CONSOLES:
        raise Conflict(
            "graphics_console", f"the websocket proxy serves {', '.join(sorted(tickets.CONSOLES))} only"
        )
    if request.app.state.proxy is None:
        raise Conflict(None, "the browser console is off: this engine runs no websocket proxy")
    api.ticket_rate(request, g.user)
    vm, live = engine_consoles.running_console(session, vm.id, gtype.value)
    host = session.get(Host, vm.host_id)
    token, _claims = tickets.issue(
        request.app.state.proxy_key, vm.id, gtype.value, host.address, live.port, g.user.name
    )
    proxy = xml.element("proxy_ticket")
    xml.sub(proxy, "value", token)
    return xml.response(render.action("complete", proxy), headers=NO_STORE)


# --- templates -----------------------------------------------------------------------------------


def _template_consoles(t: Template) -> list[etree._Element]:
    href = render.template_href(t.id)
    return [render.console(p, "template", href, t.id) for p in DisplayConfig.from_json(t.display).graphics]


@router.get("/templates/{template_id}/graphicsconsoles")
def list_template_consoles(
    template_id: str,
    max_: int | None = Query(None, alias="max", ge=0, le=search.MAX_RESULTS),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    t = permissions.require_template(session, g, template_id, None)
    items = _template_consoles(t)
    return xml.response(xml.collection("graphics_consoles", items[:max_] if max_ is not None else items))


@router.post("/templates/{template_id}/graphicsconsoles", status_code=201)
def add_template_console(
    template_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    gtype = _protocol_from(xml.parse(body, "graphics_console"))
    t = permissions.require_template(session, g, template_id, "edit")
    d = DisplayConfig.from_json(t.display)
    d = _changed(d, DisplayConfig.with_console, gtype, f"cannot add a console to template {t.name!r}")
    _apply(service.update_template, t.id, d, session)
    el = render.console(gtype, "template", render.template_href(t.id), t.id)
    return xml.response(el, 201, _location(request, el.get("href")))


@router.get("/templates/{template_id}/graphicsconsoles/{console_id}")
def get_template_console(
    template_id: str,
    console_id: str,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    t = permissions.require_template(session, g, template_id, None)
    gtype = render.protocol_of(console_id, f"template {t.name!r}")
    found = [el for el in _template_consoles(t) if el.get("id") == console_id]
    if not found:
        raise NotFound("graphics_console", f"template {t.name!r} has no {gtype.value} console")
    return xml.response(found[0])


@router.delete("/templates/{template_id}/graphicsconsoles/{console_id}")
def remove_template_console(
    template_id: str,
    console_id: str,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    t = permissions.require_template(session, g, template_id, "edit")
    gtype = render.protocol_of(console_id, f"template {t.name!r}")
    d = DisplayConfig.from_json(t.display)
    if gtype not in d.graphics:
        raise NotFound("graphics_console", f"template {t.name!r} has no {gtype.value} console")
    d = _changed(d, DisplayConfig.without_console, gtype, f"cannot remove the console of {t.name!r}")
    _apply(service.update_template, t.id, d, session)
    return xml.response(render.action())
