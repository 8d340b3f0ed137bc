"""Uploads stream: a real engine process takes a 2 GiB sparse raw image and a qcow2 while
its resident memory (VmRSS of the process, sampled every 50 ms, and its peak VmHWM) grows
by less than 50 MB."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.integration
ADMIN = ("admin@internal", "memory-test-pw")
LIMIT = 50 * 1000 * 1000


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def engine_process(tmp_path):
    port = free_port()
    env = {**os.environ, "MULTICONSOLE_DATA": str(tmp_path / "data"), "MULTICONSOLE_ADMIN_PASSWORD": ADMIN[1]}
    log = (tmp_path / "engine.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multiconsole.cli",
            "engine",
            "--insecure",
            "--listen",
            f"127.0.0.1:{port}",
            "--proxy-port",
            "0",
            "--monitor-interval",
            "60",
            "--db",
            f"sqlite:///{tmp_path / 'engine.db'}",
            "--pki-dir",
            str(tmp_path / "pki"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "engine.log").read_text()
        try:
            if httpx.get(f"{url}/api/v1/images", auth=ADMIN, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the engine did not start"
        time.sleep(0.3)
    yield proc, url, tmp_path / "data" / "images"
    proc.terminate()
    proc.wait(10)


def _stream(path: Path, chunk: int = 1 << 20):
    with path.open("rb") as f:
        while data := f.read(chunk):
            yield data


def _upload_measured(pid: int, url: str, path: Path, name: str) -> tuple[dict, int]:
    """Upload while sampling the engine's RSS; returns the image and the growth in bytes."""
    before = _status_kib(pid, "VmRSS")
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _status_kib(pid, "VmRSS"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        reply = httpx.post(
            f"{url}/api/v1/images",
            params={"name": name},
            content=_stream(path),
            headers={"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"},
            auth=ADMIN,
            timeout=600,
        )
    finally:
        done.set()
        sampler.join()
    assert reply.status_code == 201, reply.text
    return reply.json(), (peak[0] - before) * 1024


def test_uploads_keep_the_engine_memory_flat(engine_process, tmp_path):
    proc, url, images_dir = engine_process
    # Warm-up: the first upload loads qemu-img handling, hashing and the SQL paths once.
    warm = tmp_path / "warm.raw"
    warm.write_bytes(b"\x01" * 4096)
    _upload_measured(proc.pid, url, warm, "warm")

    big = tmp_path / "big.raw"
    with big.open("wb") as f:
        f.truncate(2 << 30)  # 2 GiB, sparse
    with big.open("r+b") as f:
        for offset in range(0, 2 << 30, 256 << 20):  # some data, so that it is not all holes
            f.seek(offset)
            f.write(os.urandom(64 * 1024))
    image, growth = _upload_measured(proc.pid, url, big, "big")
    assert image["format"] == "raw" and image["size"] == 2 << 30
    expected = hashlib.sha256()
    for data in _stream(big, 8 << 20):
        expected.update(data)
    assert image["sha256"] == expected.hexdigest()
    assert growth < LIMIT, f"the engine grew by {growth / 1e6:.1f} MB during a 2 GiB upload"
    print(f"engine RSS growth during a 2 GiB sparse raw upload: {growth / 1e6:.1f} MB")
    stored = images_dir / image["id"]
    assert stored.stat().st_size == 2 << 30
    assert stored.stat().st_blocks * 512 < 64 << 20  # stored sparse, as it came

    qcow2 = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "4G"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x33 0 200M", str(qcow2)], check=True, capture_output=True)
    image, growth = _upload_measured(proc.pid, url, qcow2, "disk")
    assert image["format"] == "qcow2" and image["virtual_size"] == 4 << 30
    assert growth < LIMIT, f"the engine grew by {growth / 1e6:.1f} MB during a qcow2 upload"
    print(f"engine RSS growth during a 200 MB qcow2 upload: {growth / 1e6:.1f} MB")
