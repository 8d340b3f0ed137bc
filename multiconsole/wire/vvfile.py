"""remote-viewer connection files (`.vv`, MIME application/x-virt-viewer).

Every value is written on one line: a value holding a newline or a section header
could smuggle extra keys into the file, so such values are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from multiconsole.domain.devices import GraphicsType
from multiconsole.domain.errors import FieldError

MIME = "application/x-virt-viewer"
SECURE_CHANNELS = "main;inputs;cursor;playback;record;display;smartcard;usbredir"
CHANNELS = frozenset(SECURE_CHANNELS.split(";"))


@dataclass(frozen=True)
class ViewerFile:
    protocol: GraphicsType
    host: str
    port: int | None
    password: str
    ttl: int
    title: str
    tls_port: int | None = None
    ca_pem: str | None = None
    host_subject: str | None = None
    proxy: str | None = None
    # The channels the client must open over TLS (the VM's SPICE secure channels);
    # None: all of them.
    secure_channels: tuple[str, ...] | None = None


def _clean(field: str, value: object) -> str:
    text = str(value)
    if any(ch in text for ch in "\r\n\x00"):
        raise FieldError(field, "must be a single line")
    return text


def render(vv: ViewerFile) -> str:
    lines = [
        ("type", vv.protocol.value),
        ("host", vv.host),
        ("port", vv.port if vv.port is not None else -1),
        ("password", vv.password),
    ]
    body = ["[virt-viewer]"]
    body += [f"{k}={_clean(k, v)}" for k, v in lines]
    body.append(f"# Password is valid for {int(vv.ttl)} seconds.")
    body += [
        "delete-this-file=1",
        "fullscreen=0",
        # %d is remote-viewer's monitor number.
        f"title={_clean('title', vv.title)}:%d",
        "toggle-fullscreen=shift+f11",
        "release-cursor=shift+f12",
        "secure-attention=ctrl+alt+end",
    ]
    if vv.protocol == GraphicsType.SPICE:
        if vv.tls_port is not None:
            body.append(f"tls-port={int(vv.tls_port)}")
        body += ["enable-smartcard=0", "enable-usb-autoshare=0"]
        if vv.tls_port is not None:
            body.append("tls-ciphers=DEFAULT")
            channels = SECURE_CHANNELS if vv.secure_channels is None else ";".join(vv.secure_channels)
            if any(c not in CHANNELS for c in channels.split(";") if c):
                raise FieldError("secure_channels", f"SPICE channels are {', '.join(sorted(CHANNELS))}")
            if channels:
                body.append(f"secure-channels={channels}")
            if vv.host_subject:
                body.append(f"host-subject={_clean('host_subject', vv.host_subject)}")
            if vv.ca_pem:
                # virt-viewer reads the CA as one line with literal \n between lines.
                ca = vv.ca_pem.strip().replace("\r", "")
                if not ca.startswith("-----BEGIN CERTIFICATE-----") or "[" in ca or "\\" in ca:
                    raise FieldError("ca", "must be PEM certificates")
                body.append("ca=" + ca.replace("\n", "\\n"))
    if vv.proxy:
        body.append(f"proxy={_clean('proxy', vv.proxy)}")
    return "\n".join(body) + "\n"


def from_ticket(ticket: dict, proxy: str | None = None) -> str:
    """The file for a ticket as the engine's REST API returns it."""
    return render(
        ViewerFile(
            protocol=GraphicsType(ticket["protocol"]),
            host=ticket["address"],
            port=ticket["port"],
            password=ticket["password"],
            ttl=ticket["ttl"],
            title=ticket["vm"],
            tls_port=ticket["tls_port"],
            host_subject=ticket.get("host_subject"),
            ca_pem=ticket.get("ca"),
            secure_channels=_secure_channels(ticket),
            proxy=proxy,
        )
    )


def _secure_channels(ticket: dict) -> tuple[str, ...] | None:
    """The VM's secure channels; none set: all when the file can check the host (it has the
    CA), else none (the client could not verify the server)."""
    if ticket.get("secure_channels"):
        return tuple(ticket["secure_channels"])
    return None if ticket.get("ca") else ()
