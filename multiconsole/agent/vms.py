"""The agent's work on libvirt: create, destroy, stats, tickets, capabilities, recovery.

Stateless by design: every answer is read from libvirt (the live XML and the vmParams
kept in each domain's metadata), so an agent killed and restarted finds its VMs again.
Only console clients, learned from events, live in memory.
"""

from __future__ import annotations

import base64
import logging
import os
import platform
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import libvirt
from lxml import etree

from multiconsole.agent import certs, domxml
from multiconsole.agent.events import EventHub
from multiconsole.agent.images import Storage, StorageError
from multiconsole.agent.keyboard import MAX_CHECK, MAX_TEXT, KeyboardError, Keyboards, SendFailed
from multiconsole.agent.libvirtconn import Connection
from multiconsole.agent.screenshot import MAX_BYTES as SCREENSHOT_MAX_BYTES
from multiconsole.agent.screenshot import MAX_WIDTH_RANGE, NotAnImage, to_png
from multiconsole.domain.devices import VNC_PASSWORD_MAX, GraphicsType, VideoModel
from multiconsole.domain.display import CLUSTER_LEVELS
from multiconsole.domain.errors import FieldError
from multiconsole.wire.errors import MESSAGES, ErrorCode
from multiconsole.wire.exits import ExitReason, VmExit
from multiconsole.wire.stats import display_stats
from multiconsole.wire.vmcreate import parse_vm_params

log = logging.getLogger(__name__)

STATUS = {
    libvirt.VIR_DOMAIN_NOSTATE: "Unknown",
    libvirt.VIR_DOMAIN_RUNNING: "Up",
    libvirt.VIR_DOMAIN_BLOCKED: "Up",
    libvirt.VIR_DOMAIN_PAUSED: "Paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "Powering down",
    libvirt.VIR_DOMAIN_SHUTOFF: "Down",
    libvirt.VIR_DOMAIN_CRASHED: "Down",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "Suspended",
}
LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: "Up",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "Paused",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "Up",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "Down",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "Powering down",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "Down",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "Suspended",
}
GRAPHICS_PHASES = {
    libvirt.VIR_DOMAIN_EVENT_GRAPHICS_CONNECT: "connect",
    libvirt.VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE: "initialize",
    libvirt.VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT: "disconnect",
}
# Why a stopped domain stopped: libvirt's shut-off state reason -> vdsm's exit reason.
SHUTOFF_EXITS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: VmExit.of(ExitReason.USER_SHUTDOWN),
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: VmExit.of(ExitReason.ADMIN_SHUTDOWN),
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: VmExit.of(
        ExitReason.LOST_QEMU_CONNECTION, "QEMU exited: crashed or killed"
    ),
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: VmExit.of(ExitReason.LIBVIRT_START_FAILED),
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: VmExit.of(ExitReason.SAVE_STATE_SUCCEEDED),
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: VmExit.of(ExitReason.MIGRATION_SUCCEEDED),
}
# The same from a lifecycle event's "stopped" detail.
STOPPED_EXITS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: SHUTOFF_EXITS[libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN],
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: SHUTOFF_EXITS[libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED],
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: SHUTOFF_EXITS[libvirt.VIR_DOMAIN_SHUTOFF_CRASHED],
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: SHUTOFF_EXITS[libvirt.VIR_DOMAIN_SHUTOFF_CRASHED],
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: SHUTOFF_EXITS[libvirt.VIR_DOMAIN_SHUTOFF_SAVED],
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: SHUTOFF_EXITS[libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED],
}
GUEST_CRASHED = VmExit.of(ExitReason.GENERIC_ERROR, "the guest crashed")


def exit_of(state: int, reason: int) -> VmExit:
    """Why a domain in `state` (with libvirt's state `reason`) is down."""
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return GUEST_CRASHED
    return SHUTOFF_EXITS.get(reason, VmExit.of(ExitReason.SUCCESS))


TICKET_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
TTL_MAX = 7 * 24 * 3600
CONN_ACTIONS = ("disconnect", "keep", "fail")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
SCREEN_MAX = 3


class AgentError(Exception):
    """A failure the engine gets as a JSON-RPC error with a stable code."""

    def __init__(self, code: ErrorCode, message: str | None = None, data: dict | None = None):
        super().__init__(message or MESSAGES[code])
        self.code = code
        self.message = message or MESSAGES[code]
        self.data = data


def _field_error(err: FieldError) -> AgentError:
    return AgentError(ErrorCode.INVALID_PARAMS, str(err), {"field": err.field, "reason": err.reason})


def _libvirt_error(action: str, err: libvirt.libvirtError) -> AgentError:
    return AgentError(ErrorCode.LIBVIRT_FAILURE, f"{action}: {err.get_error_message()}")


def spice_tls_configured(uri: str, conf: Path = QEMU_CONF) -> bool:
    """True when libvirt's QEMU driver has SPICE TLS on (``spice_tls = 1`` in qemu.conf)."""
    if not uri.startswith("qemu"):
        return False
    try:
        text = conf.read_text()
    except OSError:
        return False
    return re.search(r"^\s*spice_tls\s*=\s*1\s*$", text, re.M) is not None


class VmManager:
    def __init__(
        self,
        uri: str = "qemu:///system",
        virt_type: str = "auto",
        listen_address: str = "0.0.0.0",
        events: EventHub | None = None,
        storage: Storage | None = None,
    ):
        self.events = events or EventHub()
        # The image cache and VMs' disks (agent/images.py).
        if storage is None:
            from multiconsole.paths import data_dir

            storage = Storage(data_dir(create=False) / "host", own_parents_below=data_dir(create=False))
        self.storage = storage
        self._create_lock = threading.Lock()
        # vmId -> {port: console type}, so graphics events can name the console.
        self._ports: dict[str, dict[int, str]] = {}
        self._known: set[str] = set()
        self.conn = Connection(uri, on_open=self._register_events)
        conn = self.conn.get()
        self.host = domxml.HostDisplay(
            virt_type=self._virt_type(conn, virt_type),
            arch=conn.getInfo()[0] if not uri.startswith("test") else "x86_64",
            listen_address=listen_address,
            spice_tls=spice_tls_configured(uri),
        )
        self._caps: dict | None = None
        self.keyboards = Keyboards()
        # The host's certificates, for renewal by the engine (set by the server when it serves TLS).
        self.certs = certs.Certificates(None, certs.spice_cert_dir() if self.host.spice_tls else None)
        self.recover()

    # --- set-up ------------------------------------------------------------------

    def _virt_type(self, conn: libvirt.virConnect, wanted: str) -> str:
        if self.conn.uri.startswith("test"):
            return "test"
        if wanted in ("kvm", "qemu"):
            return wanted
        usable = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
        if usable:
            try:
                conn.getDomainCapabilities(None, None, None, "kvm")
                return "kvm"
            except libvirt.libvirtError:
                pass
        return "qemu"

    def _register_events(self, conn: libvirt.virConnect) -> None:
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        try:
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_GRAPHICS, self._on_graphics, None)
        except libvirt.libvirtError:
            log.info("graphics events not supported by uri=%s", self.conn.uri)

    def recover(self) -> list[str]:
        """Find the VMs this agent runs (ours = our metadata), after a restart or crash."""
        found = []
        for dom, xml in self._our_domains():
            vm_id = dom.UUIDString()
            try:
                active = dom.isActive()
            except libvirt.libvirtError:
                continue  # removed meanwhile (by whoever else uses this libvirt): not ours to run
            found.append(vm_id)
            if active:
                self._remember_ports(vm_id, xml)
        self._known = set(found)
        if found:
            log.info("recovered vms=%d", len(found))
        return found

    # --- events ------------------------------------------------------------------

    def _on_lifecycle(self, _conn, dom, event, detail, _opaque) -> None:
        vm_id = dom.UUIDString()
        status = LIFECYCLE.get(event)
        if vm_id not in self._known or status is None:
            return
        event_ = {"event": "lifecycle", "vmId": vm_id, "status": status, "detail": detail}
        if status == "Down":
            self.events.forget(vm_id)
            why = GUEST_CRASHED if event == libvirt.VIR_DOMAIN_EVENT_CRASHED else STOPPED_EXITS.get(detail)
            event_.update((why or VmExit.of(ExitReason.SUCCESS)).to_stats())
        self.events.publish(event_)

    def _on_graphics(self, _conn, dom, phase, local, remote, auth_scheme, _subject, _opaque) -> None:
        vm_id = dom.UUIDString()
        if vm_id not in self._known:
            return
        try:
            port = int(local.get("service", "-1"))
        except ValueError:
            port = -1
        console = self._ports.get(vm_id, {}).get(port)
        if console is None:
            console = "spice" if "spice" in (auth_scheme or "") else "vnc"
        self.events.console_event(
            vm_id,
            GRAPHICS_PHASES.get(phase, str(phase)),
            console,
            remote.get("node", ""),
            remote.get("service", ""),
        )

    def _remember_ports(self, vm_id: str, xml: str) -> list:
        consoles = domxml.live_consoles(xml)
        ports: dict[int, str] = {}
        for c in consoles:
            for p in (c.port, c.tls_port):
                if p and p > 0:
                    ports[p] = c.type.value
        self._ports[vm_id] = ports
        return consoles

    # --- lookups -----------------------------------------------------------------

    def _our_domains(self) -> list[tuple[libvirt.virDomain, str]]:
        """Our domains with their live XML (read once: callers reuse it)."""
        try:
            doms = self.conn.get().listAllDomains(0)
        except libvirt.libvirtError as err:
            raise _libvirt_error("listing domains", err) from None
        out = []
        for dom in doms:
            try:
                xml = dom.XMLDesc(0)
            except libvirt.libvirtError:
                continue  # vanished meanwhile
            if domxml.is_ours(xml):
                out.append((dom, xml))
        return out

    def _domain(self, vm_id: str) -> tuple[libvirt.virDomain, str]:
        try:
            dom = self.conn.get().lookupByUUIDString(vm_id)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise AgentError(ErrorCode.NO_SUCH_VM, f"no VM with id {vm_id}") from None
            raise _libvirt_error("looking up the VM", err) from None
        try:
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as err:
            raise _libvirt_error("reading the VM", err) from None
        if not domxml.is_ours(xml):
            raise AgentError(ErrorCode.NO_SUCH_VM, f"VM {vm_id} is not managed by this agent")
        return dom, xml

    # --- methods -----------------------------------------------------------------

    def create(self, vm_id: str, params: dict) -> dict:
        try:
            # Drives get their paths here: the image cache, the VM's own disks (made if missing).
            params = self.storage.prepare(vm_id, params)
        except StorageError as err:
            raise AgentError(ErrorCode.STORAGE_FAILURE, str(err)) from None
        try:
            spec = parse_vm_params(params, vm_id)
        except FieldError as err:
            raise _field_error(err) from None
        xml = domxml.build(spec, params, self.host)
        conn = self.conn.get()
        with self._create_lock:
            for lookup, key, what in (
                (conn.lookupByUUIDString, spec.vm_id, "id"),
                (conn.lookupByName, spec.name, "name"),
            ):
                try:
                    lookup(key)
                except libvirt.libvirtError:
                    continue
                raise AgentError(ErrorCode.VM_EXISTS, f"a VM with {what} {key} already exists")
            try:
                dom = conn.defineXML(xml)
            except libvirt.libvirtError as err:
                raise _libvirt_error("defining the VM", err) from None
            self._known.add(spec.vm_id)
        # Starting QEMU takes most of the time: other creates may run meanwhile.
        try:
            dom.create()
        except libvirt.libvirtError as err:
            self._known.discard(spec.vm_id)
            self._undefine(dom)
            raise _libvirt_error("starting the VM", err) from None
        log.info(
            "vm created vm_id=%s name=%s consoles=%s",
            spec.vm_id,
            spec.name,
            ",".join(g.type.value for g in spec.graphics) or "none",
        )
        return {"vmList": self._stats(dom, dom.XMLDesc(0))}

    def _undefine(self, dom: libvirt.virDomain) -> None:
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError:
            try:
                dom.undefine()
            except libvirt.libvirtError as err:
                log.warning("could not undefine vm_id=%s: %s", dom.UUIDString(), err)

    def destroy(self, vm_id: str) -> dict:
        dom, _xml = self._domain(vm_id)
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as err:
            raise _libvirt_error("stopping the VM", err) from None
        self._undefine(dom)
        self._known.discard(vm_id)
        self._ports.pop(vm_id, None)
        self.events.forget(vm_id)
        log.info("vm destroyed vm_id=%s", vm_id)
        return {}

    def images(self, sha256s: list[str]) -> dict:
        """Which of these images the cache holds intact (a changed file is hashed again)."""
        try:
            return {"present": self.storage.present(sha256s)}
        except (StorageError, OSError) as err:
            raise AgentError(ErrorCode.STORAGE_FAILURE, str(err)) from None

    def remove_disks(self, vm_id: str, disk_dir: str | None = None) -> dict:
        """Remove a VM's own disks: refused while this host runs the VM."""
        try:
            dom = self.conn.get().lookupByUUIDString(vm_id)
        except libvirt.libvirtError:
            dom = None
        if dom is not None and self._active(dom):
            raise AgentError(ErrorCode.STORAGE_FAILURE, f"VM {vm_id} is running: stop it first")
        try:
            return {"removed": self.storage.remove_disks(vm_id, disk_dir)}
        except (StorageError, OSError) as err:
            raise AgentError(ErrorCode.STORAGE_FAILURE, str(err)) from None

    def _stats(self, dom: libvirt.virDomain, xml: str) -> dict:
        vm_id = dom.UUIDString()
        state, _max_mem, mem_kib, vcpus, cpu_time = dom.info()
        status = STATUS.get(state, "Unknown")
        running = status in ("Up", "Paused", "Powering down")
        consoles = self._remember_ports(vm_id, xml) if running else []
        # A Down VM says why, as vdsm does; libvirt keeps the reason with the stopped domain.
        exit_ = exit_of(*dom.state()).to_stats() if status == "Down" else {}
        return {
            "vmId": vm_id,
            "vmName": dom.name(),
            "status": status,
            "memSize": mem_kib // 1024,
            "smp": vcpus,
            "cpuTime": cpu_time,
            **display_stats(consoles),
            "consoleClients": self.events.console_clients(vm_id) if running else [],
            # Clients that connected before this time (the agent's start) are unknown to it.
            "consoleClientsSince": round(self.events.started, 3),
            **exit_,
        }

    def stats(self, vm_id: str) -> list[dict]:
        dom, xml = self._domain(vm_id)
        try:
            return [self._stats(dom, xml)]
        except libvirt.libvirtError as err:
            raise _libvirt_error("reading VM stats", err) from None

    def all_stats(self) -> list[dict]:
        out = []
        for dom, xml in self._our_domains():
            try:
                out.append(self._stats(dom, xml))
            except libvirt.libvirtError:
                continue  # destroyed while we looked
        return out

    def vm_list(self) -> list[dict]:
        out = []
        for dom, _xml in self._our_domains():
            try:
                out.append({"vmId": dom.UUIDString(), "status": STATUS.get(dom.state()[0], "Unknown")})
            except libvirt.libvirtError:
                continue
        return out

    def set_ticket(
        self,
        vm_id: str,
        gtype: GraphicsType | None,
        password: str,
        ttl: int,
        existing_conn_action: str = "disconnect",
    ) -> dict:
        """Set a console password valid for `ttl` seconds: on the console of `gtype`, or,
        with None, on the VM's first console (the order the engine sent them)."""
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 < ttl <= TTL_MAX:
            raise _field_error(FieldError("ttl", f"must be 1..{TTL_MAX} seconds"))
        if not password:
            raise _field_error(
                FieldError("password", "must not be empty (it would lock or open the console)")
            )
        if existing_conn_action not in CONN_ACTIONS:
            raise _field_error(FieldError("existingConnAction", f"must be one of {', '.join(CONN_ACTIONS)}"))
        dom, xml = self._domain(vm_id)
        if not dom.isActive():
            raise AgentError(ErrorCode.VM_NOT_RUNNING, f"VM {vm_id} is not running")
        if gtype is None:
            spec = parse_vm_params(domxml.stored_params(xml), vm_id)
            if not spec.graphics:
                raise AgentError(ErrorCode.NO_SUCH_DEVICE, f"VM {vm_id} is headless: no console")
            gtype = spec.graphics[0].type
        if gtype == GraphicsType.VNC and len(password) > VNC_PASSWORD_MAX:
            raise _field_error(
                FieldError("password", f"VNC passwords are at most {VNC_PASSWORD_MAX} characters")
            )
        valid_to = (datetime.now(UTC) + timedelta(seconds=ttl)).strftime(TICKET_TIME_FORMAT)
        # QEMU's VNC server knows only "keep" for existing clients.
        connected = existing_conn_action if gtype == GraphicsType.SPICE else None
        try:
            device = domxml.ticket_update(xml, gtype, password, valid_to, connected)
        except LookupError:
            raise AgentError(ErrorCode.NO_SUCH_DEVICE, f"VM {vm_id} has no {gtype.value} console") from None
        try:
            dom.updateDeviceFlags(device, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as err:
            if connected == "fail" and err.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR:
                # QEMU refuses the password while a client is connected: that is the point.
                raise AgentError(
                    ErrorCode.CONSOLE_IN_USE,
                    f"a client is connected to the {gtype.value} console (existingConnAction 'fail')",
                ) from None
            raise _libvirt_error(f"setting the {gtype.value} ticket", err) from None
        log.info("ticket set vm_id=%s console=%s ttl=%d", vm_id, gtype.value, ttl)
        return {"vmList": {}}

    def capabilities(self) -> dict:
        conn = self.conn.get()
        if self._caps is None:
            self._caps = self._static_capabilities(conn)
        info = conn.getInfo()
        free = info[1]
        if not self.conn.uri.startswith("test"):  # the test driver's free memory is a stub
            try:
                free = conn.getFreeMemory() // (1024 * 1024)
            except libvirt.libvirtError:
                pass
        # spiceTls read each time: enrolment or renewal may have installed the certificates since.
        spice_tls = self.host.spice_tls and certs.spice_files_present(self.certs.spice_dir)
        return {
            **self._caps,
            "memTotal": info[1],
            "memFree": free,
            "cpuCores": info[2],
            "spiceTls": spice_tls,
        }

    def _static_capabilities(self, conn: libvirt.virConnect) -> dict:
        graphics = [g.value for g in GraphicsType]
        video = [v.value for v in VideoModel]
        if not self.conn.uri.startswith("test"):
            try:
                caps = etree.fromstring(
                    conn.getDomainCapabilities(None, None, None, self.host.virt_type).encode()
                )
                offered = set(caps.xpath("devices/graphics/enum[@name='type']/value/text()"))
                graphics = [g for g in graphics if g in offered] or graphics
                models = set(caps.xpath("devices/video/enum[@name='modelType']/value/text()"))
                video = [v for v in video if v in models] or video
            except libvirt.libvirtError:
                pass

        def version(n: int) -> str:
            return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"

        return {
            "hostName": platform.node(),
            "arch": self.host.arch,
            "libvirtVersion": version(conn.getLibVersion()),
            "qemuVersion": version(conn.getVersion()),
            "virtType": self.host.virt_type,
            "kvmEnabled": self.host.virt_type == "kvm",
            "graphicsTypes": graphics,
            "videoTypes": video,
            "graphicsDevices": True,
            "diskDevices": True,
            "legacyDisplay": True,
            "spiceTls": False,  # see capabilities()
            "displayListen": self.host.listen_address,
            "clusterLevels": list(CLUSTER_LEVELS),
        }

    def screenshot(self, vm_id: str, screen: int = 0, max_width: int | None = None) -> dict:
        """The VM's screen `screen` as a PNG (base64), at most `max_width` pixels wide.

        libvirt asks QEMU for a screendump (PPM), which reads the display's framebuffer:
        connected console clients see nothing of it.
        """
        if isinstance(screen, bool) or not isinstance(screen, int) or not 0 <= screen <= SCREEN_MAX:
            raise _field_error(FieldError("screen", f"must be 0..{SCREEN_MAX}"))
        low, high = MAX_WIDTH_RANGE
        if max_width is not None and (
            isinstance(max_width, bool) or not isinstance(max_width, int) or not low <= max_width <= high
        ):
            raise _field_error(FieldError("maxWidth", f"must be {low}..{high} pixels"))
        dom, xml = self._domain(vm_id)
        if not dom.isActive():
            raise AgentError(ErrorCode.VM_NOT_RUNNING, f"VM {vm_id} is not running")
        screens = domxml.screens(xml)
        if screens == 0:
            raise AgentError(
                ErrorCode.NO_SUCH_DEVICE, f"VM {vm_id} is headless: it has no video device to capture"
            )
        if screen >= screens:
            raise AgentError(
                ErrorCode.NO_SUCH_DEVICE,
                f"VM {vm_id} has {screens} screen{'s' if screens > 1 else ''}: no screen {screen}",
            )
        data = self._screendump(dom, vm_id, screen)
        try:
            png = to_png(data, max_width)
        except NotAnImage as err:
            raise AgentError(ErrorCode.LIBVIRT_FAILURE, f"taking the screenshot: {err}") from None
        log.debug("screenshot vm_id=%s screen=%d size=%dx%d", vm_id, screen, png.width, png.height)
        return {
            "png": base64.b64encode(png.data).decode("ascii"),
            "width": png.width,
            "height": png.height,
            "mimeType": "image/png",
        }

    def _screendump(self, dom: libvirt.virDomain, vm_id: str, screen: int) -> bytes:
        """The raw image libvirt streams for one screen (its format is the hypervisor's)."""
        chunks: list[bytes] = []
        size = 0

        def sink(_stream, data: bytes, _opaque) -> int:
            nonlocal size
            size += len(data)
            if size > SCREENSHOT_MAX_BYTES:
                return -1  # recvAll aborts the stream
            chunks.append(data)
            return len(data)

        stream = None
        try:
            stream = self.conn.get().newStream(0)
            dom.screenshot(stream, screen, 0)
            stream.recvAll(sink, None)
            stream.finish()
        except RuntimeError:
            raise AgentError(
                ErrorCode.LIBVIRT_FAILURE,
                f"taking the screenshot: larger than {SCREENSHOT_MAX_BYTES} bytes",
            ) from None
        except libvirt.libvirtError as err:
            if stream is not None:
                try:
                    stream.abort()
                except libvirt.libvirtError:
                    pass
            code = err.get_error_code()
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                raise AgentError(ErrorCode.NO_SUCH_VM, f"no VM with id {vm_id}") from None
            if code == libvirt.VIR_ERR_OPERATION_INVALID and not self._active(dom):
                raise AgentError(ErrorCode.VM_NOT_RUNNING, f"VM {vm_id} is not running") from None
            if code == libvirt.VIR_ERR_INVALID_ARG:
                raise AgentError(
                    ErrorCode.NO_SUCH_DEVICE, f"VM {vm_id}: no screen {screen} ({err.get_error_message()})"
                ) from None
            raise _libvirt_error("taking the screenshot", err) from None
        return b"".join(chunks)

    @staticmethod
    def _active(dom: libvirt.virDomain) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError:
            return False

    def send_keys(
        self,
        vm_id: str,
        text: str | None = None,
        combos: list[str] | None = None,
        layout: str = "en-us",
        check: bool = False,
    ) -> dict:
        """Type `text` (or press the named `combos`) on a running VM's keyboard with layout
        `layout`. All is translated first: an untypable character sends nothing. With `check`,
        only translate."""
        try:
            presses = self.keyboards.presses(layout, text, combos, MAX_CHECK if check else MAX_TEXT)
        except KeyboardError as err:
            raise _field_error(FieldError(err.field, err.reason)) from None
        dom, _xml = self._domain(vm_id)
        if not self._active(dom):
            raise AgentError(ErrorCode.VM_NOT_RUNNING, f"VM {vm_id} is not running")
        if check:
            return {"sent": 0, "keys": len(presses)}
        try:
            sent = self.keyboards.send(vm_id, dom, presses)
        except SendFailed as err:
            if not self._active(dom):
                raise AgentError(
                    ErrorCode.VM_NOT_RUNNING, f"VM {vm_id} stopped while typing ({err})"
                ) from None
            raise AgentError(ErrorCode.LIBVIRT_FAILURE, f"sending keys: {err}") from None
        log.info("keys sent vm_id=%s keys=%d layout=%s", vm_id, sent, layout)
        return {"sent": sent, "keys": len(presses)}
