"""The browser console: proxy tickets, the in-engine websocket proxy, and the noVNC page."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session, sessionmaker

from multiconsole.engine import api, consoles, headers, permissions
from multiconsole.engine.db import Host, Vm, VmConsole
from multiconsole.engine.permissions import Grants
from multiconsole.engine.schemas import ProxyTicketIn, ProxyTicketOut
from multiconsole.proxy import tickets
from multiconsole.proxy.server import ProxyServer

log = logging.getLogger(__name__)
WEB = Path(__file__).parent / "web"
# npm installs noVNC next to the project (scripts/setup.sh); the engine serves its ES modules.
NOVNC_DIR = Path(__file__).resolve().parents[2] / "node_modules" / "@novnc" / "novnc"
templates = Environment(loader=FileSystemLoader(WEB / "templates"), autoescape=select_autoescape(["html"]))
PROXY_TICKET_TTL = 120


def make_proxy(
    sessions: sessionmaker, key: bytes, origins: list[str], host: str, port: int, ssl=None
) -> ProxyServer:
    """The in-engine websocket proxy; `ssl` (the engine's server context) makes it wss://."""

    def still_there(claims: tickets.Claims) -> bool:
        """The port must still be that VM's console on that host, the VM still running, and
        the ticket's user must still have console_user on that VM."""
        with sessions() as session:
            console = session.get(VmConsole, (claims.vm, claims.console))
            vm = session.get(Vm, claims.vm)
            if console is None or vm is None or vm.host_id is None:
                return False
            if vm.status not in consoles.CONSOLE_STATES:
                return False
            h = session.get(Host, vm.host_id)
            if console.port != claims.port or h is None or h.address != claims.host:
                return False
            return permissions.user_may_open_console(session, claims.user, vm.id)

    async def target_check(claims: tickets.Claims) -> bool:
        return await asyncio.to_thread(still_there, claims)

    def record(event: str, claims: tickets.Claims | None, peer) -> None:
        if claims is None or event not in ("opened", "refused", "failed"):
            return
        with sessions() as session:
            vm = session.get(Vm, claims.vm)
            address = peer[0] if isinstance(peer, tuple) else str(peer or "")
            consoles.audit(
                session,
                f"browser console {event}",
                claims.user,
                vm,
                claims.console,
                address,
                detail=f"ticket {claims.jti_prefix}",
            )
            session.commit()

    async def on_session(event: str, claims, peer) -> None:
        await asyncio.to_thread(record, event, claims, peer)

    return ProxyServer(key, origins, host, port, ssl=ssl, target_check=target_check, on_session=on_session)


router = APIRouter()


@router.post("/api/v1/vms/{key}/consoles/vnc/proxy-ticket", response_model=ProxyTicketOut)
def proxy_ticket(
    key: str,
    request: Request,
    response: Response,
    body: ProxyTicketIn | None = None,
    session: Session = Depends(api.db, scope="function"),
    g: Grants = Depends(api.grants),
):
    """A VNC one-time password and a signed, single-use ticket for the websocket proxy,
    naming this VM's console and nothing else."""
    vm = api.console_vm(session, g, key)
    user = g.user
    proxy: ProxyServer | None = request.app.state.proxy
    if proxy is None:
        from multiconsole.engine.errors import EngineError

        raise EngineError(None, "the browser console is off: this engine runs no websocket proxy", 409)
    body = body or ProxyTicketIn()
    api.ticket_rate(request, user)
    t = consoles.issue_ticket(
        session, request.app.state.agents, vm.id, "vnc", user, PROXY_TICKET_TTL, None, body.take_over
    )
    response.headers.update(api.NO_STORE)
    vm = session.get(Vm, t["vm_id"])
    host = session.get(Host, vm.host_id)
    # The proxy runs beside the engine: it reaches the VNC port at the agent's address.
    token, claims = tickets.issue(
        request.app.state.proxy_key, vm.id, "vnc", host.address, t["port"], user.name, ttl=PROXY_TICKET_TTL
    )
    # The proxy serves TLS exactly when the engine does (same certificate), whatever the request.
    scheme = "wss" if proxy.ssl is not None else "ws"
    where = request.url.hostname or "127.0.0.1"
    where = f"[{where}]" if ":" in where else where
    return ProxyTicketOut(
        url=f"{scheme}://{where}:{proxy.port}/{token}",
        password=t["password"],
        expires=t["expires"],
        vm=vm.name,
        vm_id=vm.id,
    )


@router.get("/console/{key}", response_class=HTMLResponse)
def console_page(
    key: str,
    request: Request,
    take_over: bool = False,
    view_only: bool = False,
    _own_pages: None = Depends(api.cookie_get_from_own_pages),
    session: Session = Depends(api.db, scope="function"),
    g: Grants = Depends(api.grants),
):
    """The VNC console of a VM in the browser (noVNC). The page asks for a ticket (and with
    `take_over`, takes the console over) as it loads: with a cookie, only from the engine's
    own pages or a typed URL."""
    vm = api.console_vm(session, g, key)
    html = templates.get_template("console.html").render(
        vm=vm.name,
        take_over=take_over,
        view_only=view_only,
        novnc="/static/novnc",
        api="/api/v1",
        static="/static/ui",
    )
    # Its script may reach the websocket proxy (another port: another origin) and nothing else.
    proxy: ProxyServer | None = request.app.state.proxy
    where = request.url.hostname or "127.0.0.1"
    where = f"[{where}]" if ":" in where else where
    connect = [f"{'wss' if proxy.ssl is not None else 'ws'}://{where}:{proxy.port}"] if proxy else []
    policy = headers.page_policy(connect)
    return HTMLResponse(html, headers={"Cache-Control": "no-store", "Content-Security-Policy": policy})
