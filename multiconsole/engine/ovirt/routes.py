"""The oVirt API's router: SSO, then /ovirt-engine/api with the root, clusters, hosts,
templates, VMs and consoles; anything else under it is a 404 fault, not the engine's JSON."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from multiconsole.engine import permissions
from multiconsole.engine.db import Cluster, Host, Template, Vm, now
from multiconsole.engine.errors import NotFound
from multiconsole.engine.ovirt import consoles, render, search, sso, vms, xml
from multiconsole.engine.ovirt.deps import api_version, db, grants
from multiconsole.engine.ovirt.faults import FaultRoute
from multiconsole.engine.permissions import Grants
from multiconsole.engine.service import ON_HOST

api_router = APIRouter(
    prefix="/ovirt-engine/api",
    route_class=FaultRoute,
    dependencies=[Depends(api_version)],
    include_in_schema=False,
)
HOST_STATUS_VALUES = {ovirt: ours for ours, ovirt in render.HOST_STATUS.items()}


@api_router.get("")
@api_router.get("/")
def root(session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    """The entry point; the SDK's connection.test() reads it."""
    vm_filter = g.vm_filter()
    total = session.scalar(select(func.count()).select_from(Vm).where(vm_filter)) or 0
    up = session.scalar(select(func.count()).select_from(Vm).where(vm_filter, Vm.status.in_(ON_HOST))) or 0
    hq = select(Host)
    visible = g.visible_cluster_ids(session)
    if visible is not None:
        hq = hq.where(Host.cluster_id.in_(visible))
    hosts = session.scalars(hq).all()
    counts = {"hosts": (sum(h.status == "Up" for h in hosts), len(hosts)), "vms": (up, total)}
    return xml.response(render.api_root(g.user.id, now(), counts))


def _limit(q, max_: int | None):
    return q.limit(max_) if max_ is not None else q


# --- clusters ---------------------------------------------------------------------------------


@api_router.get("/clusters")
def list_clusters(
    search_: str | None = Query(None, alias="search", max_length=search.MAX_QUERY),
    max_: int | None = Query(None, alias="max", ge=0, le=search.MAX_RESULTS),
    case_sensitive: str | None = None,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    q = select(Cluster).order_by(Cluster.name)
    visible = g.visible_cluster_ids(session)
    if visible is not None:
        q = q.where(Cluster.id.in_(visible))
    q = _limit(search.filtered(session, q, search_, {"name": Cluster.name}, None, case_sensitive), max_)
    return xml.response(xml.collection("clusters", [render.cluster(c) for c in session.scalars(q)]))


@api_router.get("/clusters/{cluster_id}")
def get_cluster(
    cluster_id: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    return xml.response(render.cluster(permissions.require_cluster(session, g, cluster_id, None, "see")))


# --- hosts ---------------------------------------------------------------------------------------


@api_router.get("/hosts")
def list_hosts(
    search_: str | None = Query(None, alias="search", max_length=search.MAX_QUERY),
    max_: int | None = Query(None, alias="max", ge=0, le=search.MAX_RESULTS),
    case_sensitive: str | None = None,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    q = select(Host).order_by(Host.name)
    visible = g.visible_cluster_ids(session)
    if visible is not None:
        q = q.where(Host.cluster_id.in_(visible))
    columns = {
        "name": Host.name,
        "status": Host.status,
        "cluster": select(Cluster.name).where(Cluster.id == Host.cluster_id).scalar_subquery(),
    }
    q = _limit(
        search.filtered(session, q, search_, columns, {"status": HOST_STATUS_VALUES}, case_sensitive), max_
    )
    return xml.response(xml.collection("hosts", [render.host(h) for h in session.scalars(q)]))


@api_router.get("/hosts/{host_id}")
def get_host(host_id: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    host = session.get(Host, host_id) or session.scalar(select(Host).where(Host.name == host_id))
    visible = g.visible_cluster_ids(session)
    if host is None or (visible is not None and host.cluster_id not in visible):
        raise NotFound("host", f"no host {host_id!r}")
    return xml.response(render.host(host))


# --- templates ------------------------------------------------------------------------------------


@api_router.get("/templates")
def list_templates(
    search_: str | None = Query(None, alias="search", max_length=search.MAX_QUERY),
    max_: int | None = Query(None, alias="max", ge=0, le=search.MAX_RESULTS),
    case_sensitive: str | None = None,
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    q = select(Template).where(g.template_filter()).order_by(Template.name)
    columns = {
        "name": Template.name,
        "cluster": select(Cluster.name).where(Cluster.id == Template.cluster_id).scalar_subquery(),
    }
    q = _limit(search.filtered(session, q, search_, columns, None, case_sensitive), max_)
    return xml.response(xml.collection("templates", [render.template(t) for t in session.scalars(q)]))


@api_router.get("/templates/{template_id}")
def get_template(
    template_id: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    return xml.response(render.template(permissions.require_template(session, g, template_id, None)))


api_router.include_router(vms.router)
api_router.include_router(consoles.router)


@api_router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def unknown(path: str, g: Grants = Depends(grants)):
    """What this engine does not serve of oVirt's API (after logging in, as oVirt)."""
    raise NotFound(None, f"no resource or action /ovirt-engine/api/{path[:200]} on this engine")


router = APIRouter()
router.include_router(sso.router)
router.include_router(api_router)
