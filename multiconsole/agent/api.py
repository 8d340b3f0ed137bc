"""The agent's JSON-RPC methods: one typed request and result model each.

The models are the schema served at GET /jsonrpc/schema; the dispatcher validates
every call against them before the VmManager sees it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from multiconsole.agent.certs import CertificateError
from multiconsole.agent.vms import AgentError, VmManager
from multiconsole.domain.devices import GraphicsType
from multiconsole.wire.errors import ErrorCode


def _uuid(value: str) -> str:
    # libvirt answers a malformed UUID with a generic failure (and a NUL with a crash).
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError("must be a UUID") from None


def _printable(value: SecretStr) -> SecretStr:
    # The password becomes an XML attribute: control characters would break the element.
    if not value.get_secret_value().isprintable():
        raise ValueError("must be printable characters only")
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number of seconds, not a boolean")
    return value


def _number_not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    return value


VmId = Annotated[str, AfterValidator(_uuid)]
Password = Annotated[SecretStr, AfterValidator(_printable)]
Ttl = Annotated[int, BeforeValidator(_not_bool)]
Whole = Annotated[int, BeforeValidator(_number_not_bool)]
# Constraints before the validator: JSON Schema then shows them as minimum/maximum.
ScreenWidth = Annotated[int, Field(ge=16, le=4096), BeforeValidator(_number_not_bool)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    pass


class VmIdParams(Params):
    vmID: VmId = Field(description="the VM's UUID (also the libvirt domain UUID)")


class CreateParams(VmIdParams):
    vmParams: dict[str, Any] = Field(
        description="vmCreate parameters: graphics as devices (cluster level >= 3.4) "
        "or the legacy top-level 'display' field; drives as vdsm disk devices"
    )


class ScreenshotParams(VmIdParams):
    screen: Whole = Field(0, ge=0, le=3, description="which screen: heads of the video devices, in order")
    maxWidth: ScreenWidth | None = Field(
        None, description="scale down to at most this many pixels wide (aspect kept)"
    )


class TicketUser(BaseModel):
    model_config = ConfigDict(extra="allow")
    userName: str | None = None
    userId: str | None = None


class SetTicketParams(VmIdParams):
    password: Password
    ttl: Ttl = Field(description="seconds the password is valid, > 0")
    existingConnAction: Literal["disconnect", "keep", "fail"] = "disconnect"
    params: TicketUser = Field(default_factory=TicketUser)


class GraphicsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deviceType: Literal["graphics"]
    graphicsType: GraphicsType
    password: Password
    ttl: Ttl = Field(description="seconds the password is valid, > 0")
    existingConnAction: Literal["disconnect", "keep", "fail"] = "disconnect"
    disconnectAction: Literal["LOCK_SCREEN", "LOGOUT", "SHUTDOWN", "REBOOT", "NONE"] = "LOCK_SCREEN"
    params: TicketUser = Field(default_factory=TicketUser)


class UpdateDeviceParams(VmIdParams):
    params: GraphicsUpdate


class DisplayInfo(BaseModel):
    type: GraphicsType
    port: str
    tlsPort: str
    ipAddress: str


class ConsoleClient(BaseModel):
    type: GraphicsType
    ipAddress: str
    since: float


class VmStats(BaseModel):
    vmId: str
    vmName: str
    status: str
    memSize: int
    smp: int
    cpuTime: int
    displayInfo: list[DisplayInfo]
    displayType: str = Field(description="legacy: 'qxl' when the primary console is SPICE, else 'vnc'")
    displayPort: str
    displaySecurePort: str
    displayIp: str
    additionalDisplayPort: str = Field(description="VNC's port when SPICE is the primary console")
    consoleClients: list[ConsoleClient]
    consoleClientsSince: float = Field(
        description="epoch seconds since which the agent knows console clients (its start)"
    )
    exitCode: int | None = Field(None, description="a Down VM: 0 it stopped normally, 1 on an error")
    exitReason: int | None = Field(None, description="a Down VM: why, in vdsm's numbers (vmexitreason)")
    exitMessage: str | None = Field(None, description="a Down VM: why, in words")


class VmListEntry(BaseModel):
    vmId: str
    status: str


class CreateResult(BaseModel):
    vmList: VmStats


class EmptyVmList(BaseModel):
    vmList: dict[str, Any]


class Empty(BaseModel):
    pass


class Capabilities(BaseModel):
    hostName: str
    arch: str
    cpuCores: int
    memTotal: int = Field(description="MiB")
    memFree: int = Field(description="MiB")
    libvirtVersion: str
    qemuVersion: str
    virtType: str = Field(description="kvm, qemu (TCG) or test")
    kvmEnabled: bool
    graphicsTypes: list[str]
    videoTypes: list[str]
    graphicsDevices: bool = Field(description="accepts graphics as vmCreate devices")
    diskDevices: bool = Field(
        False, description="accepts vdsm disk devices (disk, cdrom) with boot order in vmCreate"
    )
    legacyDisplay: bool = Field(description="accepts the legacy 'display' field")
    spiceTls: bool
    displayListen: str
    clusterLevels: list[str]


PemText = Annotated[str, Field(min_length=1, max_length=16384)]


class InstallCertificateParams(Params):
    certificate: PemText = Field(description="the agent's new certificate (PEM), for the pending request")
    caCertificate: PemText = Field(
        description="the engine's CA (PEM): must be the one the host enrolled with"
    )
    spiceCertificate: PemText | None = Field(None, description="QEMU's new SPICE certificate (PEM)")


class CertificateRequests(BaseModel):
    csr: str = Field(description="request for the agent's new key (PEM); the key stays on the host")
    spiceCsr: str | None = Field(description="request for QEMU's new SPICE key; None without SPICE TLS")


class InstalledCertificate(BaseModel):
    fingerprint: str
    notAfter: str
    spiceSubject: str | None


class GetImagesParams(Params):
    sha256s: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(max_length=64)


class Images(BaseModel):
    present: list[str] = Field(description="the images the cache holds, their sha256 checked")


class RemoveDisksParams(VmIdParams):
    diskDir: str | None = Field(None, max_length=1024, description="the cluster's shared directory")


class RemovedDisks(BaseModel):
    removed: list[str]


class Screenshot(BaseModel):
    png: str = Field(description="the screen as a PNG, base64-encoded")
    width: int = Field(description="pixels, after any scaling down")
    height: int = Field(description="pixels, after any scaling down")
    mimeType: Literal["image/png"]


class SendKeysParams(VmIdParams):
    text: str | None = Field(
        None,
        max_length=8192,
        description="text to type (at most 500 characters, 8192 with check); newlines are Enter, "
        "tabs Tab (or give keys)",
    )
    keys: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=32, description="named keys or combinations: enter, f2, ctrl-alt-delete, alt-f4"
    )
    keyMap: str = Field("en-us", max_length=16, description="the guest's keyboard layout (QEMU keymap name)")
    check: bool = Field(False, description="only translate (refusing what cannot be typed); send nothing")


class SentKeys(BaseModel):
    sent: int = Field(description="key presses sent (0 with check)")
    keys: int = Field(description="key presses the text or keys translate to")


@dataclass(frozen=True)
class Method:
    params: type[Params]
    result: Any
    doc: str
    call: Any  # (VmManager, params model) -> result


def _secret(s: SecretStr) -> str:
    return s.get_secret_value()


def _certificates(call):
    """Certificate errors as JSON-RPC errors naming what was refused."""

    def run(manager: VmManager, p: Any) -> Any:
        try:
            return call(manager.certs, p)
        except (CertificateError, OSError) as err:
            raise AgentError(ErrorCode.CERTIFICATE_REFUSED, str(err)) from None

    return run


METHODS: dict[str, Method] = {
    "Host.getCapabilities": Method(
        NoParams, Capabilities, "What this host can run.", lambda vm, p: vm.capabilities()
    ),
    "Host.getVMList": Method(
        NoParams, list[VmListEntry], "The VMs this agent runs.", lambda vm, p: vm.vm_list()
    ),
    "Host.getAllVmStats": Method(
        NoParams, list[VmStats], "Stats of every VM of this agent.", lambda vm, p: vm.all_stats()
    ),
    "VM.create": Method(
        CreateParams,
        CreateResult,
        "Define and start a VM; its consoles start locked.",
        lambda vm, p: vm.create(p.vmID, p.vmParams),
    ),
    "VM.getStats": Method(VmIdParams, list[VmStats], "Stats of one VM.", lambda vm, p: vm.stats(p.vmID)),
    "VM.destroy": Method(VmIdParams, Empty, "Stop a VM and forget it.", lambda vm, p: vm.destroy(p.vmID)),
    "VM.setTicket": Method(
        SetTicketParams,
        EmptyVmList,
        "Legacy: set the password of the VM's first console.",
        lambda vm, p: vm.set_ticket(p.vmID, None, _secret(p.password), p.ttl, p.existingConnAction),
    ),
    "VM.updateDevice": Method(
        UpdateDeviceParams,
        EmptyVmList,
        "Set the password of the VM's console of one type (deviceType 'graphics').",
        lambda vm, p: vm.set_ticket(
            p.vmID,
            p.params.graphicsType,
            _secret(p.params.password),
            p.params.ttl,
            p.params.existingConnAction,
        ),
    ),
    "Host.certificateRequest": Method(
        NoParams,
        CertificateRequests,
        "Renewal, step 1: new keys for the agent and SPICE (kept on the host) and their requests.",
        _certificates(lambda certs, p: certs.request()),
    ),
    "Host.installCertificate": Method(
        InstallCertificateParams,
        InstalledCertificate,
        "Renewal, step 2: install the certificates signed for the pending requests; new "
        "connections get the new certificate, VMs started afterwards the new SPICE one.",
        _certificates(lambda certs, p: certs.install(p.certificate, p.caCertificate, p.spiceCertificate)),
    ),
    "VM.screenshot": Method(
        ScreenshotParams,
        Screenshot,
        "A PNG of one screen of a running VM, read from QEMU's framebuffer: consoles are not disturbed.",
        lambda vm, p: vm.screenshot(p.vmID, p.screen, p.maxWidth),
    ),
    "VM.sendKeys": Method(
        SendKeysParams,
        SentKeys,
        "Type text or press named keys on a running VM's keyboard (libvirt send-key), translated "
        "with the host's QEMU keymap for keyMap; nothing is sent if any character cannot be typed.",
        lambda vm, p: vm.send_keys(p.vmID, p.text, p.keys, p.keyMap, p.check),
    ),
}


METHODS["Host.getImages"] = Method(
    GetImagesParams,
    Images,
    "Which of these images (by sha256) the cache holds intact; a corrupt one is removed. "
    "The engine sends missing ones with PUT /images/<sha256>.",
    lambda vm, p: vm.images(p.sha256s),
)
METHODS["VM.removeDisks"] = Method(
    RemoveDisksParams,
    RemovedDisks,
    "Remove a stopped VM's own disks (its overlays), when the engine removes the VM.",
    lambda vm, p: vm.remove_disks(p.vmID, p.diskDir),
)


def schema() -> dict:
    """The whole API as JSON Schema: params, result and error codes of every method."""
    from pydantic import TypeAdapter

    from multiconsole.wire.errors import MESSAGES

    return {
        "jsonrpc": "2.0",
        "methods": {
            name: {
                "description": m.doc,
                "params": m.params.model_json_schema(),
                "result": TypeAdapter(m.result).json_schema(),
            }
            for name, m in METHODS.items()
        },
        "errors": {int(code): text for code, text in MESSAGES.items()},
    }


def call(manager: VmManager, name: str, params: Params) -> Any:
    return METHODS[name].call(manager, params)
