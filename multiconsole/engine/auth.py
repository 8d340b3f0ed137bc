"""Who is calling: local users with argon2-hashed passwords, HTTP Basic for now.

The security work adds tokens, roles and permissions behind `current_user`.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from multiconsole.engine.db import User

ADMIN = "admin@internal"
# Roles. The admin may do everything; the others add up.
ROLE_ADMIN = "admin"
VM_OPERATOR = "vm_operator"  # start, stop, edit
CONSOLE_USER = "console_user"  # open consoles
CONSOLE_RECONNECT = "console_reconnect"  # take over another user's console
ROLES = (ROLE_ADMIN, VM_OPERATOR, CONSOLE_USER, CONSOLE_RECONNECT)


def has_role(user: User, role: str) -> bool:
    roles = user.roles or []
    return ROLE_ADMIN in roles or role in roles


_hasher = PasswordHasher()
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
    session.add(User(name=ADMIN, password_hash=hash_password(password), roles=[ROLE_ADMIN]))
    session.commit()
    return generated


def set_password(session: Session, name: str, password: str) -> None:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name, password_hash="", roles=[ROLE_ADMIN] if name == ADMIN else [])
        session.add(user)
    user.password_hash = hash_password(password)
    with _cache_lock:
        _cache.clear()


def verify(session: Session, name: str, password: str) -> User | None:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
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
        _cache[key] = time.monotonic() + _CACHE_SECONDS
    return user
