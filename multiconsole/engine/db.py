"""The engine's database: SQLAlchemy 2 models, one engine per process, Alembic migrations.

SQLite is the embedded default; PostgreSQL (postgresql+psycopg://...) serves many hosts.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from multiconsole import paths

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)

# Sync routes run on anyio's thread pool (40 threads by default) and each holds at most one
# connection: the pool matches it, with a little room for the few that open a second session.
POOL_SIZE = 40
POOL_OVERFLOW = 10
# Waiting longer for a connection than this answers 503 (engine/dbfaults.py), not a stall.
POOL_TIMEOUT = 5.0
# The monitor's own engine: its workers, its event followers and the console-event listener.
MONITOR_POOL_SIZE = 10


def new_id() -> str:
    return str(uuid.uuid4())


def now() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time the engine stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=now)


class Permission(Base):
    """A role granted to a user on the whole system, a cluster, a VM or a template.

    A user's roles on a VM add up from the system, the VM's cluster and the VM; on a
    template from the system, the template's cluster and the template (engine/permissions.py).
    """

    __tablename__ = "permissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # admin, vm_operator, console_user, console_reconnect
    role: Mapped[str] = mapped_column(String(32))
    # system, cluster, vm, template
    object_type: Mapped[str] = mapped_column(String(16))
    # None for system; else the id of the cluster, VM or template
    object_id: Mapped[str | None] = mapped_column(String(36), index=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class LoginToken(Base):
    """A bearer token from POST /login: only its SHA-256 is stored, with its expiry."""

    __tablename__ = "login_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Cluster(Base):
    __tablename__ = "clusters"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    compat_level: Mapped[str] = mapped_column(String(8))
    arch: Mapped[str] = mapped_column(String(16), default="x86_64")
    console_address: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(1024), default="")
    # A directory every host of the cluster mounts at this same path: VMs' disks live there
    # and any host may run them; None: a VM's disks stay on the host that made them.
    shared_dir: Mapped[str | None] = mapped_column(String(1024))
    hosts: Mapped[list[Host]] = relationship(back_populates="cluster")


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=54321)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(32), default="Installing")
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    console_address: Mapped[str | None] = mapped_column(String(255))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_seen: Mapped[datetime | None] = mapped_column()
    # The certificate the host enrolled with (PEM) and its 'sha256:...' fingerprint, which
    # the agent must present; None for a host added as insecure (plain HTTP).
    certificate: Mapped[str | None] = mapped_column(Text)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(80))
    # The subject of the host's SPICE TLS certificate ("O=multiconsole,CN=kvm1"), the `.vv`'s
    # host-subject; None when the host has none from this engine's CA.
    spice_subject: Mapped[str | None] = mapped_column(String(255))
    cluster: Mapped[Cluster] = relationship(back_populates="hosts")


class EnrollmentToken(Base):
    """A one-time token with which the host `host_name` gets its certificate; only its SHA-256
    is stored. Once used it keeps the certificate issued, for adding (or renewing) the host."""

    __tablename__ = "enrollment_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    host_name: Mapped[str] = mapped_column(String(64), index=True)
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    certificate: Mapped[str | None] = mapped_column(Text)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(80))
    spice_subject: Mapped[str | None] = mapped_column(String(255))


class Template(Base):
    __tablename__ = "templates"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cluster_id: Mapped[str | None] = mapped_column(ForeignKey("clusters.id", ondelete="RESTRICT"))
    os_type: Mapped[str] = mapped_column(String(64), default="other")
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    display: Mapped[dict[str, Any]] = mapped_column()
    description: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(default=now)
    # Boot media (engine/drives.py): {"cdrom": image id, "disks": [...], "boot": [...]}.
    drives: Mapped[dict[str, Any] | None] = mapped_column()


class Vm(Base):
    __tablename__ = "vms"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id", ondelete="RESTRICT"))
    template_id: Mapped[str | None] = mapped_column(ForeignKey("templates.id", ondelete="SET NULL"))
    os_type: Mapped[str] = mapped_column(String(64), default="other")
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    vcpus: Mapped[int] = mapped_column(Integer, default=1)
    display: Mapped[dict[str, Any]] = mapped_column()
    # Display changes made while the VM ran: applied at its next start.
    next_run: Mapped[dict[str, Any] | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(32), default="Down")
    status_reason: Mapped[str] = mapped_column(String(1024), default="")
    # Why it last went down, as its host said (vdsm's exitCode, exitReason, exitMessage:
    # wire/exits.py); None while it runs and before its first stop.
    exit_code: Mapped[int | None] = mapped_column(Integer)
    exit_reason: Mapped[int | None] = mapped_column(Integer)
    exit_message: Mapped[str | None] = mapped_column(String(1024))
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    started_at: Mapped[datetime | None] = mapped_column()
    # When a user's action (start, stop) last changed the status: the monitor leaves
    # alone what changed while its poll was on the wire.
    acted_at: Mapped[datetime | None] = mapped_column()
    # Boot media (engine/drives.py): {"cdrom": image id, "disks": [...], "boot": [...]}.
    drives: Mapped[dict[str, Any] | None] = mapped_column()
    # The host that holds the VM's disk overlays (none in a shared directory): it must run it.
    disk_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    cluster: Mapped[Cluster] = relationship()
    host: Mapped[Host | None] = relationship(foreign_keys=[host_id])
    consoles: Mapped[list[VmConsole]] = relationship(
        cascade="all, delete-orphan", order_by="VmConsole.protocol"
    )


class VmConsole(Base):
    """Where a running VM's console listens, as the host's stats last said."""

    __tablename__ = "vm_consoles"
    # The monitor and a user's stop may both remove a stopped VM's consoles.
    __mapper_args__ = {"confirm_deleted_rows": False}
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), primary_key=True)
    protocol: Mapped[str] = mapped_column(String(8), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    tls_port: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=now)
    # Who holds the console: the user of the last ticket, once a client authenticated.
    ticket_user: Mapped[str | None] = mapped_column(String(128))
    holder: Mapped[str | None] = mapped_column(String(128))
    client_address: Mapped[str | None] = mapped_column(String(255))
    connected_at: Mapped[datetime | None] = mapped_column()
    # When the engine last changed `holder` (an event or the poll): a poll asked before
    # that has older news and must not undo it.
    session_at: Mapped[datetime | None] = mapped_column()


class Image(Base):
    """Boot media uploaded to the engine: an ISO installer or a disk image (raw, qcow2),
    stored as <data dir>/images/<id>; hosts cache it by its sha256."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    format: Mapped[str] = mapped_column(String(8))  # iso, raw, qcow2
    size: Mapped[int] = mapped_column(BigInteger)  # bytes of the file
    virtual_size: Mapped[int] = mapped_column(BigInteger)  # bytes the guest sees
    sha256: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=now)


class AuditEntry(Base):
    """Who did what with which console, and from where."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(default=now, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str | None] = mapped_column(String(128), index=True)
    vm_id: Mapped[str | None] = mapped_column(String(36), index=True)
    vm_name: Mapped[str | None] = mapped_column(String(64))
    protocol: Mapped[str | None] = mapped_column(String(8))
    client_address: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(String(1024), default="")


def make_engine(
    url: str,
    pool_size: int = POOL_SIZE,
    max_overflow: int = POOL_OVERFLOW,
    pool_timeout: float = POOL_TIMEOUT,
) -> Engine:
    """An engine whose pool is sized for the callers given (the request threads by default)."""
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        paths.private_sqlite(make_url(url).database)  # password hashes: owner only, -wal/-shm too
        if url in ("sqlite://", "sqlite:///:memory:"):
            pool = {}  # one connection per thread, no queue to size
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    # pre_ping: connections that a restarted PostgreSQL closed are replaced, not handed out.
    return create_engine(url, pool_pre_ping=True, **pool)


def release(session: Session) -> None:
    """Hand the session's connection back before waiting on a host (see `released`)."""
    session.commit()


@contextmanager
def released(session: Session) -> Iterator[None]:
    """Wait on something slow (a host's agent) without holding a database connection.

    Commits what the session did so far, which hands its connection back to the pool; the
    objects it loaded stay usable (expire_on_commit=False) and what is changed on them after
    the block is written by the next commit, in a new short transaction. Nothing in the block
    may use the session: that would take a connection again for the whole wait.
    """
    release(session)
    yield
    if session.in_transaction():
        log.warning("a database connection was taken while waiting on a host")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
