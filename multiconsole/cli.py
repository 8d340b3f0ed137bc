"""`multiconsole` command line: the agent, the demo, and (later) the engine and clients."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import typer

from multiconsole import logs

# No locals in tracebacks: they may hold passwords.
app = typer.Typer(
    help="multiconsole: VMs with SPICE and VNC consoles side by side.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

DEFAULT_PKI = Path("/etc/multiconsole/pki")


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    try:
        return host.strip("[]") or "0.0.0.0", int(port)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not HOST:PORT") from None


agent_app = typer.Typer(
    help="The host agent: run it (no subcommand), or get its certificate (enroll).",
    invoke_without_command=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(agent_app, name="agent")


@agent_app.callback()
def agent(
    ctx: typer.Context,
    libvirt_uri: str = typer.Option("qemu:///system", help="libvirt connection URI"),
    listen: str = typer.Option("0.0.0.0:54321", help="HOST:PORT to serve JSON-RPC on"),
    insecure: bool = typer.Option(False, help="serve plain HTTP without client certificates"),
    virt_type: str = typer.Option("auto", help="auto, kvm or qemu (TCG)"),
    display_listen: str = typer.Option("0.0.0.0", help="address the consoles listen on"),
    pki_dir: Path = typer.Option(DEFAULT_PKI, help="agent-cert.pem, agent-key.pem and ca-cert.pem"),
    storage_dir: Path | None = typer.Option(
        None, help="the image cache (images/) and VMs' disks (disks/); default <data dir>/host"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every action"),
) -> None:
    """Run the host agent: VMs through libvirt, JSON-RPC for the engine (TLS with client
    certificates, from `agent enroll`; plain HTTP with --insecure)."""
    if ctx.invoked_subcommand is not None:
        return
    from multiconsole.agent.server import TlsSetupError, serve, tls_options
    from multiconsole.agent.vms import VmManager

    logs.setup(verbose)
    if virt_type not in ("auto", "kvm", "qemu"):
        raise typer.BadParameter("--virt-type must be auto, kvm or qemu")
    host, port = _host_port(listen, 54321)
    tls = None
    if not insecure:
        try:
            tls = tls_options(pki_dir)
        except TlsSetupError as err:
            typer.echo(f"agent: {err}", err=True)
            raise typer.Exit(2) from None
    from multiconsole.agent.images import Storage
    from multiconsole.paths import data_dir

    storage = Storage(
        storage_dir or data_dir(create=False) / "host", own_parents_below=data_dir(create=False)
    )
    manager = VmManager(libvirt_uri, virt_type=virt_type, listen_address=display_listen, storage=storage)
    serve(manager, host, port, tls)


@agent_app.command("enroll")
def agent_enroll(
    engine: str = typer.Option(..., "--engine", help="the engine's URL, e.g. https://engine.example:8443"),
    token: str = typer.Option(
        ...,
        "--token",
        envvar="MULTICONSOLE_ENROLL_TOKEN",
        help="the one-time token of `multiconsole host token`",
    ),
    pki_dir: Path = typer.Option(
        DEFAULT_PKI, help="where to write agent-cert.pem, agent-key.pem, ca-cert.pem"
    ),
    address: list[str] = typer.Option(
        None,
        "--address",
        help="a DNS name or IP address of this host to put in its request (repeat; the engine decides "
        "the certificate's names: <host>.host.multiconsole.invalid); default: its host names",
    ),
    ca_file: Path = typer.Option(None, help="the CA certificate to check an https:// engine with"),
    ca_fingerprint: str = typer.Option(
        None, help="sha256:... of the engine's CA, as `multiconsole host token` prints it: checked"
    ),
) -> None:
    """Get this host's certificate from the engine with a one-time token; the key stays here."""
    from multiconsole.agent.enroll import EnrollError, enroll

    try:
        done = enroll(engine, token, pki_dir, address or None, ca_file, ca_fingerprint)
    except (EnrollError, OSError) as err:
        typer.echo(f"agent enroll: {err}", err=True)
        raise typer.Exit(1) from None
    for warning in done.warnings:
        typer.echo(f"agent enroll: warning: {warning}", err=True)
    typer.echo(
        f"enrolled as host {done.host}: certificate {done.fingerprint}, valid until "
        f"{done.not_after:%Y-%m-%d}, names {', '.join(done.names) or '-'}\n"
        f"written: {', '.join(str(f) for f in done.files)}\n"
        f"next: run `multiconsole agent --pki-dir {pki_dir}` (restart it if it runs), then on the engine "
        f"`multiconsole host add {done.host} ADDRESS --cluster CLUSTER`"
    )


def _origins(host: str, port: int, scheme: str = "https") -> list[str]:
    """Where browsers reach an engine listening on host:port (for the proxy's Origin check)."""
    import socket

    names = {host}
    if host in ("0.0.0.0", "::", "127.0.0.1", "localhost"):
        names |= {"127.0.0.1", "localhost"}
    if host in ("0.0.0.0", "::"):
        names |= {socket.gethostname(), socket.getfqdn()}
    names -= {"0.0.0.0", "::"}
    return sorted(f"{scheme}://[{n}]:{port}" if ":" in n else f"{scheme}://{n}:{port}" for n in names)


@app.command()
def engine(
    db: str = typer.Option(None, help="SQLAlchemy URL; default: SQLite in the data directory"),
    listen: str = typer.Option(
        None, help="HOST:PORT to serve the API and web UI on; default 127.0.0.1:8443 (--insecure: :8080)"
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="serve plain HTTP (and ws:// consoles): passwords cross the network in clear",
    ),
    tls_cert: Path = typer.Option(
        None, help="PEM certificate (chain) to serve HTTPS with; default one from the engine's CA"
    ),
    tls_key: Path = typer.Option(None, help="PEM private key of --tls-cert"),
    tls_name: list[str] = typer.Option(
        None,
        "--tls-name",
        help="another DNS name or IP address for the engine's own certificate (repeat); it always has "
        "127.0.0.1, localhost, this host's names and the --listen address",
    ),
    admin_password: str = typer.Option(
        None, envvar="MULTICONSOLE_ADMIN_PASSWORD", help="admin@internal's password on first start"
    ),
    monitor_interval: float = typer.Option(3.0, help="seconds between polls of each host"),
    proxy_port: int = typer.Option(6100, help="port of the browser console's websocket proxy; 0: none"),
    public_origin: list[str] = typer.Option(
        None,
        "--public-origin",
        help="a URL browsers reach the engine at (repeat), for the proxy's Origin check; "
        "default: derived from --listen",
    ),
    pki_dir: Path = typer.Option(
        None, help="the engine's CA and client certificate (made on first start); default <data dir>/pki"
    ),
    image_max_gib: int = typer.Option(64, help="the largest image an upload may bring (GiB)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every action"),
) -> None:
    """Run the engine: REST API and web UI over HTTPS (--insecure: HTTP) on SQLite or PostgreSQL,
    monitoring the hosts."""
    from urllib.parse import urlsplit

    import uvicorn

    from multiconsole.client import remember_ca
    from multiconsole.engine import https
    from multiconsole.engine.app import Settings, make_app
    from multiconsole.paths import data_dir, private_file

    logs.setup(verbose)
    # What the engine makes (database, -wal, -shm, logs) is its owner's only (paths.py).
    os.umask(0o077)
    data_dir()
    if insecure and (tls_cert or tls_key or tls_name):
        raise typer.BadParameter("--insecure serves no certificate: drop --tls-cert, --tls-key, --tls-name")
    default_port = 8080 if insecure else 8443
    host, port = _host_port(listen or f"127.0.0.1:{default_port}", default_port)
    scheme = "http" if insecure else "https"
    url = db or f"sqlite:///{data_dir() / 'engine.db'}"
    # The names browsers are told to use are names the certificate must have.
    origin_names = [urlsplit(o).hostname or "" for o in public_origin or []]
    try:
        application = make_app(
            Settings(
                db_url=url,
                admin_password=admin_password,
                monitor_interval=monitor_interval,
                proxy_port=proxy_port or None,
                proxy_host=host,
                allowed_origins=public_origin
                or _origins(host, port, scheme)
                + [f"https://[{n}]:{port}" if ":" in n else f"https://{n}:{port}" for n in tls_name or []],
                pki_dir=str(pki_dir) if pki_dir else None,
                https=not insecure,
                tls_cert=str(tls_cert) if tls_cert else None,
                tls_key=str(tls_key) if tls_key else None,
                tls_names=https.default_names(host, [*(tls_name or []), *origin_names]),
                image_max_bytes=image_max_gib << 30,
            )
        )
    except https.HttpsSetupError as err:
        typer.echo(f"engine: {err}", err=True)
        raise typer.Exit(2) from None
    ca = application.state.ca
    typer.echo(f"engine: certificate authority {ca.fingerprint} in {ca.directory}", err=True)
    tls = application.state.tls
    if tls is not None:
        # The CLI of whoever runs the engine then trusts it with no flags.
        try:
            remember_ca(ca.cert_pem)
        except OSError as err:
            typer.echo(f"engine: could not write the CA for the CLI: {err}", err=True)
        whose = "its own" if tls.ours else "the given"
        typer.echo(
            f"engine: serving https://{host}:{port} with {whose} certificate "
            f"{tls.fingerprint} (names {', '.join(tls.names) or '-'}; until {tls.not_after:%Y-%m-%d}); "
            f"clients trust the CA at /api/v1/pki/ca.pem",
            err=True,
        )
    else:
        typer.echo(f"engine: serving plain http://{host}:{port} (--insecure)", err=True)

    generated = application.state.generated_admin_password
    if generated:
        secret = data_dir() / "admin-password"
        with private_file(secret, "w") as f:
            f.write(generated + "\n")
        typer.echo(f"engine: created admin@internal; its password is in {secret}", err=True)
    tls_files = {"ssl_certfile": str(tls.cert_path), "ssl_keyfile": str(tls.key_path)} if tls else {}
    uvicorn.run(
        application,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        **tls_files,
    )


@app.command()
def demo(
    agent_port: int = typer.Option(54321, help="port of the demo's agent"),
    engine_port: int = typer.Option(8443, help="port of the demo's engine (HTTPS)"),
    proxy_port: int = typer.Option(6100, help="port of the demo's browser-console proxy"),
    virt_type: str = typer.Option("qemu", help="auto, kvm or qemu (TCG)"),
    ticket_ttl: int = typer.Option(600, help="seconds the printed console passwords stay valid"),
    vm_name: str = typer.Option("demo", help="name of the demo VM (made from the template tiny-linux)"),
) -> None:
    """Run an agent, the engine and a VM 'demo' that boots tiny-linux to a shell, with SPICE and
    VNC; print how to connect and how to type into it."""
    from multiconsole.demo import run

    logs.setup(False)
    run(
        agent_port=agent_port,
        engine_port=engine_port,
        proxy_port=proxy_port,
        virt_type=virt_type,
        ticket_ttl=ticket_ttl,
        vm_name=vm_name,
    )


# The engine's REST API from the shell: multiconsole cluster | host | vm | template ...
from multiconsole import cli_console  # noqa: E402
from multiconsole.cli_engine import cluster_app, host_app, template_app, vm_app  # noqa: E402

app.add_typer(cluster_app, name="cluster")
app.add_typer(host_app, name="host")
app.add_typer(vm_app, name="vm")
app.add_typer(template_app, name="template")
from multiconsole.cli_images import image_app  # noqa: E402

app.add_typer(image_app, name="image")
cli_console.register(app)


@app.command()
def proxy(
    listen: str = typer.Option("0.0.0.0:6100", help="HOST:PORT of the websocket proxy"),
    key_file: Path = typer.Option(
        None, help="ticket key shared with the engine; default <data dir>/proxy-ticket.key (made if missing)"
    ),
    allowed_origin: list[str] = typer.Option(
        None,
        "--allowed-origin",
        help="a browser Origin allowed to connect (repeat); default the engine's https://127.0.0.1:8443 "
        "and https://localhost:8443",
    ),
    allow_missing_origin: bool = typer.Option(False, help="accept clients without an Origin (non-browsers)"),
    tls_cert: Path = typer.Option(None, help="PEM certificate (chain): serve wss:// instead of ws://"),
    tls_key: Path = typer.Option(None, help="PEM private key of --tls-cert"),
    idle_timeout: float = typer.Option(None, help="close sessions idle this many seconds"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every session"),
) -> None:
    """Run the browser-console proxy (websocket -> VNC) as its own process, for scale."""
    import resource

    from multiconsole.proxy.server import ProxyServer
    from multiconsole.proxy.tickets import default_key_path, load_or_create_key

    logs.setup(verbose)
    host, port = _host_port(listen, 6100)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:  # two sockets per session
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = None
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    origins = allowed_origin or ["https://127.0.0.1:8443", "https://localhost:8443"]
    try:
        server = ProxyServer(
            load_or_create_key(key_file or default_key_path()),
            origins,
            host,
            port,
            ssl=context,
            allow_missing_origin=allow_missing_origin,
            idle_timeout=idle_timeout,
        )
    except (OSError, ValueError) as err:
        typer.echo(f"proxy: {err}", err=True)
        raise typer.Exit(2) from None
    server.run()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
