"""VMs: list (with search), get, add from a template in a cluster, remove, start, stop,
and the VM-level console ticket."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from multiconsole.domain.devices import GraphicsType
from multiconsole.engine import permissions, service
from multiconsole.engine.auth import CONSOLE_USER, VM_OPERATOR
from multiconsole.engine.db import Cluster, Host, Vm
from multiconsole.engine.errors import EngineError
from multiconsole.engine.ovirt import render, search, xml
from multiconsole.engine.ovirt.consoles import console_ticket
from multiconsole.engine.ovirt.deps import db, grants, raw_body
from multiconsole.engine.ovirt.faults import FaultRoute
from multiconsole.engine.permissions import Grants
from multiconsole.engine.schemas import VmIn

router = APIRouter(route_class=FaultRoute)

STATUS_VALUES = {ovirt: ours for ours, ovirt in render.VM_STATUS.items()}
# oVirt's field names for the engine's, in errors about a new VM.
FIELD_NAMES = {
    "memory_mib": "memory",
    "vcpus": "cpu.topology",
    "os_type": "os.type",
    "consoles": "display.type",
}


@router.get("/vms")
def list_vms(
    search_: str | None = Query(None, alias="search", max_length=search.MAX_QUERY),
    max_: int | None = Query(None, alias="max", ge=0, le=search.MAX_RESULTS),
    case_sensitive: str | None = None,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    q = (
        select(Vm)
        .where(g.vm_filter())
        .order_by(Vm.name)
        .options(selectinload(Vm.consoles), selectinload(Vm.cluster), selectinload(Vm.host))
    )
    columns = {
        "name": Vm.name,
        "status": Vm.status,
        "cluster": select(Cluster.name).where(Cluster.id == Vm.cluster_id).scalar_subquery(),
        "host": select(Host.name).where(Host.id == Vm.host_id).scalar_subquery(),
    }
    q = search.filtered(session, q, search_, columns, {"status": STATUS_VALUES}, case_sensitive)
    if max_ is not None:
        q = q.limit(max_)
    vms = session.scalars(q).all()
    return xml.response(
        xml.collection("vms", [render.vm(v, permissions.may_open_consoles(g, v)) for v in vms])
    )


def _new_vm_fields(body: xml.etree._Element) -> dict:
    fields: dict = {"name": xml.child_text(body, "name")}
    if fields["name"] is None:
        raise EngineError("name", "Vm [name] required for add", 400)
    cluster_id, cluster_name = xml.ref(body, "cluster")
    if not (cluster_id or cluster_name):
        raise EngineError("cluster", "Vm [cluster.id|name] required for add", 400)
    fields["cluster"] = cluster_id or cluster_name
    template_id, template_name = xml.ref(body, "template")
    template = template_id or template_name
    if template and template not in (render.BLANK_ID, render.BLANK_NAME):
        fields["template"] = template
    memory = xml.integer(body, "memory", "memory")
    if memory is not None:
        fields["memory_mib"] = memory // render.MIB
    topology = body.find("cpu/topology")
    if topology is not None:
        counts = [xml.integer(topology, t, f"cpu.topology.{t}") or 1 for t in ("sockets", "cores", "threads")]
        fields["vcpus"] = counts[0] * counts[1] * counts[2]
    fields["os_type"] = xml.child_text(body, "os/type")
    display_type = xml.child_text(body, "display/type")
    if display_type is not None:
        if display_type not in {g.value for g in GraphicsType}:
            raise EngineError("display.type", f"{display_type[:64]!r} is not spice or vnc", 400)
        fields["consoles"] = [display_type]
    try:
        checked = VmIn.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "vm"
        raise EngineError(FIELD_NAMES.get(name, name), first["msg"], 400) from None
    return checked.model_dump(exclude_unset=True, mode="json")


@router.post("/vms", status_code=201)
def add_vm(
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    fields = _new_vm_fields(xml.parse(body, "vm"))
    permissions.require_cluster(session, g, fields["cluster"], VM_OPERATOR, "create VMs")
    if fields.get("template"):
        permissions.require_template(session, g, fields["template"], None)
    vm = service.create_vm(session, fields)
    location = str(request.base_url).rstrip("/") + render.vm_href(vm.id)
    return xml.response(render.vm(vm, permissions.may_open_consoles(g, vm)), 201, {"Location": location})


@router.get("/vms/{vm_id}")
def get_vm(vm_id: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    vm = permissions.require_vm(session, g, vm_id, None, "see")
    return xml.response(render.vm(vm, permissions.may_open_consoles(g, vm)))


@router.delete("/vms/{vm_id}")
def remove_vm(
    vm_id: str,
    request: Request,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    vm = permissions.require_vm(session, g, vm_id, VM_OPERATOR, "remove")
    service.delete_vm(session, vm.id, request.app.state.agents)
    permissions.forget(session, "vm", vm.id)
    return xml.response(render.action())


@router.post("/vms/{vm_id}/start")
def start_vm(
    vm_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    xml.parse(body, "action", empty_ok=True)
    vm = permissions.require_vm(session, g, vm_id, VM_OPERATOR, "start")
    service.start_vm(session, request.app.state.agents, vm.id, request.app.state.monitor.poke)
    return xml.response(render.action())


@router.post("/vms/{vm_id}/stop")
def stop_vm(
    vm_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    xml.parse(body, "action", empty_ok=True)
    vm = permissions.require_vm(session, g, vm_id, VM_OPERATOR, "stop")
    service.stop_vm(session, request.app.state.agents, vm.id)
    return xml.response(render.action())


@router.post("/vms/{vm_id}/ticket")
def vm_ticket(
    vm_id: str,
    request: Request,
    body: bytes = Depends(raw_body),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """A ticket for the VM's console: SPICE when it runs both (as oVirt's VM ticket)."""
    action = xml.parse(body, "action", empty_ok=True)
    vm = permissions.require_vm(session, g, vm_id, CONSOLE_USER, "open the consoles of")
    running = [c.protocol for c in vm.consoles]
    protocol = "spice" if "spice" in running or not running else running[0]
    return console_ticket(request, session, g, vm, protocol, action)
