"""Who may do what to which object: roles granted per system, cluster, VM and template.

A user's roles on a VM are the grants on the system, on the VM's cluster and on the VM;
on a template, the grants on the system, the template's cluster and the template. The
admin role implies every role where it is granted; the system admin may do everything.

    read a VM, list VMs                 any role on the VM (lists show only those)
    create a VM                         vm_operator on the cluster
    start, stop, edit, remove a VM      vm_operator on the VM
    consoles, tickets, .vv, proxy
    tickets, /console, screenshots      console_user on the VM
    take over another user's console    console_reconnect on the VM (or its allow_reconnect)
    templates: create, edit, remove     admin or vm_operator on the template's cluster
                                        (a template without cluster: on the system)
    read a template                     any role on it; templates of no cluster: everybody
    clusters, hosts, users,
    permissions: writes                 admin on the system
    read clusters and hosts             a role on the cluster or on a VM or template in it
    read users and permissions          admin on the system (GET /me: one's own grants)
    audit log                           the system admin all; others the entries of VMs they see

Whoever has no role at all on a VM is told there is no such VM (404, as if it did not
exist); whoever has some role but not the one needed is told which (403).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, delete, false, or_, select, true
from sqlalchemy.orm import Session

from multiconsole.engine import auth
from multiconsole.engine.auth import CONSOLE_USER, ROLE_ADMIN, ROLES, VM_OPERATOR
from multiconsole.engine.db import AuditEntry, Cluster, Permission, Template, User, Vm
from multiconsole.engine.errors import EngineError, NotFound

OBJECT_TYPES = ("system", "cluster", "vm", "template")


class Forbidden(EngineError):
    status = 403


def expand(roles: Iterable[str]) -> frozenset[str]:
    roles = frozenset(roles)
    return frozenset(ROLES) if ROLE_ADMIN in roles else roles


@dataclass
class Grants:
    """Everything one user was granted, loaded once per request."""

    user: User
    system: frozenset[str] = frozenset()
    objects: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def load(cls, session: Session, user: User) -> Grants:
        g = cls(user)
        system = set()
        for p in session.scalars(select(Permission).where(Permission.user_id == user.id)):
            if p.object_type == "system":
                system.add(p.role)
            elif p.object_id is not None:
                g.objects[(p.object_type, p.object_id)].add(p.role)
        g.system = frozenset(system)
        return g

    @property
    def is_admin(self) -> bool:
        return ROLE_ADMIN in self.system

    def _ids(self, object_type: str) -> set[str]:
        return {oid for (t, oid), roles in self.objects.items() if t == object_type and roles}

    def on_cluster(self, cluster_id: str | None) -> frozenset[str]:
        own = self.objects.get(("cluster", cluster_id), set()) if cluster_id else set()
        return expand(self.system | own)

    def on_vm(self, vm: Vm) -> frozenset[str]:
        return expand(
            self.system
            | self.objects.get(("cluster", vm.cluster_id), set())
            | self.objects.get(("vm", vm.id), set())
        )

    def on_template(self, t: Template) -> frozenset[str]:
        cluster = self.objects.get(("cluster", t.cluster_id), set()) if t.cluster_id else set()
        return expand(self.system | cluster | self.objects.get(("template", t.id), set()))

    # --- what lists show -------------------------------------------------------------

    def vm_filter(self) -> ColumnElement[bool]:
        """The VMs this user may see, as a WHERE clause on Vm."""
        if self.system:
            return true()
        vms, clusters = self._ids("vm"), self._ids("cluster")
        if not vms and not clusters:
            return false()
        return or_(Vm.id.in_(vms), Vm.cluster_id.in_(clusters))

    def template_filter(self) -> ColumnElement[bool]:
        """Templates this user may see: with a role on them, and those of no cluster (shared)."""
        if self.system:
            return true()
        return or_(
            Template.cluster_id.is_(None),
            Template.cluster_id.in_(self._ids("cluster")),
            Template.id.in_(self._ids("template")),
        )

    def visible_cluster_ids(self, session: Session) -> set[str] | None:
        """Clusters this user has a role on or holds a VM or template of; None: all."""
        if self.system:
            return None
        ids = set(self._ids("cluster"))
        vms, templates = self._ids("vm"), self._ids("template")
        if vms:
            ids |= set(session.scalars(select(Vm.cluster_id).where(Vm.id.in_(vms))))
        if templates:
            ids |= {
                c for c in session.scalars(select(Template.cluster_id).where(Template.id.in_(templates))) if c
            }
        return ids

    def audit_filter(self) -> ColumnElement[bool]:
        """Audit entries this user may read: all for the admin, else those of VMs they see."""
        if self.is_admin:
            return true()
        if self.system:
            return AuditEntry.vm_id.is_not(None)
        return AuditEntry.vm_id.in_(select(Vm.id).where(self.vm_filter()))


def grants_of(session: Session, user: User) -> Grants:
    return Grants.load(session, user)


# --- checks the routes make ------------------------------------------------------------


def require_admin(g: Grants, action: str) -> None:
    if not g.is_admin:
        raise Forbidden(None, f"{g.user.name} may not {action}: needs admin on the system")


def _no_vm(key: str) -> NotFound:
    # Word for word what a missing VM gets (service.get_vm): nothing tells them apart.
    return NotFound("vm", f"no VM {key!r}")


def vm_roles(session: Session, g: Grants, key: str) -> tuple[Vm, frozenset[str]]:
    """A VM this user may see and their roles on it; 404 if there is none they may see."""
    from multiconsole.engine.service import get_vm

    try:
        vm = get_vm(session, key)
    except NotFound:
        raise _no_vm(key) from None
    roles = g.on_vm(vm)
    if not roles:
        raise _no_vm(key)
    return vm, roles


def require_vm(session: Session, g: Grants, key: str, role: str | None, action: str) -> Vm:
    """The VM `key` if this user holds `role` on it (None: any role, i.e. may see it).

    404 when they may not even see it, 403 naming the role when they may see but not act."""
    vm, roles = vm_roles(session, g, key)
    if role is not None and role not in roles:
        raise Forbidden(None, f"{g.user.name} may not {action} VM {vm.name!r}: needs {role} on it")
    return vm


def require_cluster(session: Session, g: Grants, key: str, role: str | None, action: str) -> Cluster:
    from multiconsole.engine.service import get_cluster

    cluster = get_cluster(session, key)  # 404 "no cluster 'x'", as below
    visible = g.visible_cluster_ids(session)
    if visible is not None and cluster.id not in visible:
        raise NotFound("cluster", f"no cluster {key!r}")
    if role is not None and role not in g.on_cluster(cluster.id):
        raise Forbidden(
            "cluster", f"{g.user.name} may not {action} in cluster {cluster.name!r}: needs {role} on it"
        )
    return cluster


def template_visible(g: Grants, t: Template) -> bool:
    return t.cluster_id is None or bool(g.on_template(t))


def require_template(session: Session, g: Grants, key: str, action: str | None, field: str = "template"):
    """A template this user may see (404 otherwise); with `action`, one they may change:
    admin or vm_operator on it (its cluster, or the system)."""
    from multiconsole.engine.service import get_template

    try:
        t = get_template(session, key)
    except NotFound:
        raise NotFound(field, f"no template {key!r}") from None
    if not template_visible(g, t):
        raise NotFound(field, f"no template {key!r}")
    if action is not None and VM_OPERATOR not in g.on_template(t):
        where = "its cluster" if t.cluster_id else "the system"
        raise Forbidden(
            None,
            f"{g.user.name} may not {action} template {t.name!r}: needs vm_operator or admin on {where}",
        )
    return t


def require_template_create(session: Session, g: Grants, cluster_key: str | None) -> None:
    if cluster_key:
        require_cluster(session, g, cluster_key, VM_OPERATOR, "create templates")
    elif VM_OPERATOR not in expand(g.system):
        raise Forbidden(
            None,
            f"{g.user.name} may not create templates without a cluster: needs vm_operator or admin "
            "on the system",
        )


def may_open_consoles(g: Grants, vm: Vm) -> bool:
    return CONSOLE_USER in g.on_vm(vm)


def may_take_over(session: Session, user: User, vm: Vm) -> bool:
    """console_reconnect on this VM (its cluster, the system)."""
    return auth.CONSOLE_RECONNECT in Grants.load(session, user).on_vm(vm)


def user_may_open_console(session: Session, user_name: str, vm_id: str) -> bool:
    """For the proxy: whether the user named in a ticket may (still) open this VM's console."""
    user = session.scalar(select(User).where(User.name == user_name))
    vm = session.get(Vm, vm_id)
    if user is None or vm is None:
        return False
    return may_open_consoles(Grants.load(session, user), vm)


# --- the objects of permissions ---------------------------------------------------------


def resolve_object(session: Session, object_type: str, key: str | None) -> tuple[str | None, str | None]:
    """(id, name) of the object a grant is on; 404 on field "object" if there is none."""
    from multiconsole.engine import service

    if object_type == "system":
        if key:
            raise EngineError("object", "a system-wide grant names no object", 422)
        return None, None
    if not key:
        raise EngineError("object", f"name the {object_type} (its name or id)", 422)
    find = {"cluster": service.get_cluster, "vm": service.get_vm, "template": service.get_template}
    try:
        obj = find[object_type](session, key)
    except NotFound:
        raise NotFound("object", f"no {object_type} {key!r}") from None
    return obj.id, obj.name


def object_name(session: Session, object_type: str, object_id: str | None) -> str | None:
    model = {"cluster": Cluster, "vm": Vm, "template": Template}.get(object_type)
    if model is None or object_id is None:
        return None
    obj = session.get(model, object_id)
    return obj.name if obj is not None else None


def forget(session: Session, object_type: str, object_id: str) -> None:
    """A removed object's grants go with it."""
    session.execute(
        delete(Permission).where(Permission.object_type == object_type, Permission.object_id == object_id)
    )


def system_admins(session: Session) -> set[str]:
    return set(
        session.scalars(
            select(Permission.user_id).where(
                Permission.object_type == "system", Permission.role == ROLE_ADMIN
            )
        )
    )
