"""The browser-console proxy: signed single-use tickets and a websocket <-> VNC relay."""

from multiconsole.proxy.server import DEFAULT_PORT, ProxyServer
from multiconsole.proxy.tickets import Claims, TicketError, issue, load_or_create_key, sign, verify

__all__ = [
    "DEFAULT_PORT",
    "Claims",
    "ProxyServer",
    "TicketError",
    "issue",
    "load_or_create_key",
    "sign",
    "verify",
]
