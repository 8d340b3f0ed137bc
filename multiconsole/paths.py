"""Where multiconsole keeps its files, and who may read them.

The data directory holds the database (password hashes, tickets' audit), the CA's key and
the logs: it is made 0700 and the files in it 0600. One made, or left, more open (the
default umask gives 0755 and 0644) is narrowed at start with a warning line.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def data_dir(create: bool = True) -> Path:
    """$MULTICONSOLE_DATA, else /var/lib/multiconsole for root, else ~/.local/share/multiconsole;
    made (0700, narrowed if more open) unless `create` is False (a client only looking for
    files there)."""
    env = os.environ.get("MULTICONSOLE_DATA")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/var/lib/multiconsole")
    else:
        path = Path.home() / ".local/share/multiconsole"
    if create:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        make_private(path)
    return path


def make_private(path: Path) -> None:
    """Take group and others' access from `path` (a directory: 0700, a file: 0600) if it
    has any, with a warning. Not for what is not ours, nor a shared sticky directory (/tmp)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(st.st_mode)
    # A host agent on the same machine lets QEMU (group kvm) through the data directory to its
    # disks (agent/images.py): search, not list. That is not too open.
    through = 0o010 if stat.S_ISDIR(st.st_mode) and mode & 0o010 and st.st_gid == _kvm_gid() else 0
    if not mode & (0o077 & ~through) or st.st_uid != os.geteuid() or mode & stat.S_ISVTX:
        return
    wanted = (PRIVATE_DIR | through) if stat.S_ISDIR(st.st_mode) else PRIVATE_FILE
    try:
        path.chmod(wanted)
    except OSError as err:
        log.warning("mode too open, not narrowed path=%s mode=%o reason=%s", path, mode, err.strerror)
        return
    log.warning("mode too open, narrowed path=%s mode=%o now=%o", path, mode, wanted)


def _kvm_gid() -> int | None:
    try:
        import grp

        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        return None


def private_file(path: Path, mode: str = "ab"):
    """Open (make) `path` as a file only its owner reads (logs), narrowing an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC), PRIVATE_FILE)
    make_private(path)
    return os.fdopen(fd, mode)


def private_sqlite(database: str | None) -> None:
    """Make the SQLite file `database` 0600 before SQLite opens it (SQLite makes its -wal and
    -shm files with the database's mode), and narrow those left more open."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent.is_dir() and not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))  # an empty file is a database
    for suffix in ("", "-wal", "-shm", "-journal"):
        make_private(path.with_name(path.name + suffix))
