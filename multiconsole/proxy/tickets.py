"""Proxy tickets: short-lived, signed documents naming the one console a browser may reach.

A ticket is ``base64url(JSON claims) + "." + base64url(HMAC-SHA256)`` (no padding). The MAC
covers a fixed context string and the encoded payload exactly as transmitted, and is checked
in constant time before any JSON is parsed: nothing of an unsigned token is trusted.

Claims (all required):

    v        1 (the format's version)
    jti      random 128-bit id, base64url; the proxy lets each jti open one session once
    vm       the VM's id
    console  "vnc"
    host     the target host (the VM's hypervisor, as the engine knows its console address)
    port     the target TCP port (the console's port in the VM's live XML)
    user     who asked (for the audit log)
    iat      issued at, Unix seconds
    exp      expires at, Unix seconds (iat + 120 by default)

``sign``, ``verify`` and ``issue`` are pure (``issue`` reads the clock and the random
source only); ``load_or_create_key`` is the one helper with I/O: the engine and a separate
``multiconsole proxy`` process share the key through a 0600 file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VERSION = 1
DEFAULT_TTL = 120
CLOCK_SKEW = 5.0  # seconds an iat may lie in the future (clocks of engine and proxy differ)
MAX_TOKEN_LENGTH = 2048
KEY_BYTES = 32
CONSOLES = frozenset({"vnc"})

_CONTEXT = b"multiconsole-proxy-ticket\x00"
_MAC_CHARS = 43  # base64url of 32 bytes without padding
_TOKEN_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_TOKEN_LENGTH}}}\.[A-Za-z0-9_-]{{{_MAC_CHARS}}}")
_FIELDS = ("v", "jti", "vm", "console", "host", "port", "user", "iat", "exp")


class TicketError(Exception):
    """A ticket that must not open a session; `reason` is short and safe to show and log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    v: int
    jti: str
    vm: str
    console: str
    host: str
    port: int
    user: str
    iat: int
    exp: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def jti_prefix(self) -> str:
        """What logs may show of the ticket: enough to correlate, too little to replay."""
        return self.jti[:8]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload: str, key: bytes) -> bytes:
    return hmac.new(key, _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) < 16:
        raise ValueError("a ticket key is at least 16 bytes")


def sign(claims: dict[str, Any] | Claims, key: bytes) -> str:
    """The token of these claims: compact JSON, base64url, a MAC over it."""
    _check_key(key)
    if isinstance(claims, Claims):
        claims = claims.to_dict()
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    token = f"{payload}.{_b64encode(_mac(payload, key))}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"a ticket is at most {MAX_TOKEN_LENGTH} characters")
    return token


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _claims(data: Any) -> Claims:
    if not isinstance(data, dict):
        raise TicketError("malformed")
    if data.get("v") != VERSION:
        raise TicketError("wrong version")
    if set(data) != set(_FIELDS):
        raise TicketError("malformed")
    texts = ("jti", "vm", "console", "host", "user")
    if not all(isinstance(data[f], str) and 0 < len(data[f]) <= 255 for f in texts):
        raise TicketError("malformed")
    if not all(_int(data[f]) for f in ("port", "iat", "exp")):
        raise TicketError("malformed")
    if not 0 < data["port"] < 65536 or data["exp"] <= data["iat"]:
        raise TicketError("malformed")
    if data["console"] not in CONSOLES:
        raise TicketError("wrong console")
    return Claims(**{f: data[f] for f in _FIELDS})


def verify(token: str, key: bytes, now: float) -> Claims:
    """The claims of a genuine ticket valid at `now`; TicketError(reason) otherwise.

    Reasons: "malformed", "bad signature", "wrong version", "wrong console", "expired",
    "not yet valid" (iat more than CLOCK_SKEW seconds after `now`).
    """
    _check_key(key)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not _TOKEN_RE.fullmatch(token):
        raise TicketError("malformed")
    payload, _, mac = token.partition(".")
    # The shape check above leaves 43 base64url characters: they always decode (32 bytes).
    if not hmac.compare_digest(_b64decode(mac), _mac(payload, key)):
        raise TicketError("bad signature")
    try:
        data = json.loads(_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise TicketError("malformed") from None
    claims = _claims(data)
    if claims.iat > now + CLOCK_SKEW:
        raise TicketError("not yet valid")
    if now >= claims.exp:
        raise TicketError("expired")
    return claims


def new_jti() -> str:
    return _b64encode(secrets.token_bytes(16))


def issue(
    key: bytes,
    vm: str,
    console: str,
    host: str,
    port: int,
    user: str,
    ttl: int = DEFAULT_TTL,
    now: float | None = None,
) -> tuple[str, Claims]:
    """A fresh ticket for one session to host:port, valid `ttl` seconds from `now`."""
    if console not in CONSOLES:
        raise ValueError(f"console must be one of {sorted(CONSOLES)}")
    if not _int(port) or not 0 < port < 65536:
        raise ValueError("port must be 1..65535")
    if not _int(ttl) or ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    iat = int(time.time() if now is None else now)
    claims = Claims(
        v=VERSION,
        jti=new_jti(),
        vm=str(vm),
        console=console,
        host=host,
        port=port,
        user=user,
        iat=iat,
        exp=iat + ttl,
    )
    try:
        _claims(claims.to_dict())  # the same checks verify() will make
    except TicketError as err:
        raise ValueError(f"cannot issue this ticket: {err.reason} claims") from None
    return sign(claims, key), claims


# --- the key file (the only I/O here) -------------------------------------------------------


def default_key_path() -> Path:
    """`<data dir>/proxy-ticket.key`: where the engine and `multiconsole proxy` look by default."""
    from multiconsole.paths import data_dir

    return data_dir() / "proxy-ticket.key"


def load_or_create_key(path: str | os.PathLike) -> bytes:
    """The key in `path`, created first (32 random bytes, mode 0600) when there is none.

    Creation is atomic (a private temporary file hard-linked into place), so an engine and a
    proxy starting together agree on one key and never read a half-written file.
    """
    path = Path(path)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its key
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: a proxy ticket key has at least {KEY_BYTES} bytes")
    if path.stat().st_mode & 0o007:
        raise PermissionError(f"{path}: the proxy ticket key must not be readable by others (chmod 600)")
    return key
