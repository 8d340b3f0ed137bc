"""`multiconsole cluster | host | vm | template ...`: the engine's REST API from a shell.

Every command takes the connection options (--engine, --user, --password; see
multiconsole.client for the environment and the settings file) and --json, which prints
the engine's JSON answer and nothing else. Without --json, rich tables.
Exit codes: 0 done, 1 the engine refused (`error: <field>: <reason>` on stderr),
2 the engine cannot be reached (or, as for any click program, a usage error).
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from multiconsole.client import (
    DEFAULT_URL,
    DEFAULT_USER,
    ENV_CA,
    ENV_PASSWORD,
    ENV_URL,
    ENV_USER,
    ClientError,
    EngineApiError,
    EngineClient,
    path,
    settings_path,
)
from multiconsole.domain.devices import GraphicsType, VideoModel
from multiconsole.domain.display import ARCHES, CLUSTER_LEVELS, DisconnectAction

cluster_app = typer.Typer(
    help="Clusters: compatibility level, architecture, console address.", no_args_is_help=True
)
host_app = typer.Typer(help="Hosts: the agents that run the VMs.", no_args_is_help=True)
vm_app = typer.Typer(
    help="VMs: create, start, stop, edit, and where their consoles listen.", no_args_is_help=True
)
template_app = typer.Typer(
    help="Templates: hardware and display settings new VMs inherit.", no_args_is_help=True
)

DEFAULT_AGENT_PORT = 54321
LevelChoice = Literal[CLUSTER_LEVELS]  # type: ignore[valid-type]
ArchChoice = Literal[ARCHES]  # type: ignore[valid-type]


# --- running a command -----------------------------------------------------------------


class Run:
    """What a command gets: the engine client, and how to print (tables or --json)."""

    def __init__(
        self,
        engine: str | None,
        user: str | None,
        password: str | None,
        as_json: bool,
        ca: str | None = None,
    ):
        self._args = (engine, user, password, ca)
        self._client: EngineClient | None = None
        self.as_json = as_json
        self.console = Console(highlight=False)

    @property
    def client(self) -> EngineClient:
        if self._client is None:
            self._client = EngineClient.resolved(*self._args)
        return self._client

    def get(self, *parts: str) -> Any:
        return self.client.get(path(*parts))

    def post(self, *parts: str, body: Any = None) -> Any:
        return self.client.post(path(*parts), body)

    def patch(self, *parts: str, body: Any) -> Any:
        return self.client.patch(path(*parts), body)

    def delete(self, *parts: str) -> Any:
        return self.client.delete(path(*parts))

    def show(self, data: Any, render: Callable[[], None]) -> None:
        """--json: the engine's answer as is (null for 204 No Content); else `render()`."""
        if self.as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            render()

    def say(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _option(name: str, annotation: Any, default: Any, *decls: str, **kw: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, typer.Option(*decls, **kw)],
    )


_CONN = "Connection"
CONNECTION = [
    _option(
        "engine",
        str | None,
        None,
        "--engine",
        metavar="URL",
        rich_help_panel=_CONN,
        help=f"engine URL (else ${ENV_URL}, the settings file, {DEFAULT_URL})",
    ),
    _option(
        "user",
        str | None,
        None,
        "--user",
        rich_help_panel=_CONN,
        help=f"user name (else ${ENV_USER}, the settings file, {DEFAULT_USER})",
    ),
    _option(
        "password",
        str | None,
        None,
        "--password",
        rich_help_panel=_CONN,
        help=f"password (else ${ENV_PASSWORD}, the settings file)",
    ),
    _option("as_json", bool, False, "--json", help="print the engine's JSON answer, nothing else"),
    _option(
        "ca",
        str | None,
        None,
        "--ca",
        metavar="FILE",
        rich_help_panel=_CONN,
        help=f"the CA certificate to check the engine's with, alone (else ${ENV_CA}; else the "
        "system's CAs and the engine CAs in ~/.config/multiconsole/ca.pem, the data directory)",
    ),
]

_DISPLAY = "Display"
_HW = "Hardware"
# Options of `vm create`, `vm edit` and `template create`. All default to "not given", so an
# edit sends only what changes; API_FIELDS names the API field of those named otherwise.
VM_OPTIONS = [
    _option("os", str | None, None, "--os", rich_help_panel=_HW, help="OS type, e.g. other, debian_12"),
    _option("memory", int | None, None, "--memory", metavar="MiB", rich_help_panel=_HW, help="memory"),
    _option("cpus", int | None, None, "--cpus", metavar="N", rich_help_panel=_HW, help="virtual CPUs"),
    _option(
        "video",
        VideoModel | None,
        None,
        "--video",
        case_sensitive=False,
        rich_help_panel=_DISPLAY,
        help="video device (SPICE needs qxl); default fits the consoles",
    ),
    _option(
        "console",
        list[GraphicsType] | None,
        None,
        "--console",
        case_sensitive=False,
        rich_help_panel=_DISPLAY,
        help="a console protocol; repeat for both: --console spice --console vnc",
    ),
    _option("no_console", bool, False, "--no-console", rich_help_panel=_DISPLAY, help="headless: no console"),
    _option("monitors", int | None, None, "--monitors", metavar="N", rich_help_panel=_DISPLAY),
    _option("vram", int | None, None, "--vram", metavar="KiB", rich_help_panel=_DISPLAY, help="video RAM"),
    _option(
        "keyboard_layout",
        str | None,
        None,
        "--keyboard-layout",
        metavar="LAYOUT",
        rich_help_panel=_DISPLAY,
        help="e.g. en-us, de",
    ),
    _option("copy_paste", bool | None, None, "--copy-paste/--no-copy-paste", rich_help_panel=_DISPLAY),
    _option(
        "file_transfer", bool | None, None, "--file-transfer/--no-file-transfer", rich_help_panel=_DISPLAY
    ),
    _option(
        "spice_secure_channel",
        list[str] | None,
        None,
        "--spice-secure-channel",
        metavar="CHANNEL",
        rich_help_panel=_DISPLAY,
        help="a SPICE channel that needs TLS (main, display, inputs, ...); repeatable",
    ),
    _option(
        "disconnect_action",
        DisconnectAction | None,
        None,
        "--disconnect-action",
        case_sensitive=False,
        rich_help_panel=_DISPLAY,
        help="what the guest does when the console disconnects",
    ),
    _option(
        "allow_reconnect",
        bool | None,
        None,
        "--allow-reconnect/--no-allow-reconnect",
        rich_help_panel=_DISPLAY,
        help="let another user take over an open console",
    ),
]
_DRIVES = "Boot media"
VM_OPTIONS += [
    _option(
        "cdrom",
        str | None,
        None,
        "--cdrom",
        metavar="IMAGE",
        rich_help_panel=_DRIVES,
        help="an ISO image in the CD-ROM ('' for none)",
    ),
    _option(
        "disk",
        list[str] | None,
        None,
        "--disk",
        metavar="IMAGE",
        rich_help_panel=_DRIVES,
        help="a disk: a copy-on-write overlay of this image (repeatable)",
    ),
    _option(
        "disk_size",
        list[int] | None,
        None,
        "--disk-size",
        metavar="GiB",
        rich_help_panel=_DRIVES,
        help="an empty disk of this size (repeatable; after the --disk ones)",
    ),
    _option(
        "boot",
        str | None,
        None,
        "--boot",
        metavar="ORDER",
        rich_help_panel=_DRIVES,
        help="boot order, e.g. disk,cdrom",
    ),
]
API_FIELDS = {
    "os": "os_type",
    "memory": "memory_mib",
    "cpus": "vcpus",
    "spice_secure_channel": "spice_secure_channels",
}


def _fields(options: dict[str, Any]) -> dict[str, Any]:
    """The API fields of the VM_OPTIONS that were given."""
    consoles, headless = options.pop("console"), options.pop("no_console")
    if consoles and headless:
        usage_error("--console and --no-console exclude each other")
    fields: dict[str, Any] = {}
    disks = [{"image": i} for i in options.pop("disk") or []]
    disks += [{"size_gib": s} for s in options.pop("disk_size") or []]
    if disks:
        fields["disks"] = disks
    boot = options.pop("boot")
    if boot is not None:
        fields["boot"] = [b.strip() for b in boot.split(",") if b.strip()]
    if headless:
        fields["consoles"] = []
    elif consoles:
        fields["consoles"] = [c.value for c in consoles]
    for name, value in options.items():
        if value is None or value == []:
            continue
        fields[API_FIELDS.get(name, name)] = value.value if hasattr(value, "value") else value
    return fields


def command(app: typer.Typer, name: str, *, vm_options: bool = False) -> Callable:
    """Register `func(run, ...)` as `name`, with the connection options and --json added.

    With `vm_options=True` the VM_OPTIONS are added too and reach `func` as one
    `fields` dict of API fields. Client errors end the command: 1 refused, 2 unreachable.
    """

    def decorate(func: Callable) -> Callable:
        own = list(inspect.signature(func, eval_str=True).parameters.values())[1:]
        extra = [*(VM_OPTIONS if vm_options else []), *CONNECTION]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            conn = [kwargs.pop(p.name) for p in CONNECTION]
            if vm_options:
                kwargs["fields"] = _fields({p.name: kwargs.pop(p.name) for p in VM_OPTIONS})
            run = Run(*conn)
            try:
                func(run, *args, **kwargs)
            except ClientError as err:
                _fail(run, err)
            finally:
                run.close()

        params = [p for p in own if p.name != "fields"] + extra
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        app.command(name)(wrapper)
        return func

    return decorate


def usage_error(message: str) -> NoReturn:
    """A command line that cannot make a request: exit 2, as click does for its own."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _fail(run: Run, err: ClientError) -> NoReturn:
    message = f"error: {err}"
    if isinstance(err, EngineApiError) and err.status == 401:
        c = run.client
        message += (
            f" (user {c.user} on {c.url}; pass --user and --password, set ${ENV_USER} and "
            f"${ENV_PASSWORD}, or write {settings_path()})"
        )
    typer.echo(message, err=True)
    raise typer.Exit(err.exit_code)


# --- rendering -------------------------------------------------------------------------


def _table(*columns: str, title: str | None = None) -> Table:
    return Table(*columns, box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)


def _details(run: Run, rows: list[tuple[str, Any]], title: str | None = None) -> None:
    t = Table(box=None, show_header=False, title=title, title_justify="left", pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for key, value in rows:
        t.add_row(key, _text(value))
    run.console.print(t)


def _text(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _consoles(display: dict) -> str:
    return ", ".join(display["consoles"]) or "none (headless)"


def _display_rows(d: dict) -> list[tuple[str, Any]]:
    return [
        ("video", d["video"]),
        ("consoles", _consoles(d)),
        ("monitors", d["monitors"]),
        ("video RAM (KiB)", d.get("vram")),
        ("keyboard layout", d.get("keyboard_layout")),
        ("copy & paste", d["copy_paste"]),
        ("file transfer", d["file_transfer"]),
        ("SPICE secure channels", d.get("spice_secure_channels")),
        ("disconnect action", d["disconnect_action"]),
        ("allow reconnect", d["allow_reconnect"]),
    ]


# --- clusters --------------------------------------------------------------------------


def _cluster_details(run: Run, c: dict) -> None:
    _details(
        run,
        [
            ("cluster", c["name"]),
            ("id", c["id"]),
            ("level", c["compat_level"]),
            ("arch", c["arch"]),
            ("console address", c.get("console_address")),
            ("description", c.get("description")),
        ],
    )


@command(cluster_app, "add")
def cluster_add(
    run: Run,
    name: Annotated[str, typer.Argument(help="cluster name")],
    level: Annotated[LevelChoice, typer.Option("--level", help="compatibility level")] = CLUSTER_LEVELS[-1],
    arch: Annotated[ArchChoice, typer.Option("--arch")] = "x86_64",
    console_address: Annotated[
        str | None, typer.Option("--console-address", help="address clients use for every host's consoles")
    ] = None,
    description: Annotated[str, typer.Option("--description")] = "",
) -> None:
    """Add a cluster."""
    body = {"name": name, "compat_level": level, "arch": arch, "description": description}
    if console_address:
        body["console_address"] = console_address
    c = run.post("clusters", body=body)
    run.show(c, lambda: _cluster_details(run, c))


@command(cluster_app, "list")
def cluster_list(run: Run) -> None:
    """List the clusters."""
    clusters = run.get("clusters")

    def render() -> None:
        t = _table("Name", "Level", "Arch", "Console address", "Description")
        for c in clusters:
            t.add_row(
                c["name"], c["compat_level"], c["arch"], _text(c.get("console_address")), c["description"]
            )
        run.console.print(t)

    run.show(clusters, render)


@command(cluster_app, "show")
def cluster_show(run: Run, name: Annotated[str, typer.Argument(help="cluster name or id")]) -> None:
    """Show a cluster."""
    c = run.get("clusters", name)
    run.show(c, lambda: _cluster_details(run, c))


@command(cluster_app, "remove")
def cluster_remove(run: Run, name: Annotated[str, typer.Argument(help="cluster name or id")]) -> None:
    """Remove a cluster without hosts or VMs."""
    run.show(run.delete("clusters", name), lambda: run.say(f"cluster {name} removed"))


# --- hosts -----------------------------------------------------------------------------


def split_address(text: str) -> tuple[str, int | None]:
    """ADDRESS[:PORT] -> (address, port or None); IPv6 as [::1]:54321 or a bare ::1."""
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            usage_error(f"{text!r} is not ADDRESS[:PORT]")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
    else:
        address, port_text = text, ""
    if not port_text:
        return address, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        usage_error(f"{text!r}: {port_text!r} is not a port (1-65535)")
    return address, int(port_text)


def _host_details(run: Run, h: dict) -> None:
    caps = h.get("capabilities") or {}
    rows = [
        ("host", h["name"]),
        ("id", h["id"]),
        ("agent", f"{h['address']}:{h['port']}"),
        ("cluster", h["cluster"]),
        ("status", h["status"]),
        ("console address", h.get("console_address")),
        ("last seen", h.get("last_seen")),
        ("certificate", h.get("cert_fingerprint") or "none: plain HTTP (insecure)"),
    ]
    if h.get("cert_expires"):
        rows.append(("certificate expires", h["cert_expires"]))
    if caps:
        other = "yes (not from this engine's CA)" if caps.get("spiceTls") else "no"
        rows.append(("SPICE TLS", (h.get("spice_subject") if caps.get("spiceTls") else None) or other))
    if caps:
        rows += [
            ("virtualization", caps.get("virtType")),
            ("cluster levels", caps.get("clusterLevels")),
            ("consoles", caps.get("graphicsTypes")),
            ("memory (MiB)", f"{caps.get('memFree', '?')} free of {caps.get('memTotal', '?')}"),
            ("CPU cores", caps.get("cpuCores")),
            ("libvirt / QEMU", f"{caps.get('libvirtVersion', '?')} / {caps.get('qemuVersion', '?')}"),
        ]
    _details(run, rows)


@command(host_app, "add")
def host_add(
    run: Run,
    name: Annotated[str, typer.Argument(help="host name")],
    address: Annotated[str, typer.Argument(help=f"agent ADDRESS[:PORT], port {DEFAULT_AGENT_PORT} if none")],
    cluster: Annotated[str, typer.Option("--cluster", help="the cluster the host joins")],
    console_address: Annotated[
        str | None, typer.Option("--console-address", help="address clients use for this host's consoles")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="plain HTTP, for an agent run with --insecure (no enrolment)")
    ] = False,
) -> None:
    """Add a host: it must have enrolled (`host token`, then `agent enroll` on the host), its agent
    must answer over TLS with that certificate and speak the cluster's level."""
    addr, port = split_address(address)
    body: dict[str, Any] = {"name": name, "address": addr, "cluster": cluster}
    if insecure:
        body["insecure"] = True
    if port is not None:
        body["port"] = port
    if console_address:
        body["console_address"] = console_address
    h = run.post("hosts", body=body)
    run.show(h, lambda: _host_details(run, h))


@command(host_app, "token")
def host_token(
    run: Run,
    name: Annotated[str, typer.Argument(help="the name the host will be added as")],
    ttl: Annotated[int, typer.Option("--ttl", help="seconds the token is good for (at most 3600)")] = 3600,
) -> None:
    """Make a one-time token with which host NAME gets its certificate (`agent enroll`)."""
    t = run.post("hosts", "enrollment-tokens", body={"host": name, "ttl": ttl})

    def render() -> None:
        run.say(f"token for host {t['host']}, good once until {t['expires']}:")
        run.say(f"  {t['token']}")
        run.say(f"engine CA: {t['ca_fingerprint']}")
        run.say("on the host, as root:")
        run.say(
            f"  multiconsole agent enroll --engine {run.client.url} --token {t['token']} "
            f"--ca-fingerprint {t['ca_fingerprint']} [--address ADDRESS]"
        )
        run.say(f"then here: multiconsole host add {t['host']} ADDRESS --cluster CLUSTER")

    run.show(t, render)


@command(host_app, "renew-cert")
def host_renew_cert(run: Run, name: Annotated[str, typer.Argument(help="host name or id")]) -> None:
    """Renew a host's certificates (its agent's and its SPICE one) over its TLS connection,
    without re-enrolling: the host makes new keys, the engine signs and pins the new certificate."""
    r = run.post("hosts", name, "certificate")

    def render() -> None:
        run.say(f"host {r['host']}: new certificate {r['fingerprint']}, valid until {r['not_after']}")
        if r.get("spice_renewed"):
            run.say(f"SPICE certificate renewed ({r['spice_subject']}): VMs started from now on use it")

    run.show(r, render)


@command(host_app, "list")
def host_list(run: Run) -> None:
    """List the hosts."""
    hosts = run.get("hosts")

    def render() -> None:
        t = _table("Name", "Agent", "Cluster", "Status", "Console address", "Last seen")
        for h in hosts:
            t.add_row(
                h["name"],
                f"{h['address']}:{h['port']}",
                h["cluster"],
                h["status"],
                _text(h.get("console_address")),
                _text(h.get("last_seen")),
            )
        run.console.print(t)

    run.show(hosts, render)


@command(host_app, "show")
def host_show(run: Run, name: Annotated[str, typer.Argument(help="host name or id")]) -> None:
    """Show a host and what its agent can do."""
    h = run.get("hosts", name)
    run.show(h, lambda: _host_details(run, h))


@command(host_app, "maintenance")
def host_maintenance(run: Run, name: Annotated[str, typer.Argument(help="host name or id")]) -> None:
    """Put a host in maintenance: no VMs start there (it must run none)."""
    h = run.post("hosts", name, "maintenance")
    run.show(h, lambda: run.say(f"host {h['name']} is {h['status']}"))


@command(host_app, "activate")
def host_activate(run: Run, name: Annotated[str, typer.Argument(help="host name or id")]) -> None:
    """Take a host out of maintenance."""
    h = run.post("hosts", name, "activate")
    run.show(h, lambda: run.say(f"host {h['name']} is {h['status']}"))


@command(host_app, "remove")
def host_remove(run: Run, name: Annotated[str, typer.Argument(help="host name or id")]) -> None:
    """Remove a host that runs no VMs."""
    run.show(run.delete("hosts", name), lambda: run.say(f"host {name} removed"))


# --- VMs -------------------------------------------------------------------------------


def _next_run_changes(vm: dict) -> list[str]:
    """What the VM's next start changes, as `field: now -> then` lines."""
    nxt = vm.get("next_run")
    if not nxt:
        return []
    out = []
    for key, label in (("memory_mib", "memory (MiB)"), ("vcpus", "CPUs"), ("os_type", "OS")):
        if nxt.get(key) is not None and nxt[key] != vm[key]:
            out.append(f"{label}: {vm[key]} -> {nxt[key]}")
    now, then = dict(_display_rows(vm["display"])), dict(_display_rows(nxt["display"]))
    for key, value in then.items():
        if value != now[key]:
            out.append(f"{key}: {_text(now[key])} -> {_text(value)}")
    return out


def _drive_rows(drives: dict | None) -> list[tuple[str, Any]]:
    if not drives:
        return []
    cdrom = drives.get("cdrom")
    disks = [
        f"overlay of {d['image']['name']}" if d.get("image") else f"empty, {d.get('size_gib')} GiB"
        for d in drives.get("disks", [])
    ]
    return [
        ("CD-ROM", cdrom["name"] if cdrom else None),
        ("disks", "; ".join(disks) or None),
        ("boot", ", ".join(drives.get("boot", [])) or None),
    ]


def _vm_details(run: Run, vm: dict) -> None:
    status = vm["status"] + (f" ({vm['status_reason']})" if vm.get("status_reason") else "")
    rows: list[tuple[str, Any]] = [
        ("VM", vm["name"]),
        ("id", vm["id"]),
        ("cluster", vm["cluster"]),
        ("template", vm.get("template")),
        ("status", status),
        ("host", vm.get("host")),
        ("OS", vm["os_type"]),
        ("memory (MiB)", vm["memory_mib"]),
        ("CPUs", vm["vcpus"]),
        *_display_rows(vm["display"]),
        *_drive_rows(vm.get("drives")),
        ("pinned to host", vm.get("pinned_to_host")),
    ]
    _details(run, rows)
    if vm.get("consoles"):
        _listening(run, vm["consoles"])
    _next_run_note(run, vm)


def _next_run_note(run: Run, vm: dict) -> None:
    changes = _next_run_changes(vm)
    if changes:
        run.say(f"At the next start of {vm['name']}:")
        for line in changes:
            run.say(f"  {line}")


def _listening(run: Run, consoles: list[dict], title: str = "Consoles listening") -> None:
    t = _table("Protocol", "Address", "Port", "TLS port", title=title)
    for c in consoles:
        t.add_row(c["protocol"], c["address"], _text(c.get("port")), _text(c.get("tls_port")))
    run.console.print(t)


@command(vm_app, "create", vm_options=True)
def vm_create(
    run: Run,
    name: Annotated[str, typer.Argument(help="VM name")],
    cluster: Annotated[str, typer.Option("--cluster", help="the cluster the VM runs in")],
    template: Annotated[str | None, typer.Option("--template", help="template to start from")] = None,
    fields: dict | None = None,
) -> None:
    """Create a VM (stopped), e.g. --video qxl --console spice --console vnc."""
    body = {"name": name, "cluster": cluster, **(fields or {})}
    if template:
        body["template"] = template
    vm = run.post("vms", body=body)
    run.show(vm, lambda: _vm_details(run, vm))


@command(vm_app, "list")
def vm_list(run: Run) -> None:
    """List the VMs."""
    vms = run.get("vms")

    def render() -> None:
        t = _table("Name", "Status", "Cluster", "Host", "MiB", "CPUs", "Video", "Consoles", "Next start")
        for vm in vms:
            nxt = "changes pending" if vm.get("next_run") else ""
            t.add_row(
                vm["name"],
                vm["status"],
                vm["cluster"],
                _text(vm.get("host")),
                str(vm["memory_mib"]),
                str(vm["vcpus"]),
                vm["display"]["video"],
                _consoles(vm["display"]),
                nxt,
            )
        run.console.print(t)

    run.show(vms, render)


@command(vm_app, "show")
def vm_show(run: Run, name: Annotated[str, typer.Argument(help="VM name or id")]) -> None:
    """Show a VM: hardware, display, consoles, pending changes."""
    vm = run.get("vms", name)
    run.show(vm, lambda: _vm_details(run, vm))


@command(vm_app, "start")
def vm_start(run: Run, name: Annotated[str, typer.Argument(help="VM name or id")]) -> None:
    """Start a VM on a host of its cluster."""
    vm = run.post("vms", name, "start")

    def render() -> None:
        run.say(f"VM {vm['name']} is {vm['status']} on host {vm.get('host')}")
        if vm.get("consoles"):
            _listening(run, vm["consoles"])
        else:
            run.say(f"its consoles are not listening yet: see `multiconsole vm consoles {vm['name']}`")

    run.show(vm, render)


@command(vm_app, "stop")
def vm_stop(run: Run, name: Annotated[str, typer.Argument(help="VM name or id")]) -> None:
    """Stop a VM (power off)."""
    vm = run.post("vms", name, "stop")

    def render() -> None:
        run.say(f"VM {vm['name']} is {vm['status']}")
        _next_run_note(run, vm)

    run.show(vm, render)


@command(vm_app, "edit", vm_options=True)
def vm_edit(
    run: Run,
    name: Annotated[str, typer.Argument(help="VM name or id")],
    new_name: Annotated[str | None, typer.Option("--name", help="rename the VM (stopped only)")] = None,
    fields: dict | None = None,
) -> None:
    """Change a VM; a running VM gets hardware and display changes at its next start."""
    body = dict(fields or {})
    if new_name:
        body["name"] = new_name
    if not body:
        usage_error("nothing to change: give an option such as --memory or --console")
    vm = run.patch("vms", name, body=body)

    def render() -> None:
        if vm.get("next_run"):
            run.say(f"VM {vm['name']} is {vm['status']}: the change waits for its next start")
            _next_run_note(run, vm)
        else:
            run.say(f"VM {vm['name']} updated")
            _vm_details(run, vm)

    run.show(vm, render)


@command(vm_app, "consoles")
def vm_consoles(run: Run, name: Annotated[str, typer.Argument(help="VM name or id")]) -> None:
    """A VM's consoles: configured, listening now (address, port, TLS port), at next start."""
    data = run.get("vms", name, "consoles")
    run.show(data, lambda: render_consoles(run, data))


def render_consoles(run: Run, data: dict) -> None:
    """Tables of a /vms/{key}/consoles answer."""
    configured = ", ".join(c["protocol"] for c in data["configured"]) or "none (headless)"
    run.say(f"VM {data['vm']} ({data['status']}): consoles {configured}")
    if data["current"]:
        _listening(run, data["current"])
    elif data["status"] == "Down":
        run.say("not listening: the VM is down")
    else:
        run.say("not listening yet: the host has not reported the consoles' ports")
    if data.get("next_run") is not None:
        nxt = ", ".join(c["protocol"] for c in data["next_run"]) or "none (headless)"
        run.say(f"at the next start: consoles {nxt}")


@command(vm_app, "remove")
def vm_remove(run: Run, name: Annotated[str, typer.Argument(help="VM name or id")]) -> None:
    """Remove a stopped VM."""
    run.show(run.delete("vms", name), lambda: run.say(f"VM {name} removed"))


# --- templates -------------------------------------------------------------------------


def _template_details(run: Run, t: dict) -> None:
    _details(
        run,
        [
            ("template", t["name"]),
            ("id", t["id"]),
            ("cluster", t.get("cluster")),
            ("OS", t["os_type"]),
            ("memory (MiB)", t["memory_mib"]),
            ("CPUs", t["vcpus"]),
            *_display_rows(t["display"]),
            *_drive_rows(t.get("drives")),
            ("description", t.get("description")),
        ],
    )


@command(template_app, "create", vm_options=True)
def template_create(
    run: Run,
    name: Annotated[str, typer.Argument(help="template name")],
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="check against this cluster's level (else the newest)")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    fields: dict | None = None,
) -> None:
    """Create a template: the hardware and display new VMs start from."""
    body = {"name": name, **(fields or {})}
    if cluster:
        body["cluster"] = cluster
    if description:
        body["description"] = description
    t = run.post("templates", body=body)
    run.show(t, lambda: _template_details(run, t))


@command(template_app, "list")
def template_list(run: Run) -> None:
    """List the templates."""
    templates = run.get("templates")

    def render() -> None:
        t = _table("Name", "Cluster", "OS", "MiB", "CPUs", "Video", "Consoles")
        for tp in templates:
            t.add_row(
                tp["name"],
                _text(tp.get("cluster")),
                tp["os_type"],
                str(tp["memory_mib"]),
                str(tp["vcpus"]),
                tp["display"]["video"],
                _consoles(tp["display"]),
            )
        run.console.print(t)

    run.show(templates, render)


@command(template_app, "show")
def template_show(run: Run, name: Annotated[str, typer.Argument(help="template name or id")]) -> None:
    """Show a template."""
    t = run.get("templates", name)
    run.show(t, lambda: _template_details(run, t))


@command(template_app, "remove")
def template_remove(run: Run, name: Annotated[str, typer.Argument(help="template name or id")]) -> None:
    """Remove a template."""
    run.show(run.delete("templates", name), lambda: run.say(f"template {name} removed"))
