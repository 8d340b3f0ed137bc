"""Database faults answer 503 with Retry-After and a reason, and pass without a restart; names
taken by a concurrent create answer 409 (issue 11, findings 9 and 10). Faults are real: a
private PostgreSQL is stopped (never the machine's shared one), a small filesystem fills up."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.live import ADMIN, LiveEngine
from tests.support.servers import free_port

VM = {"name": "web1", "cluster": "prod", "memory_mib": 64, "video": "qxl", "consoles": ["vnc"]}


def _local_port(reply: httpx.Response) -> int:
    """The client's end of the TCP connection that carried `reply` (same port: same connection)."""
    return reply.extensions["network_stream"].get_extra_info("client_addr")[1]


def _unavailable(reply: httpx.Response, reason: str) -> None:
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["reason"] == reason
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.headers.get("connection", "").lower() != "close"


# --- PostgreSQL stopped ----------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of this test alone: a temporary data directory, a free port, its
    unix socket in that directory, run as the postgres user."""

    def __init__(self):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins or shutil.which("runuser") is None or os.geteuid() != 0:
            pytest.skip("needs PostgreSQL's server binaries, runuser and root to run a private cluster")
        self.bin = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="mc-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@/postgres?host={self.dir}&port={self.port}"

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def init(self) -> PrivatePostgres:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync=off"
        log = str(self.dir / "postgres.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_pg():
    pg = PrivatePostgres().init()
    pg.start()
    yield pg
    pg.remove()


def _until_ok(call, seconds: float = 15) -> httpx.Response:
    """The engine recovers by itself: the first requests after a fault may still see it."""
    deadline = time.monotonic() + seconds
    while True:
        reply = call()
        assert reply.status_code in (200, 201, 503), reply.text
        if reply.status_code != 503 or time.monotonic() > deadline:
            return reply
        time.sleep(0.5)


def test_postgresql_stopped_answers_503_then_recovers(private_pg):
    engine = LiveEngine(private_pg.url).start()
    try:
        with engine.client() as c:
            assert c.post("/api/v1/clusters", json={"name": "c1"}).status_code == 201
            port = _local_port(c.get("/api/v1/clusters"))

            private_pg.stop()
            for reply in (
                c.get("/api/v1/clusters"),
                c.post("/api/v1/clusters", json={"name": "c2"}),
                c.get("/api/v1/vms"),
                c.get("/api/v1/me"),
            ):
                _unavailable(reply, "database unavailable")
                assert _local_port(reply) == port, "the engine dropped the keep-alive connection"
            fault = c.get("/ovirt-engine/api/clusters")
            assert fault.status_code == 503 and b"database unavailable" in fault.content
            assert fault.headers["retry-after"]

            private_pg.start()
            reply = _until_ok(lambda: c.get("/api/v1/clusters"))
            assert reply.status_code == 200 and [x["name"] for x in reply.json()] == ["c1"]
            assert c.post("/api/v1/clusters", json={"name": "c2"}).status_code == 201
            assert _local_port(c.get("/api/v1/clusters")) == port
    finally:
        engine.stop()


# --- SQLite on a full disk --------------------------------------------------------------------


@pytest.fixture
def small_fs():
    """A 4 MiB tmpfs of this test alone."""
    where = Path(tempfile.mkdtemp(prefix="mc-small-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)
    where.rmdir()


def _fill(where: Path) -> Path:
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:  # unbuffered writes: the one that finds the disk full raises here
            os.write(fd, b"\0" * 65536)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_sqlite_on_a_full_disk_refuses_writes_with_503_and_keeps_reading(small_fs):
    engine = LiveEngine(f"sqlite:///{small_fs / 'engine.db'}").start()
    try:
        with engine.client() as c:
            assert c.post("/api/v1/clusters", json={"name": "c1"}).status_code == 201
            port = _local_port(c.get("/api/v1/clusters"))
            filler = _fill(small_fs)

            # Writes fail once SQLite needs a page the disk no longer has (its WAL reuses some).
            refused = None
            for i in range(200):
                reply = c.post("/api/v1/clusters", json={"name": f"full{i}", "description": "x" * 1000})
                assert reply.status_code in (201, 503), reply.text
                if reply.status_code == 503:
                    refused = reply
                    break
            assert refused is not None, "the disk never filled up"
            _unavailable(refused, "no space left for the database")
            assert _local_port(refused) == port, "the engine dropped the keep-alive connection"

            # Reads still work.
            reply = c.get("/api/v1/clusters")
            assert reply.status_code == 200, reply.text
            assert "c1" in [x["name"] for x in reply.json()]
            assert c.get("/api/v1/me").status_code == 200
            assert c.get("/ovirt-engine/api/clusters").status_code == 200

            filler.unlink()
            reply = _until_ok(lambda: c.post("/api/v1/clusters", json={"name": "after"}))
            assert reply.status_code == 201, reply.text
            assert _local_port(reply) == port
    finally:
        engine.stop()


# --- concurrent creates of one name -------------------------------------------------------------

CREATES = {
    "vms": ("/api/v1/vms", VM),
    "clusters": ("/api/v1/clusters", {"name": "prod2"}),
    "templates": ("/api/v1/templates", {"name": "tpl", "memory_mib": 64}),
    "users": ("/api/v1/users", {"name": "same", "password": "same-password-1"}),
}


@pytest.mark.parametrize("kind", list(CREATES))
def test_parallel_creates_of_one_name_answer_one_201_and_409s(db_url, kind):
    engine = LiveEngine(db_url).start()
    try:
        token = engine.token(*ADMIN)
        path, body = CREATES[kind]
        limits = httpx.Limits(max_connections=10)
        with engine.client(token=token, limits=limits) as c:
            assert c.post("/api/v1/clusters", json={"name": "prod"}).status_code == 201
            start = threading.Barrier(10)

            def create(_):
                start.wait()
                return c.post(path, json=body)

            with ThreadPoolExecutor(10) as pool:
                replies = list(pool.map(create, range(10)))
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [201] + [409] * 9, [r.text for r in replies if r.status_code != 201]
        for r in replies:
            if r.status_code == 409:
                error = r.json()["error"]
                assert error["field"] == "name", error
                assert repr(body["name"]) in error["reason"] and "already exists" in error["reason"]
    finally:
        engine.stop()
