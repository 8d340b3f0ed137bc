"""The engine's objects as oVirt's XML elements (the names of ovirt-engine-api-model's types).

Ids are the engine's own UUIDs; a graphics console's id is the hex of its protocol name
(spice -> 7370696365, vnc -> 766e63), as oVirt makes them.
"""

from __future__ import annotations

from datetime import datetime

from lxml import etree

from multiconsole.domain.devices import GraphicsType, VideoModel
from multiconsole.domain.display import DisplayConfig
from multiconsole.engine.db import Cluster, Host, Template, Vm, VmConsole
from multiconsole.engine.errors import NotFound
from multiconsole.engine.ovirt import xml
from multiconsole.engine.ovirt.xml import BASE, sub

# oVirt's enums are lower case with underscores; ours are CamelCase.
VM_STATUS = {
    "Down": "down",
    "Up": "up",
    "PoweringUp": "powering_up",
    "PoweringDown": "powering_down",
    "Paused": "paused",
    "Suspended": "suspended",
    "Migrating": "migrating",
    "Unknown": "unknown",
}
HOST_STATUS = {
    "Up": "up",
    "Maintenance": "maintenance",
    "NonResponsive": "non_responsive",
    "Installing": "installing",
}
# What oVirt's VideoType has (ovirtsdk4/types.py); the rest is left out.
OVIRT_VIDEO = {VideoModel.QXL, VideoModel.VGA, VideoModel.CIRRUS, VideoModel.BOCHS}
MIB = 1024 * 1024
# oVirt's "Blank" template: a VM made from nothing refers to it.
BLANK_ID = "00000000-0000-0000-0000-000000000000"
BLANK_NAME = "Blank"
# oVirt's product version the SDK sees in GET /api.
PRODUCT_VERSION = (4, 5, 0)


def console_id(protocol: str | GraphicsType) -> str:
    return str(protocol).encode().hex()


def protocol_of(cid: str, owner: str) -> GraphicsType:
    """The protocol a console id names; 404 for an id that names none."""
    try:
        return GraphicsType(bytes.fromhex(cid).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise NotFound("graphics_console", f"no graphics console {cid!r} on {owner}") from None


def vm_href(vm_id: str) -> str:
    return f"{BASE}/vms/{vm_id}"


def template_href(template_id: str) -> str:
    return f"{BASE}/templates/{template_id}"


def _version(parent: etree._Element, level: str) -> None:
    major, minor = level.split(".")
    v = sub(parent, "version")
    sub(v, "major", major)
    sub(v, "minor", minor)


# --- api, clusters, hosts ------------------------------------------------------------------


def api_root(user_id: str, now: datetime, counts: dict[str, tuple[int, int]]) -> etree._Element:
    root = xml.element("api")
    xml.rel_links(root, BASE, ("clusters", "hosts", "templates", "vms"))
    info = sub(root, "product_info")
    sub(info, "name", "multiconsole")
    sub(info, "vendor", "multiconsole")
    version = sub(info, "version")
    major, minor, build = PRODUCT_VERSION
    sub(version, "build", build)
    sub(version, "full_version", f"{major}.{minor}.{build}-multiconsole")
    sub(version, "major", major)
    sub(version, "minor", minor)
    sub(version, "revision", 0)
    summary = sub(root, "summary")
    for tag, (active, total) in counts.items():
        box = sub(summary, tag)
        sub(box, "active", active)
        sub(box, "total", total)
    sub(root, "time", now)
    xml.link(root, "authenticated_user", f"{BASE}/users/{user_id}", user_id)
    xml.link(root, "effective_user", f"{BASE}/users/{user_id}", user_id)
    return root


def cluster(c: Cluster) -> etree._Element:
    href = f"{BASE}/clusters/{c.id}"
    el = xml.element("cluster", href=href, id=c.id)
    sub(el, "name", c.name)
    sub(el, "description", c.description or "")
    cpu = sub(el, "cpu")
    sub(cpu, "architecture", c.arch)
    _version(el, c.compat_level)
    if c.console_address:
        display = sub(el, "display")
        sub(display, "proxy", c.console_address)
    return el


def host(h: Host) -> etree._Element:
    href = f"{BASE}/hosts/{h.id}"
    el = xml.element("host", href=href, id=h.id)
    sub(el, "name", h.name)
    sub(el, "address", h.address)
    sub(el, "port", h.port)
    sub(el, "status", HOST_STATUS.get(h.status, "unassigned"))
    if h.console_address:
        display = sub(el, "display")
        sub(display, "address", h.console_address)
    xml.link(el, "cluster", f"{BASE}/clusters/{h.cluster_id}", h.cluster_id)
    return el


# --- display and consoles -------------------------------------------------------------------


def display(d: DisplayConfig, running: list[VmConsole] | None = None) -> etree._Element:
    """A VM's (or template's) `<display>`: its primary console (SPICE when it has one), where
    that listens while the VM runs, and the display settings."""
    el = xml.element("display")
    primary = GraphicsType.SPICE if GraphicsType.SPICE in d.graphics else (d.graphics or (None,))[0]
    live = next((c for c in running or [] if c.protocol == (primary.value if primary else None)), None)
    if live is not None:
        sub(el, "address", live.address)
    sub(el, "allow_override", d.allow_reconnect)
    sub(el, "copy_paste_enabled", d.copy_paste)
    sub(el, "disconnect_action", d.disconnect_action.value)
    sub(el, "file_transfer_enabled", d.file_transfer)
    xml.opt(el, "keyboard_layout", d.keyboard_layout)
    sub(el, "monitors", d.monitors)
    if live is not None:
        xml.opt(el, "port", live.port)
        xml.opt(el, "secure_port", live.tls_port)
    sub(el, "single_qxl_pci", False)
    sub(el, "smartcard_enabled", False)
    if primary is not None:
        sub(el, "type", primary.value)
    if d.video in OVIRT_VIDEO:
        sub(el, "video_type", d.video.value)
    return el


CONSOLE_ACTIONS = ("proxyticket", "remoteviewerconnectionfile", "ticket")


def console(
    protocol: GraphicsType | str,
    owner_tag: str,
    owner_href: str,
    owner_id: str,
    live: VmConsole | None = None,
) -> etree._Element:
    """`<graphics_console>` of a VM or template; with `live`, where it listens now."""
    cid = console_id(protocol)
    href = f"{owner_href}/graphicsconsoles/{cid}"
    el = xml.element("graphics_console", href=href, id=cid)
    if owner_tag == "vm":
        xml.actions(el, href, CONSOLE_ACTIONS)
    sub(el, "protocol", str(protocol))
    xml.link(el, owner_tag, owner_href, owner_id)
    if live is not None:
        sub(el, "address", live.address)
        xml.opt(el, "port", live.port)
        xml.opt(el, "tls_port", live.tls_port)
    return el


# --- VMs and templates -------------------------------------------------------------------------


VM_ACTIONS = ("start", "stop", "ticket")


def _hardware(el: etree._Element, memory_mib: int, vcpus: int, os_type: str) -> None:
    cpu = sub(el, "cpu")
    topology = sub(cpu, "topology")
    sub(topology, "cores", 1)
    sub(topology, "sockets", vcpus)
    sub(topology, "threads", 1)
    sub(el, "memory", memory_mib * MIB)
    os_el = sub(el, "os")
    sub(os_el, "type", os_type)


def vm(v: Vm, show_consoles: bool) -> etree._Element:
    """A VM; where its consoles listen only for those who may open them (as /api/v1)."""
    href = vm_href(v.id)
    el = xml.element("vm", href=href, id=v.id)
    xml.actions(el, href, VM_ACTIONS)
    sub(el, "name", v.name)
    sub(el, "description", "")
    xml.rel_links(el, href, ("graphicsconsoles",))
    _hardware(el, v.memory_mib, v.vcpus, v.os_type)
    el.append(display(DisplayConfig.from_json(v.display), list(v.consoles) if show_consoles else None))
    sub(el, "status", VM_STATUS.get(v.status, "unknown"))
    if v.status_reason:
        sub(el, "status_detail", v.status_reason)
    sub(el, "next_run_configuration_exists", bool(v.next_run))
    if v.started_at is not None and v.status != "Down":
        sub(el, "start_time", v.started_at)
    sub(el, "type", "server")
    xml.link(el, "cluster", f"{BASE}/clusters/{v.cluster_id}", v.cluster_id)
    if v.host_id:
        xml.link(el, "host", f"{BASE}/hosts/{v.host_id}", v.host_id)
    if v.template_id:
        xml.link(el, "template", template_href(v.template_id), v.template_id)
    else:
        xml.link(el, "template", template_href(BLANK_ID), BLANK_ID)
    return el


def template(t: Template) -> etree._Element:
    href = template_href(t.id)
    el = xml.element("template", href=href, id=t.id)
    sub(el, "name", t.name)
    sub(el, "description", t.description or "")
    xml.rel_links(el, href, ("graphicsconsoles",))
    _hardware(el, t.memory_mib, t.vcpus, t.os_type)
    el.append(display(DisplayConfig.from_json(t.display)))
    sub(el, "status", "ok")
    sub(el, "creation_time", t.created_at)
    version = sub(el, "version")
    sub(version, "version_name", "base version")
    sub(version, "version_number", 1)
    xml.link(version, "base_template", href, t.id)
    if t.cluster_id:
        xml.link(el, "cluster", f"{BASE}/clusters/{t.cluster_id}", t.cluster_id)
    return el


def action(status: str = "complete", *children: etree._Element) -> etree._Element:
    el = xml.element("action")
    el.extend(children)
    sub(el, "status", status)
    return el
