"""REST payloads of /api/v1: one typed model per resource, validated at the boundary."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from multiconsole.domain.devices import SPICE_CHANNELS, GraphicsType, VideoModel
from multiconsole.domain.display import CLUSTER_LEVELS, DisconnectAction, DisplayConfig
from multiconsole.engine.db import Cluster, Host, Template, Vm, utc

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
OptionalName = Field(None, min_length=1, max_length=64, pattern=NAME_PATTERN)
SpiceChannel = Literal[SPICE_CHANNELS]  # type: ignore[valid-type]
Level = Literal[CLUSTER_LEVELS]  # type: ignore[valid-type]
Role = Literal["admin", "vm_operator", "console_user", "console_reconnect"]


Time = Annotated[datetime, AfterValidator(utc)]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClusterIn(In):
    name: str = Name
    compat_level: Level = CLUSTER_LEVELS[-1]
    arch: Literal["x86_64", "ppc64"] = "x86_64"
    console_address: str | None = Field(None, max_length=255)
    description: str = Field("", max_length=1024)
    shared_dir: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^/[^\x00]*$",
        description="a directory every host mounts at this path: VMs' disks live there, any host runs them",
    )


class ClusterPatch(In):
    console_address: str | None = Field(None, max_length=255)
    description: str | None = Field(None, max_length=1024)
    shared_dir: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^/[^\x00]*$",
        description="a directory every host mounts at this path: VMs' disks live there, any host runs them",
    )


class ClusterOut(BaseModel):
    id: str
    name: str
    compat_level: str
    arch: str
    console_address: str | None
    description: str
    shared_dir: str | None = None

    @classmethod
    def of(cls, c: Cluster) -> ClusterOut:
        return cls(
            id=c.id,
            name=c.name,
            compat_level=c.compat_level,
            arch=c.arch,
            console_address=c.console_address,
            description=c.description,
            shared_dir=c.shared_dir,
        )


class HostIn(In):
    name: str = Name
    address: str = Field(min_length=1, max_length=255)
    port: int = Field(54321, ge=1, le=65535)
    cluster: str = Field(min_length=1, max_length=64)
    console_address: str | None = Field(None, max_length=255)
    insecure: bool = Field(
        False, description="plain HTTP to an agent run with --insecure; else the host must have enrolled"
    )


class HostOut(BaseModel):
    id: str
    name: str
    address: str
    port: int
    cluster: str
    status: str
    console_address: str | None
    last_seen: Time | None
    capabilities: dict[str, Any]
    # The certificate the host enrolled with (None: reached over plain HTTP).
    cert_fingerprint: str | None = None
    cert_expires: Time | None = None
    # The subject of its SPICE TLS certificate (the `.vv`'s host-subject), when it has one.
    spice_subject: str | None = None

    @classmethod
    def of(cls, h: Host) -> HostOut:
        return cls(
            cert_fingerprint=h.cert_fingerprint,
            cert_expires=_cert_expires(h.certificate),
            spice_subject=h.spice_subject,
            id=h.id,
            name=h.name,
            address=h.address,
            port=h.port,
            cluster=h.cluster.name,
            status=h.status,
            console_address=h.console_address,
            last_seen=h.last_seen,
            capabilities=h.capabilities or {},
        )


def _cert_expires(pem: str | None) -> datetime | None:
    if not pem:
        return None
    from multiconsole.pki import PkiError, load_cert

    try:
        return load_cert(pem).not_valid_after_utc
    except PkiError:
        return None


class DisplayFields(In):
    video: VideoModel | None = None
    consoles: list[GraphicsType] | None = Field(None, max_length=2)
    monitors: int | None = Field(None, ge=1, le=4)
    vram: int | None = Field(None, ge=1024, le=1048576, description="KiB")
    keyboard_layout: str | None = Field(None, pattern=r"^[a-z]{2,3}(-[a-z]{2,8})?$")
    copy_paste: bool | None = None
    file_transfer: bool | None = None
    spice_secure_channels: list[SpiceChannel] | None = None
    disconnect_action: DisconnectAction | None = None
    allow_reconnect: bool | None = None


class DiskIn(In):
    image: str | None = Field(
        None, min_length=1, max_length=128, description="a disk image (name or id): the disk is its overlay"
    )
    size_gib: int | None = Field(None, ge=1, le=4096, description="an empty disk of this size")


BootDevice = Literal["cdrom", "disk", "network"]


class DriveFields(DisplayFields):
    cdrom: str | None = Field(
        None, max_length=128, description="an ISO image (name or id) in the CD-ROM; '' for none"
    )
    disks: list[DiskIn] | None = Field(None, max_length=8)
    boot: list[BootDevice] | None = Field(
        None, max_length=3, description="boot order, e.g. ['cdrom', 'disk']"
    )


class VmIn(DriveFields):
    name: str = Name
    cluster: str = Field(min_length=1, max_length=64)
    template: str | None = Field(None, max_length=64)
    os_type: str | None = Field(None, max_length=64)
    memory_mib: int | None = Field(None, ge=16, le=1048576)
    vcpus: int | None = Field(None, ge=1, le=256)


class VmPatch(DriveFields):
    name: str | None = OptionalName
    os_type: str | None = Field(None, max_length=64)
    memory_mib: int | None = Field(None, ge=16, le=1048576)
    vcpus: int | None = Field(None, ge=1, le=256)


class TemplateIn(DriveFields):
    name: str = Name
    cluster: str | None = Field(None, max_length=64)
    os_type: str | None = Field(None, max_length=64)
    memory_mib: int | None = Field(None, ge=16, le=1048576)
    vcpus: int | None = Field(None, ge=1, le=256)
    description: str | None = Field(None, max_length=1024)


class TemplatePatch(DriveFields):
    name: str | None = OptionalName
    os_type: str | None = Field(None, max_length=64)
    memory_mib: int | None = Field(None, ge=16, le=1048576)
    vcpus: int | None = Field(None, ge=1, le=256)
    description: str | None = Field(None, max_length=1024)


class DisplayOut(BaseModel):
    video: str
    consoles: list[str]
    monitors: int
    vram: int | None
    keyboard_layout: str | None
    copy_paste: bool
    file_transfer: bool
    spice_secure_channels: list[str]
    disconnect_action: str
    allow_reconnect: bool

    @classmethod
    def of(cls, data: dict) -> DisplayOut:
        d = DisplayConfig.from_json(data)
        return cls(
            video=d.video.value,
            consoles=[g.value for g in d.graphics],
            monitors=d.monitors,
            vram=d.vram,
            keyboard_layout=d.keyboard_layout,
            copy_paste=d.copy_paste,
            file_transfer=d.file_transfer,
            spice_secure_channels=list(d.spice_secure_channels),
            disconnect_action=d.disconnect_action.value,
            allow_reconnect=d.allow_reconnect,
        )


class ConsoleOut(BaseModel):
    protocol: str
    address: str
    port: int | None
    tls_port: int | None


class NextRun(BaseModel):
    memory_mib: int | None = None
    vcpus: int | None = None
    os_type: str | None = None
    display: DisplayOut


class ImageRef(BaseModel):
    id: str
    name: str | None


class DiskOut(BaseModel):
    id: str | None = Field(description="the VM's own disk (none on a template)")
    image: ImageRef | None = Field(description="the image the disk is an overlay of")
    size_gib: int | None = Field(description="an empty disk's size")


class DrivesOut(BaseModel):
    cdrom: ImageRef | None = None
    disks: list[DiskOut] = []
    boot: list[str] = []


class ImageOut(BaseModel):
    id: str
    name: str
    format: str
    size: int = Field(description="bytes of the file")
    virtual_size: int = Field(description="bytes the guest sees")
    sha256: str
    created_by: str | None
    created_at: Time
    used_by: list[str] = Field([], description="the VMs and templates that use it")


class VmOut(BaseModel):
    id: str
    name: str
    cluster: str
    template: str | None
    os_type: str
    memory_mib: int
    vcpus: int
    status: str
    status_reason: str
    exit_code: int | None = Field(None, description="how the VM last went down: 0 normally, 1 on an error")
    exit_reason: int | None = Field(
        None, description="why, in vdsm's numbers (e.g. 2: QEMU died, 6: stopped)"
    )
    exit_message: str | None = Field(None, description="why, in words")
    host: str | None
    display: DisplayOut
    next_run: NextRun | None = Field(description="changes that apply at the next start")
    consoles: list[ConsoleOut] = Field(description="where the running VM's consoles listen")
    created_at: Time
    started_at: Time | None
    drives: DrivesOut = DrivesOut()
    pinned_to_host: str | None = Field(
        None, description="the host that keeps the VM's disks: the VM starts only there"
    )

    @classmethod
    def of(cls, vm: Vm, template_name: str | None = None) -> VmOut:
        nr = None
        if vm.next_run:
            nr = NextRun(
                memory_mib=vm.next_run.get("memory_mib"),
                vcpus=vm.next_run.get("vcpus"),
                os_type=vm.next_run.get("os_type"),
                display=DisplayOut.of(vm.next_run.get("display", vm.display)),
            )
        return cls(
            id=vm.id,
            name=vm.name,
            cluster=vm.cluster.name,
            template=template_name,
            os_type=vm.os_type,
            memory_mib=vm.memory_mib,
            vcpus=vm.vcpus,
            status=vm.status,
            status_reason=vm.status_reason,
            exit_code=vm.exit_code,
            exit_reason=vm.exit_reason,
            exit_message=vm.exit_message,
            host=vm.host.name if vm.host else None,
            display=DisplayOut.of(vm.display),
            next_run=nr,
            consoles=[
                ConsoleOut(protocol=c.protocol, address=c.address, port=c.port, tls_port=c.tls_port)
                for c in vm.consoles
            ],
            created_at=vm.created_at,
            started_at=vm.started_at,
        )


class TemplateOut(BaseModel):
    id: str
    name: str
    cluster: str | None
    os_type: str
    memory_mib: int
    vcpus: int
    display: DisplayOut
    description: str
    drives: DrivesOut = DrivesOut()

    @classmethod
    def of(cls, t: Template, cluster_name: str | None) -> TemplateOut:
        return cls(
            id=t.id,
            name=t.name,
            cluster=cluster_name,
            os_type=t.os_type,
            memory_mib=t.memory_mib,
            vcpus=t.vcpus,
            display=DisplayOut.of(t.display),
            description=t.description,
        )


class ConfiguredConsole(BaseModel):
    protocol: str


class VmConsoles(BaseModel):
    vm: str
    status: str
    configured: list[ConfiguredConsole]
    current: list[ConsoleState]
    next_run: list[ConfiguredConsole] | None = Field(
        description="the consoles the VM gets at its next start, when they differ"
    )


class OsTypeOut(BaseModel):
    name: str
    label: str
    arch: str
    pairs: list[dict[str, str]]


class RuleCheckIn(DisplayFields):
    os_type: str = "other"
    cluster: str | None = None
    compat_level: Level | None = None
    arch: Literal["x86_64", "ppc64"] | None = None


class Violation(BaseModel):
    field: str
    reason: str


class TicketIn(In):
    ttl: int = Field(120, ge=1, le=7200, description="seconds the password is valid")
    existing_connection: Literal["disconnect", "keep", "fail"] | None = Field(
        None,
        description="what happens to a SPICE client already connected; by default the ticket "
        "is refused if an unknown client is connected, and your own earlier session is disconnected",
    )
    take_over: bool = Field(False, description="disconnect another user who holds the console")


class KeysIn(In):
    text: str | None = Field(
        None,
        max_length=4096,
        description="text to type with the VM's keyboard layout; newlines are Enter, tabs Tab",
    )
    keys: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="named keys or combinations, pressed in turn: enter, esc, f2, ctrl-alt-delete, alt-f4",
    )

    @model_validator(mode="after")
    def _one_of(self) -> KeysIn:
        if (self.text is None) == (self.keys is None):
            raise ValueError("give either text or keys")
        return self


class KeysOut(BaseModel):
    vm: str
    keyboard_layout: str
    characters: int = Field(description="characters of the text typed (0 for keys)")
    keys_sent: int = Field(description="key presses sent")


class TicketOut(BaseModel):
    vm: str
    vm_id: str
    protocol: str
    password: str
    expires: Time
    ttl: int
    address: str
    port: int | None
    tls_port: int | None
    # SPICE over TLS: the host's certificate subject and the engine's CA (PEM) to check it
    # with, and the channels the VM wants secure (what a .vv's host-subject, ca and
    # secure-channels say).
    host_subject: str | None = None
    ca: str | None = None
    secure_channels: list[str] = Field(default_factory=list)


class UserIn(In):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
    password: str = Field(min_length=8, max_length=256)
    roles: list[Role] = Field(
        default_factory=list,
        max_length=4,
        description="roles on the whole system; grant roles on one cluster, VM or template "
        "with POST /permissions",
    )


class UserOut(BaseModel):
    id: str
    name: str
    roles: list[str] = Field(description="roles on the whole system")


class LoginIn(In):
    name: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=256)


class LoginOut(BaseModel):
    token: str = Field(description="send it as `Authorization: Bearer <token>`")
    expires: Time
    user: str


class PermissionIn(In):
    user: str = Field(min_length=1, max_length=128, description="the user's name or id")
    role: Role
    object_type: Literal["system", "cluster", "vm", "template"] = "system"
    object: str | None = Field(
        None, min_length=1, max_length=64, description="the cluster's, VM's or template's name or id"
    )


class PermissionOut(BaseModel):
    id: int
    user: str
    role: str
    object_type: str
    object_id: str | None
    object_name: str | None


class MeOut(BaseModel):
    id: str
    name: str
    roles: list[str] = Field(description="roles on the whole system")
    permissions: list[PermissionOut]


class ConsoleState(BaseModel):
    protocol: str
    address: str
    port: int | None
    tls_port: int | None
    holder: str | None = Field(description="the user connected to this console, if any")
    client_address: str | None
    connected_at: Time | None


class AuditOut(BaseModel):
    id: int
    time: Time
    event: str
    user: str | None
    vm_id: str | None
    vm_name: str | None
    protocol: str | None
    client_address: str | None
    detail: str


class ProxyTicketIn(In):
    take_over: bool = Field(False, description="disconnect another user who holds the console")


class ProxyTicketOut(BaseModel):
    url: str = Field(description="the websocket URL to open, ticket included (single use, 120 s)")
    password: str = Field(description="the VNC one-time password")
    expires: Time
    vm: str
    vm_id: str
