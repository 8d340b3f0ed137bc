"""Agent subprocesses for the benches: `multiconsole agent --insecure` on a loopback port,
dying with the bench, VM.create in JSON-RPC batches, and stopping many at once."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from multiconsole.engine.broker import AgentCallError

ROOT = Path(__file__).resolve().parent.parent


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the bench dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class AgentProcess:
    """One agent process; started at once, `ready()` says when it answers /health."""

    def __init__(self, uri: str, port: int, log_path: Path, virt_type: str | None = None, extra: tuple = ()):
        self.port, self.log_path = port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self._log = log_path.open("wb")
        args = ["agent", "--insecure", "--libvirt-uri", uri, "--listen", f"127.0.0.1:{port}"]
        if virt_type:
            args += ["--virt-type", virt_type]
        args += ["--display-listen", "127.0.0.1", *map(str, extra)]
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "multiconsole.cli", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.http = httpx.Client(timeout=600)
        self._ids = iter(range(1, 1 << 62))

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"agent exited with {self.proc.returncode}; see {self.log_path}:\n"
                + self.log_path.read_text()[-2000:]
            )
        with contextlib.suppress(httpx.HTTPError):
            return self.http.get(f"{self.url}/health", timeout=1).status_code == 200
        return False

    def wait_ready(self, seconds: float = 60) -> float:
        """Seconds from the start until the agent answered."""
        while time.perf_counter() - self.t_start < seconds:
            if self.ready():
                return time.perf_counter() - self.t_start
            time.sleep(0.05)
        raise RuntimeError(f"agent at {self.url} did not answer in {seconds} s")

    def batch(self, calls: list[tuple[str, dict]]) -> list[Any]:
        """One JSON-RPC batch request; results in call order, the first error raised."""
        reqs = [{"jsonrpc": "2.0", "id": next(self._ids), "method": m, "params": p} for m, p in calls]
        reply = self.http.post(f"{self.url}/jsonrpc", json=reqs)
        reply.raise_for_status()
        by_id = {r.get("id"): r for r in reply.json()}
        results = []
        for req in reqs:
            r = by_id.get(req["id"])
            if r is None:
                raise RuntimeError(f"{req['method']}: no reply in the batch")
            if "error" in r:
                err = r["error"]
                raise AgentCallError(req["method"], err.get("code", 0), err.get("message", ""))
            results.append(r["result"])
        return results

    def create_many(self, specs: list[tuple[str, dict]], per_batch: int) -> list[dict]:
        """VM.create for every (vmId, vmParams), `per_batch` per request; the vmLists."""
        replies = []
        for i in range(0, len(specs), per_batch):
            chunk = specs[i : i + per_batch]
            replies += self.batch([("VM.create", {"vmID": v, "vmParams": p}) for v, p in chunk])
        return [r["vmList"] for r in replies]

    def terminate(self) -> None:
        with contextlib.suppress(Exception):
            self.http.close()
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.terminate()

    def reap(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()

    def stop(self) -> None:
        self.terminate()
        self.reap()
