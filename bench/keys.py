"""Benchmark of typing into a VM: POST /api/v1/vms/{vm}/keys of 100 characters until the last
one is echoed by the guest, versus raw libvirt send-key of the same key presses, unpaced.

    PYTHONPATH=$PWD .venv/bin/python bench/keys.py [--runs 5]

The guest is the demo image tiny-linux (scripts/build-guest.sh) on qemu:///system under TCG,
given its disk as in tests/integration/test_keys_qemu.py. Each run types a command that
writes a fresh marker to the serial port; the time is from the request until the marker is
in the serial log. The raw baseline sends the same presses back to back (libvirt's
sendKey, hold 15 ms, no pause): the minimum any typing can take, and whether the guest kept
every character without pacing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from agentproc import AgentProcess  # noqa: E402

from multiconsole.agent.keyboard import HOLD_MS, KEYMAP_DIR  # noqa: E402
from multiconsole.domain import keys  # noqa: E402
from tests.engine.conftest import engine_client, ok  # noqa: E402
from tests.integration.test_keys_qemu import (  # noqa: E402
    IMAGE,
    give_it_the_guest_disk,
    serial_text,
    shell_ready,
    wait_for,
)
from tests.support.servers import free_port  # noqa: E402

LENGTH = 100


def command(marker: str) -> str:
    """`echo MARKER >/dev/ttyS0` + Enter, padded with spaces to LENGTH characters."""
    tail = " >/dev/ttyS0\n"
    head = f"echo {marker}"
    return head + " " * (LENGTH - len(head) - len(tail)) + tail


def until_echoed(log: Path, marker: str, t0: float, seconds: float = 60) -> float:
    while marker not in serial_text(log):
        if time.perf_counter() - t0 > seconds:
            return float("nan")
        time.sleep(0.01)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if not IMAGE.is_file():
        sys.exit(f"no demo guest at {IMAGE}: run scripts/build-guest.sh")
    work = Path(tempfile.mkdtemp(prefix="mc-bench-keys-", dir="/var/tmp"))
    work.chmod(0o755)
    agent = AgentProcess("qemu:///system", free_port(), work / "agent.log", virt_type="qemu")
    conn = libvirt.open("qemu:///system")
    name = f"bench-{os.getpid()}-keys"
    vm_id = None
    try:
        agent.wait_ready()
        with engine_client(f"sqlite:///{work / 'engine.db'}", keys_rate_limit=10**6) as api:
            ok(api.post("/api/v1/clusters", json={"name": "b", "compat_level": "4.7"}), 201)
            host = {"name": "h", "address": "127.0.0.1", "port": agent.port, "cluster": "b", "insecure": True}
            ok(api.post("/api/v1/hosts", json=host), 201)
            vm = {"name": name, "cluster": "b", "memory_mib": 256, "video": "vga", "consoles": ["vnc"]}
            ok(api.post("/api/v1/vms", json=vm), 201)
            vm_id = ok(api.post(f"/api/v1/vms/{name}/start"))["id"]
            log = give_it_the_guest_disk(conn, vm_id, name, "en-us", work)
            t_boot = time.perf_counter()
            wait_for(log, "tiny-linux: ready", 120)
            boot = time.perf_counter() - t_boot
            shell_ready(api, name, log)

            engine_times = []
            for i in range(args.runs):
                marker = f"eng{i}{uuid.uuid4().hex[:6]}"
                t0 = time.perf_counter()
                ok(api.post(f"/api/v1/vms/{name}/keys", json={"text": command(marker)}))
                engine_times.append(until_echoed(log, marker, t0))

            keymap = keys.parse_keymap("en-us", (KEYMAP_DIR / "en-us").read_text())
            dom = conn.lookupByUUIDString(vm_id)
            raw_times, raw_lost = [], 0
            for i in range(args.runs):
                marker = f"raw{i}{uuid.uuid4().hex[:6]}"
                presses = keys.type_text(command(marker), keymap)
                t0 = time.perf_counter()
                for p in presses:
                    dom.sendKey(libvirt.VIR_KEYCODE_SET_QNUM, HOLD_MS, list(p.codes), len(p.codes), 0)
                took = until_echoed(log, marker, t0, 30)
                raw_lost += took != took  # NaN: the marker never came whole
                raw_times.append(took)
                time.sleep(1)
    finally:
        if vm_id:
            try:
                dom = conn.lookupByUUIDString(vm_id)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass
        agent.proc.terminate()
        conn.close()
        shutil.rmtree(work, ignore_errors=True)

    def med(xs):
        good = [x for x in xs if x == x]
        return round(statistics.median(good), 3) if good else None

    result = {
        "characters": LENGTH,
        "runs": args.runs,
        "boot_to_init_s": round(boot, 1),
        "engine_post_to_echo_s": med(engine_times),
        "engine_chars_per_s": round(LENGTH / med(engine_times), 1) if med(engine_times) else None,
        "raw_sendkey_unpaced_to_echo_s": med(raw_times),
        "raw_runs_with_lost_characters": raw_lost,
        "ratio_engine_vs_raw": round(med(engine_times) / med(raw_times), 2) if med(raw_times) else None,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
