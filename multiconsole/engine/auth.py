"""Who is calling: local users with argon2-hashed passwords, login tokens, rate limits.

A request proves who it is with HTTP Basic (user name and password) or with a bearer token
from ``POST /api/v1/login``. Tokens are 32 random bytes; the database keeps only their
SHA-256 and their expiry, so a copy of it opens nothing. What a user may do is decided by
their roles, granted on the system, a cluster, a VM or a template (engine/permissions.py).

Nothing here logs or echoes a password, a token or a ticket.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import logging
import secrets
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, object_session

from multiconsole.engine.db import LoginToken, Permission, User, now, utc
from multiconsole.engine.errors import EngineError

log = logging.getLogger(__name__)

ADMIN = "admin@internal"
# Roles. The admin may do everything; the others add up.
ROLE_ADMIN = "admin"
VM_OPERATOR = "vm_operator"  # start, stop, edit
CONSOLE_USER = "console_user"  # open consoles
CONSOLE_RECONNECT = "console_reconnect"  # take over another user's console
ROLES = (ROLE_ADMIN, VM_OPERATOR, CONSOLE_USER, CONSOLE_RECONNECT)

TOKEN_TTL_DEFAULT = 8 * 3600
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 256
REALM = 'realm="multiconsole"'


class Unauthorized(EngineError):
    """401: who is calling is unknown; the challenge names how to log in."""

    status = 401

    def __init__(self, reason: str, scheme: str = "Basic"):
        super().__init__(None, reason)
        if scheme == "Bearer":
            self.headers = {"WWW-Authenticate": f'Bearer {REALM}, error="invalid_token"'}
        else:
            self.headers = {"WWW-Authenticate": f"Basic {REALM}"}


class TooManyRequests(EngineError):
    status = 429

    def __init__(self, reason: str, retry_after: float):
        super().__init__(None, reason)
        self.headers = {"Retry-After": str(max(1, int(retry_after + 0.999)))}


def basic_credentials(param: str) -> tuple[str, str]:
    """(name, password) of an HTTP Basic `Authorization` parameter, read as UTF-8; ValueError
    when it is not base64 of name:password."""
    try:
        text = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValueError("not base64 of name:password") from None
    name, sep, password = text.partition(":")
    if not sep:
        raise ValueError("not base64 of name:password")
    return name, password


def system_roles(session: Session, user: User) -> list[str]:
    """The roles granted to `user` on the whole system."""
    rows = session.scalars(
        select(Permission.role).where(Permission.user_id == user.id, Permission.object_type == "system")
    )
    return sorted(set(rows))


def has_role(user: User, role: str) -> bool:
    """A system-wide grant of `role` (or of admin). Roles on one VM: permissions.Grants."""
    session = object_session(user)
    if session is None:
        return False
    roles = system_roles(session, user)
    return ROLE_ADMIN in roles or role in roles


def grant(session: Session, user: User, role: str, object_type: str = "system", object_id: str | None = None):
    """Give `user` a role (once: an existing grant is returned as it is)."""
    if role not in ROLES:
        raise ValueError(f"no role {role!r}")
    found = session.scalar(
        select(Permission).where(
            Permission.user_id == user.id,
            Permission.role == role,
            Permission.object_type == object_type,
            Permission.object_id.is_(None) if object_id is None else Permission.object_id == object_id,
        )
    )
    if found is not None:
        return found
    p = Permission(user_id=user.id, role=role, object_type=object_type, object_id=object_id)
    session.add(p)
    session.flush()
    return p


# --- passwords ---------------------------------------------------------------------------

_hasher = PasswordHasher()
# Verifying a password against this costs what a real one does: a missing user is not faster.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
# Verifying argon2 costs tens of milliseconds by design: remember good logins briefly.
_CACHE_SECONDS = 60.0
_cache: dict[str, float] = {}
_cache_lock = threading.Lock()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def ensure_admin(session: Session, password: str | None) -> str | None:
    """Create admin@internal on first start; returns a generated password if one was made."""
    if session.scalar(select(User).where(User.name == ADMIN)) is not None:
        return None
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    user = User(name=ADMIN, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    grant(session, user, ROLE_ADMIN)
    session.commit()
    return generated


def set_password(session: Session, name: str, password: str) -> None:
    """Set (or create the user with) this password; the user's login tokens end."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, password_hash="")
        session.add(user)
        session.flush()
        if name == ADMIN:
            grant(session, user, ROLE_ADMIN)
    user.password_hash = hash_password(password)
    session.execute(delete(LoginToken).where(LoginToken.user_id == user.id))
    with _cache_lock:
        _cache.clear()


def verify(session: Session, name: str, password: str, client: str | None = None) -> User | None:
    """The user if `password` is theirs, else None. Every password check goes through here, so
    the login-failure throttle (`LoginThrottled`, a 429) holds for every way of logging in.
    `client`: the caller's address; by default the one of the request being served."""
    throttle = throttle_for(session)
    client = client if client is not None else client_address.get()
    throttle.check(name, client)
    user = _check_password(session, name, password)
    if user is None:
        throttle.failed(name, client)
    return user


def _check_password(session: Session, name: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        try:
            _hasher.verify(_DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            pass
        return None
    key = hashlib.sha256(f"{user.id}\0{user.password_hash}\0{password}".encode()).hexdigest()
    with _cache_lock:
        if _cache.get(key, 0) > time.monotonic():
            return user
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    with _cache_lock:
        if len(_cache) > 10000:
            _cache.clear()
        _cache[key] = time.monotonic() + _CACHE_SECONDS
    return user


def forget_cached_logins() -> None:
    with _cache_lock:
        _cache.clear()


# --- login tokens --------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def issue_token(session: Session, user: User, ttl: int = TOKEN_TTL_DEFAULT) -> tuple[str, datetime]:
    """A fresh bearer token for `user`, valid `ttl` seconds; only its hash is stored."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now() + timedelta(seconds=ttl)
    # Expired tokens of anybody are of no use: sweep them while we are here.
    session.execute(delete(LoginToken).where(LoginToken.expires_at <= now()))
    session.add(LoginToken(user_id=user.id, token_hash=_token_hash(token), expires_at=expires))
    session.flush()
    return token, expires


def user_for_token(session: Session, token: str) -> User:
    """The user a token was issued to; Unauthorized if it is unknown, revoked or expired."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("log in: the token is not valid; POST /api/v1/login for a new one", "Bearer")
    row = session.scalar(select(LoginToken).where(LoginToken.token_hash == _token_hash(token)))
    if row is None:
        raise Unauthorized(
            "log in: the token is not valid (never issued, or revoked by a logout); "
            "POST /api/v1/login for a new one",
            "Bearer",
        )
    expires = utc(row.expires_at)
    if expires <= now():
        session.delete(row)
        session.commit()
        raise Unauthorized(
            f"log in: the token expired at {expires:%Y-%m-%d %H:%M:%S} UTC; POST /api/v1/login for a new one",
            "Bearer",
        )
    user = session.get(User, row.user_id)
    if user is None:
        raise Unauthorized("log in: the token's user no longer exists", "Bearer")
    return user


def revoke_token(session: Session, token: str) -> bool:
    result = session.execute(delete(LoginToken).where(LoginToken.token_hash == _token_hash(token)))
    return bool(result.rowcount)


def revoke_all(session: Session, user: User) -> int:
    result = session.execute(delete(LoginToken).where(LoginToken.user_id == user.id))
    return result.rowcount or 0


# --- rate limits ---------------------------------------------------------------------------


class RateLimiter:
    """At most `limit` events per `window` seconds per key (a sliding window, in memory)."""

    def __init__(self, limit: int, window: float = 60.0, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Count one event; None if allowed, else the seconds until the next one would be."""
        t = self.clock()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= t - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return events[0] + self.window - t
            events.append(t)
            if len(self._events) > 10000:  # drop keys whose window is empty
                for k in [k for k, q in self._events.items() if not q or q[-1] <= t - self.window]:
                    del self._events[k]
            return None


class AtOnce:
    """At most `limit` calls at once per key (in memory): `enter` answers False beyond it."""

    def __init__(self, limit: int):
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, key: str) -> bool:
        with self._lock:
            if self._counts.get(key, 0) >= self.limit:
                return False
            self._counts[key] = self._counts.get(key, 0) + 1
            return True

    def leave(self, key: str) -> None:
        with self._lock:
            left = self._counts.get(key, 1) - 1
            if left > 0:
                self._counts[key] = left
            else:
                self._counts.pop(key, None)


# --- login-failure throttle ------------------------------------------------------------------

# The address of the client whose request is being served (set by the engine's middleware), so
# that `verify` knows it without every caller passing it.
client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_address", default=None)


class LoginThrottled(TooManyRequests):
    """429: too many failed logins for this user name or from this address, lately."""

    def __init__(self, field: str | None, reason: str, retry_after: float):
        super().__init__(reason, retry_after)
        self.field = field


@dataclass
class _Failures:
    times: deque = field(default_factory=deque)
    locked_until: float = 0.0


class LoginThrottle:
    """After `per_user` failed password checks for one user name (or `per_address` from one
    client address) within `window` seconds, every further attempt for it is refused with 429
    for `window` seconds, right password or not; then counting starts afresh. A success resets
    nothing: a guesser who also knows some valid account gains no attempts by using it.
    0 turns a limit off. In memory: a restart forgets (a deliberate trade, like the ticket limits)."""

    MAX_KEYS = 100_000

    def __init__(self, per_user: int = 5, per_address: int = 20, window: float = 300.0, clock=time.monotonic):
        self.per_user, self.per_address, self.window, self.clock = per_user, per_address, window, clock
        self._keys: dict[tuple[str, str], _Failures] = {}
        self._lock = threading.Lock()

    def _limits(self, name: str, client: str | None):
        yield ("user", name), self.per_user
        if client:
            yield ("address", client), self.per_address

    def check(self, name: str, client: str | None) -> None:
        """Raise LoginThrottled if `name` or `client` is locked out now."""
        t = self.clock()
        with self._lock:
            for key, limit in self._limits(name, client):
                entry = self._keys.get(key)
                if limit and entry is not None and entry.locked_until > t:
                    raise self._refusal(key, entry.locked_until - t)

    def failed(self, name: str, client: str | None) -> None:
        """Count a failed password check; lock the user name or address that reaches its limit."""
        t = self.clock()
        started = []
        with self._lock:
            for key, limit in self._limits(name, client):
                if not limit:
                    continue
                entry = self._keys.setdefault(key, _Failures())
                while entry.times and entry.times[0] <= t - self.window:
                    entry.times.popleft()
                entry.times.append(t)
                if len(entry.times) >= limit:
                    entry.times.clear()
                    entry.locked_until = t + self.window
                    started.append(key)
            if len(self._keys) > self.MAX_KEYS:
                self._prune(t)
        for kind, value in started:
            # The user name or address only: never what was typed as the password.
            log.warning(
                "login throttled %s=%s failures=%d window=%ds",
                kind,
                _quoted(value),
                self.per_user if kind == "user" else self.per_address,
                int(self.window),
            )

    def _prune(self, t: float) -> None:
        for key in [
            k
            for k, e in self._keys.items()
            if e.locked_until <= t and (not e.times or e.times[-1] <= t - self.window)
        ]:
            del self._keys[key]
        while len(self._keys) > self.MAX_KEYS:  # still full (a flood of names): forget the oldest
            del self._keys[next(iter(self._keys))]

    def _refusal(self, key: tuple[str, str], seconds: float) -> LoginThrottled:
        wait = max(1, int(seconds + 0.999))
        if key[0] == "user":
            return LoginThrottled(
                "name",
                f"too many failed logins for this user name: try again in {wait} s",
                seconds,
            )
        return LoginThrottled(
            None, f"too many failed logins from your address: try again in {wait} s", seconds
        )


def _quoted(text: str) -> str:
    """A value safe on a key=value log line: quoted, control characters escaped, bounded."""
    return repr(text[:128])


# Each engine (one per database) registers its throttle; `verify` finds it from the session.
_throttles: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_default_throttle = LoginThrottle()


def install_throttle(bind, throttle: LoginThrottle) -> None:
    """Use `throttle` for password checks on sessions bound to `bind` (a SQLAlchemy engine)."""
    _throttles[bind] = throttle


def throttle_for(session: Session) -> LoginThrottle:
    try:
        return _throttles.get(session.get_bind(), _default_throttle)
    except TypeError:
        return _default_throttle
