"""Image upload throughput: `POST /api/v1/images` of a 1 GiB image to a real engine process
(streamed, hashed, written, checked with qemu-img) beside `cp` of the same file on the same
disk, and the engine's peak RSS growth meanwhile. Median of --runs.

    PYTHONPATH=$PWD .venv/bin/python bench/images.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.support.servers import free_port

ADMIN = ("admin@internal", "bench-images-pw")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_engine(tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MULTICONSOLE_DATA": str(tmp / "data"), "MULTICONSOLE_ADMIN_PASSWORD": ADMIN[1]}
    args = ["engine", "--insecure", "--listen", f"127.0.0.1:{port}", "--proxy-port", "0"]
    args += ["--db", f"sqlite:///{tmp / 'engine.db'}", "--pki-dir", str(tmp / "pki")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "multiconsole.cli", *args],
        env=env,
        stdout=(tmp / "engine.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/api/v1/images", auth=ADMIN, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the engine did not start")


def upload(pid: int, url: str, path: Path, name: str) -> tuple[float, int]:
    before, peak, done = rss_kib(pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.05)

    def body():
        with path.open("rb") as f:
            while data := f.read(1 << 20):
                yield data

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    start = time.perf_counter()
    reply = httpx.post(
        f"{url}/api/v1/images",
        params={"name": name, "format": "raw"},
        content=body(),
        headers={"Content-Length": str(path.stat().st_size)},
        auth=ADMIN,
        timeout=600,
    )
    elapsed = time.perf_counter() - start
    done.set()
    t.join()
    assert reply.status_code == 201, reply.text
    assert httpx.delete(f"{url}/api/v1/images/{name}", auth=ADMIN).status_code == 204
    return elapsed, max(0, peak[0] - before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-images-", dir="/var/tmp") as d:
        tmp = Path(d)
        src = tmp / "image.raw"
        with src.open("wb") as f:  # incompressible, not sparse: every byte is read and written
            block = os.urandom(1 << 20)
            for i in range(a.size_mib):
                f.write(block[i % 251 :] + block[: i % 251])
        proc, url = start_engine(tmp)
        try:
            cps, ups, growth = [], [], []
            for i in range(a.runs):
                subprocess.run(["sync"], check=True)
                start = time.perf_counter()
                subprocess.run(["cp", str(src), str(tmp / "copy.raw")], check=True)
                subprocess.run(["sync"], check=True)
                cps.append(time.perf_counter() - start)
                (tmp / "copy.raw").unlink()
                elapsed, grew = upload(proc.pid, url, src, f"bench-{i}")
                ups.append(elapsed)
                growth.append(grew)
        finally:
            proc.terminate()
            proc.wait(10)
    mib = a.size_mib
    cp_s, up_s = statistics.median(cps), statistics.median(ups)
    print(f"{mib} MiB, median of {a.runs}")
    print(f"  cp + sync           {cp_s:6.2f} s  {mib / cp_s:7.1f} MiB/s")
    print(f"  POST /api/v1/images {up_s:6.2f} s  {mib / up_s:7.1f} MiB/s  (x{up_s / cp_s:.2f} of cp)")
    print(f"  engine RSS growth   {max(growth) / 1024:.1f} MiB at most")


if __name__ == "__main__":
    main()
