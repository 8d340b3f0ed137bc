"""VM create -> Up with a qcow2 overlay disk through the agent (VM.create: the overlay made
from the cached image, the domain XML built, defined and started) beside raw libvirt
defineXML + create of the same XML, both under TCG. Median of --runs; the ratio is what
the agent adds. Needs the demo guest's disk image (scripts/build-guest.sh).

    PYTHONPATH=$PWD .venv/bin/python bench/overlay_start.py [--runs 10]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
from lxml import etree

from bench.agentproc import AgentProcess
from multiconsole.engine.broker import AgentClient
from tests.support.servers import free_port

GUEST = Path("/var/cache/multiconsole/guest/tiny-linux.img")


def params(sha: str, vm_id: str, disk_id: str) -> dict:
    return {
        "vmId": vm_id,
        "vmName": f"bench-ov-{vm_id[:8]}",
        "memSize": 128,
        "devices": [
            {"type": "video", "device": "vga", "specParams": {}},
            {"type": "graphics", "device": "vnc", "specParams": {}},
            {
                "type": "disk",
                "device": "disk",
                "iface": "virtio",
                "format": "qcow2",
                "path": "",
                "imageID": sha,
                "volumeID": disk_id,
                "baseFormat": "raw",
                "bootOrder": "1",
            },
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    sha = hashlib.sha256(GUEST.read_bytes()).hexdigest()
    root = Path(f"/var/lib/multiconsole/bench-storage-{uuid.uuid4().hex[:8]}")
    conn = libvirt.open("qemu:///system")
    agent_times, raw_times = [], []
    with tempfile.TemporaryDirectory(prefix="bench-overlay-") as d:
        agent = AgentProcess(
            "qemu:///system", free_port(), Path(d) / "agent.log", "qemu", extra=("--storage-dir", root)
        )
        agent.wait_ready()
        client = AgentClient(agent.url, timeout=120)
        try:
            client.put_image(sha, str(GUEST), GUEST.stat().st_size)
            for _ in range(a.runs):
                vm_id, disk_id = str(uuid.uuid4()), str(uuid.uuid4())
                start = time.perf_counter()
                client.call("VM.create", vmID=vm_id, vmParams=params(sha, vm_id, disk_id))
                agent_times.append(time.perf_counter() - start)
                dom = conn.lookupByUUIDString(vm_id)
                xml = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                client.call("VM.destroy", vmID=vm_id)
                # The same XML under another name and id, on the same (existing) overlay.
                twin = str(uuid.uuid4())
                xml.find("uuid").text = twin
                xml.find("name").text = f"bench-raw-{twin[:8]}"
                start = time.perf_counter()
                raw = conn.defineXML(etree.tostring(xml, encoding="unicode"))
                raw.create()
                raw_times.append(time.perf_counter() - start)
                raw.destroy()
                raw.undefine()
                client.call("VM.removeDisks", vmID=vm_id)
        finally:
            client.close()
            agent.proc.terminate()
            conn.close()
            shutil.rmtree(root, ignore_errors=True)
    ag, rw = statistics.median(agent_times), statistics.median(raw_times)
    print(f"median of {a.runs}: VM.create with a qcow2 overlay {ag * 1000:.0f} ms")
    print(f"                raw libvirt define + start      {rw * 1000:.0f} ms  (ratio x{ag / rw:.2f})")


if __name__ == "__main__":
    main()
