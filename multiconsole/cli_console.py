"""`multiconsole console NAME` and `multiconsole audit`: open a console, read the audit log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import webbrowser
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import typer

from multiconsole.cli_engine import Run, _table, _text, command, usage_error
from multiconsole.client import path
from multiconsole.wire import vvfile

Protocol = Literal["spice", "vnc"]


def register(app: typer.Typer) -> None:
    @command(app, "console")
    def console(
        run: Run,
        name: Annotated[str, typer.Argument(help="VM name or id")],
        protocol: Annotated[Protocol, typer.Option("--protocol", "-p", help="which console")] = "spice",
        vv: Annotated[Path | None, typer.Option("--vv", help="write a remote-viewer file here")] = None,
        open_viewer: Annotated[bool, typer.Option("--open", help="open it in remote-viewer")] = False,
        browser: Annotated[bool, typer.Option("--browser", help="open the VNC console in a browser")] = False,
        ttl: Annotated[int, typer.Option("--ttl", help="seconds the password is valid")] = 120,
        take_over: Annotated[
            bool, typer.Option("--take-over", help="disconnect another user who holds the console")
        ] = False,
        type_text: Annotated[
            str | None, typer.Option("--type", help="type this text into the VM (its keyboard layout)")
        ] = None,
        type_file: Annotated[
            Path | None, typer.Option("--type-file", help="type this file's text into the VM ('-': stdin)")
        ] = None,
        key: Annotated[
            list[str] | None,
            typer.Option(
                "--key", help="press a key or combination: enter, ctrl-alt-delete, ctrl-alt-f2 (repeat)"
            ),
        ] = None,
    ) -> None:
        """Open a VM's console: a one-time password, a remote-viewer file, or the browser.
        Or type into it: --type TEXT, --type-file FILE, --key ctrl-alt-delete."""
        typing = sum((type_text is not None, type_file is not None, bool(key)))
        if typing:
            if typing > 1 or vv is not None or open_viewer or browser:
                usage_error("choose one of --type, --type-file and --key, without --vv, --open or --browser")
            send_keys(run, name, type_text, type_file, key)
            return
        if sum((vv is not None, open_viewer, browser)) > 1:
            usage_error("choose one of --vv, --open and --browser")
        if browser:
            if protocol != "vnc":
                usage_error("the browser console is VNC: use --protocol vnc")
            url = f"{run.client.url}/console/{name}" + ("?take_over=true" if take_over else "")
            run.show({"url": url}, lambda: run.say(f"opening {url}"))
            if not webbrowser.open(url):
                typer.echo(f"error: no web browser could be started: open {url} yourself", err=True)
                raise typer.Exit(1)
            return
        viewer = None
        if open_viewer:
            # Before the ticket: setting one may disconnect whoever holds the console.
            viewer = shutil.which("remote-viewer")
            if viewer is None:
                usage_error("remote-viewer is not installed (Debian: apt-get install virt-viewer)")
        t = run.post("vms", name, "consoles", protocol, "ticket", body={"ttl": ttl, "take_over": take_over})
        if vv is not None or open_viewer:
            text = vvfile.from_ticket(t)
            if viewer is not None:
                fd, tmp = tempfile.mkstemp(suffix=".vv")  # mode 0600; remote-viewer deletes it
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                try:
                    subprocess.Popen([viewer, tmp], stdin=subprocess.DEVNULL, start_new_session=True)
                except OSError as err:
                    os.unlink(tmp)  # it holds the password
                    typer.echo(f"error: cannot run {viewer}: {err.strerror}", err=True)
                    raise typer.Exit(1) from None
                run.show({**t, "file": tmp}, lambda: run.say(f"remote-viewer opened for {t['vm']}"))
                return
            vv.write_text(text)
            vv.chmod(0o600)
            run.show({**t, "file": str(vv)}, lambda: run.say(f"wrote {vv}: remote-viewer {vv}"))
            return
        out = {
            "vm": t["vm"],
            "protocol": t["protocol"],
            "host": t["address"],
            "port": t["port"],
            "tlsPort": t["tls_port"],
            "password": t["password"],
            "expires": t["expires"],
        }

        def table() -> None:
            tb = _table("VM", "Console", "Host", "Port", "TLS port", "Password", "Expires")
            tb.add_row(
                t["vm"],
                t["protocol"].upper(),
                t["address"],
                _text(t["port"]),
                _text(t["tls_port"]),
                t["password"],
                t["expires"],
            )
            run.console.print(tb)

        run.show(out, table)

    def send_keys(run: Run, name: str, text: str | None, file: Path | None, combos: list[str] | None) -> None:
        if file is not None:
            try:
                raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
                text = raw.decode("utf-8")
            except OSError as err:
                usage_error(f"cannot read {file}: {err.strerror}")
            except UnicodeDecodeError:
                usage_error(f"{file} is not UTF-8 text")
        body: dict = {"keys": combos} if combos else {"text": text}
        # About 30 ms a character on the host: wait for all of it.
        out = run.client.post(path("vms", name, "keys"), body, timeout=60 + 0.05 * len(text or ""))
        what = f"{out['characters']} characters" if text is not None else ", ".join(combos or [])
        run.show(out, lambda: run.say(f"typed {what} into {out['vm']} (layout {out['keyboard_layout']})"))

    @command(app, "audit")
    def audit(
        run: Run,
        vm: Annotated[str | None, typer.Option("--vm", help="VM name or id")] = None,
        who: Annotated[str | None, typer.Option("--who", help="whose entries (a user name)")] = None,
        event: Annotated[str | None, typer.Option("--event", help="e.g. 'console connected'")] = None,
        protocol: Annotated[Protocol | None, typer.Option("--protocol")] = None,
        since: Annotated[str | None, typer.Option("--since", help="ISO time")] = None,
        limit: Annotated[int, typer.Option("--limit")] = 100,
    ) -> None:
        """The console audit log: tickets, connections, disconnections, takeovers."""
        params = {
            "vm": vm,
            "user": who,
            "event": event,
            "protocol": protocol,
            "since": since,
            "limit": limit,
        }
        query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items() if v is not None)
        rows = run.client.get(f"/audit?{query}")

        def table() -> None:
            tb = _table("Time", "Event", "User", "VM", "Console", "Client", "Detail")
            for r in rows:
                tb.add_row(
                    r["time"],
                    r["event"],
                    _text(r["user"]),
                    _text(r["vm_name"]),
                    _text(r["protocol"]),
                    _text(r["client_address"]),
                    _text(r["detail"]),
                )
            run.console.print(tb)

        run.show(rows, table)
