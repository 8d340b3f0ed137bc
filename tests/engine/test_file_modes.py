"""The engine's data directory and database are its owner's only (issue 11, finding 6): the
database (argon2 hashes) with its -wal and -shm, the logs, the directory. `multiconsole
engine` really started on a fresh data directory, and on one left world-readable."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from multiconsole import paths
from tests.engine.conftest import ADMIN
from tests.support.servers import free_port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_engine(tmp_path: Path, data: Path):
    """`multiconsole engine` on `data` until its API answers: (process, its log file)."""
    port = free_port()
    env = {**os.environ, "MULTICONSOLE_DATA": str(data), "MULTICONSOLE_ADMIN_PASSWORD": ADMIN[1]}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    log_path = tmp_path / "engine-out.log"
    log = log_path.open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "multiconsole.cli", "engine", "--insecure"]
        + ["--listen", f"127.0.0.1:{port}", "--proxy-port", "0", "--monitor-interval", "60"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        try:
            # A request that writes (a login token), so that the -wal and -shm files exist.
            reply = httpx.post(
                f"http://127.0.0.1:{port}/api/v1/login", json={"name": ADMIN[0], "password": ADMIN[1]}
            )
            if reply.status_code == 200:
                return proc, log_path
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_a_fresh_data_directory_is_the_owners_only(tmp_path):
    data = tmp_path / "data"
    proc, log = run_engine(tmp_path, data)
    try:
        db = data / "engine.db"
        assert mode(data) == 0o700
        for f in (db, data / "engine.db-wal", data / "engine.db-shm"):
            assert f.exists(), f
            assert mode(f) == 0o600, f
        # Nothing the engine made there is readable by others (but certificates, public anyway).
        for f in data.rglob("*"):
            assert f.name.endswith("cert.pem") or not mode(f) & 0o007, f
    finally:
        stop(proc)
    assert "too open" not in log.read_text()


def test_a_world_readable_database_is_narrowed_with_a_warning(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    db = data / "engine.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    db.chmod(0o644)
    proc, log = run_engine(tmp_path, data)
    try:
        assert mode(data) == 0o700
        for f in (db, data / "engine.db-wal", data / "engine.db-shm"):
            assert mode(f) == 0o600, f
    finally:
        stop(proc)
    text = log.read_text()
    assert f"mode too open, narrowed path={db} mode=644 now=600" in text, text
    assert f"mode too open, narrowed path={data} mode=755 now=700" in text, text


def test_logs_are_made_private_and_shared_directories_left_alone(tmp_path):
    log = tmp_path / "agent.log"
    log.write_text("old\n")
    log.chmod(0o644)
    with paths.private_file(log) as f:
        f.write(b"new\n")
    assert mode(log) == 0o600 and log.read_text() == "old\nnew\n"
    with paths.private_file(tmp_path / "engine.log") as f:
        f.write(b"x")
    assert mode(tmp_path / "engine.log") == 0o600
    # A sticky shared directory (like /tmp) given as the data directory is never narrowed.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    paths.make_private(shared)
    assert mode(shared) == 0o1777
