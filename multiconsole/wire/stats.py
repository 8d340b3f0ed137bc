"""VM display stats, host -> engine, in the three shapes engines have read.

* ``displayInfo``: one entry per graphics device in live-XML order, values as strings
  (what oVirt's engine reads from 3.4 on).
* legacy ``displayType`` / ``displayPort`` / ``displaySecurePort`` / ``displayIp``
  describing the primary console (what engines before 3.4 read).
* the feature page's ``additionalDisplayPort``: with SPICE and VNC both present,
  ``displayPort`` is SPICE's and ``additionalDisplayPort`` is VNC's.

The engine side (``consoles_from_stats``) reads them back, preferring displayInfo.
"""

from __future__ import annotations

from dataclasses import dataclass

from multiconsole.domain.devices import GraphicsType

UNSPECIFIED_ADDRESSES = ("", "0", "0.0.0.0", "::")


@dataclass(frozen=True)
class LiveConsole:
    """One graphics device of a running domain, as its live XML says."""

    type: GraphicsType
    port: int  # -1 when there is none (TLS-only SPICE, or not running)
    tls_port: int | None  # None when the device has no TLS port
    address: str


def _port_text(port: int | None) -> str:
    return "" if port is None else str(port)


def primary(consoles: list[LiveConsole]) -> LiveConsole | None:
    """The console legacy fields describe: SPICE when present (feature page), else VNC."""
    spice = [c for c in consoles if c.type == GraphicsType.SPICE]
    return spice[0] if spice else (consoles[0] if consoles else None)


def display_stats(consoles: list[LiveConsole]) -> dict[str, object]:
    """The display part of a VM's stats, for every engine generation at once."""
    info = [
        {
            "type": c.type.value,
            "port": str(c.port),
            "tlsPort": "" if c.type == GraphicsType.VNC else _port_text(c.tls_port),
            "ipAddress": c.address,
        }
        for c in consoles
    ]
    first = primary(consoles)
    vnc = next((c for c in consoles if c.type == GraphicsType.VNC), None)
    if first is None:
        return {
            "displayInfo": [],
            "displayType": "",
            "displayPort": "",
            "displaySecurePort": "",
            "displayIp": "",
            "additionalDisplayPort": "",
        }
    additional = vnc if (vnc is not None and first.type == GraphicsType.SPICE) else None
    return {
        "displayInfo": info,
        "displayType": "qxl" if first.type == GraphicsType.SPICE else "vnc",
        "displayPort": str(first.port),
        "displaySecurePort": _port_text(first.tls_port) if first.type == GraphicsType.SPICE else "",
        "displayIp": first.address,
        "additionalDisplayPort": str(additional.port) if additional else "",
    }


# --- engine side ---------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleAddress:
    """Where a user connects to one console of a running VM."""

    protocol: GraphicsType
    address: str
    port: int | None
    tls_port: int | None


def _parse_port(value: object) -> int | None:
    # A boolean's text is 'True' or 'False', which int() refuses like any other word.
    try:
        port = int(str(value).strip())
    except ValueError:
        return None
    return port if 0 < port <= 65535 else None


def _protocol(value: object) -> GraphicsType | None:
    if not isinstance(value, str):
        return None
    text = value.lower()
    if text in ("spice", "qxl", "qxlnc"):
        return GraphicsType.SPICE
    if text == "vnc":
        return GraphicsType.VNC
    return None


def consoles_from_stats(stats: dict, host_address: str, legacy: bool = False) -> list[ConsoleAddress]:
    """Console addresses from one VM's stats: displayInfo if present, else legacy fields.

    `legacy` reads only the legacy fields, as an engine below cluster level 3.4 does.
    Entries without any usable port are dropped; an unspecified listen address
    (0, 0.0.0.0) is replaced by the host's console address.
    """

    def address(value: object) -> str:
        # Only text is an address (str() of a huge int even raises).
        text = value.strip() if isinstance(value, str) else ""
        return host_address if text in UNSPECIFIED_ADDRESSES else text

    out: list[ConsoleAddress] = []
    info = None if legacy else stats.get("displayInfo")
    if isinstance(info, list) and info:
        for entry in info:
            if not isinstance(entry, dict):
                continue
            proto = _protocol(entry.get("type"))
            port, tls = _parse_port(entry.get("port")), _parse_port(entry.get("tlsPort"))
            if proto is None or (port is None and tls is None):
                continue
            out.append(ConsoleAddress(proto, address(entry.get("ipAddress")), port, tls))
        return out

    proto = _protocol(stats.get("displayType"))
    if proto is None:
        return out
    port, tls = _parse_port(stats.get("displayPort")), _parse_port(stats.get("displaySecurePort"))
    ip = address(stats.get("displayIp"))
    if port is not None or tls is not None:
        out.append(ConsoleAddress(proto, ip, port, tls))
    extra = _parse_port(stats.get("additionalDisplayPort"))
    if proto == GraphicsType.SPICE and extra is not None:
        out.append(ConsoleAddress(GraphicsType.VNC, ip, extra, None))
    return out
