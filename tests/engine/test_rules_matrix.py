"""Every graphics x video x OS x cluster-level combination, through POST /api/v1/vms.

The expectation is written here from the reference's rules, independently of the
engine's rule code: allowed graphics/video pairs per OS (x86_64: spice/qxl, vnc/vga,
vnc/qxl, vnc/cirrus, vnc/bochs; ppc64: vnc/vga), one console below level 3.4,
headless = no console and video none.
"""

from __future__ import annotations

import itertools

from multiconsole.domain.display import OS_TYPES
from tests.engine.conftest import ok

X86 = {("spice", "qxl"), ("vnc", "vga"), ("vnc", "qxl"), ("vnc", "cirrus"), ("vnc", "bochs")}
PPC = {("vnc", "vga")}
VIDEOS = ("qxl", "vga", "cirrus", "bochs", "virtio", "none")
CONSOLE_SETS = ((), ("spice",), ("vnc",), ("spice", "vnc"))
LEVELS = ("3.3", "3.4", "4.0", "4.7")


def expected_fields(consoles, video, arch, level) -> set[str]:
    """The fields that must be named as wrong; empty = the VM must be created."""
    wrong = set()
    pairs = X86 if arch == "x86_64" else PPC
    if len(consoles) > 1 and level == "3.3":
        wrong.add("graphics")
    if not consoles and video != "none":
        wrong.add("video")
    if consoles and video == "none":
        wrong.add("video")
    if any((c, video) not in pairs for c in consoles):
        wrong.add("video")
    return wrong


def test_every_combination(api):
    for level, arch in itertools.product(LEVELS, ("x86_64", "ppc64")):
        ok(
            api.post(
                "/api/v1/clusters", json={"name": f"c{level}-{arch}", "compat_level": level, "arch": arch}
            ),
            201,
        )
    n = created = 0
    mismatches = []
    for os_type, level, consoles, video in itertools.product(OS_TYPES, LEVELS, CONSOLE_SETS, VIDEOS):
        arch = OS_TYPES[os_type].arch
        n += 1
        body = {
            "name": f"vm{n}",
            "cluster": f"c{level}-{arch}",
            "os_type": os_type,
            "memory_mib": 64,
            "video": video,
            "consoles": list(consoles),
        }
        reply = api.post("/api/v1/vms", json=body)
        want = expected_fields(consoles, video, arch, level)
        if want:
            field = reply.json().get("error", {}).get("field") if reply.status_code == 422 else None
            if field not in want:
                mismatches.append((body, reply.status_code, reply.text[:200]))
        elif reply.status_code != 201:
            mismatches.append((body, reply.status_code, reply.text[:200]))
        else:
            created += 1
    assert mismatches == []
    assert n == len(OS_TYPES) * 4 * 4 * 6
    assert len(ok(api.get("/api/v1/vms"))) == created > 0


def test_os_must_match_the_cluster_architecture(api):
    ok(api.post("/api/v1/clusters", json={"name": "x86"}), 201)
    reply = api.post(
        "/api/v1/vms",
        json={"name": "p", "cluster": "x86", "os_type": "rhel_9_ppc64", "video": "vga", "consoles": ["vnc"]},
    )
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "os_type"


def test_monitors(api):
    ok(api.post("/api/v1/clusters", json={"name": "c"}), 201)
    for i, (consoles, monitors, good) in enumerate(
        (
            (["spice"], 1, True),
            (["spice"], 2, True),
            (["spice"], 4, True),
            (["spice"], 3, False),
            (["vnc"], 2, False),
            (["spice", "vnc"], 2, False),
            (["spice", "vnc"], 1, True),
        )
    ):
        reply = api.post(
            "/api/v1/vms",
            json={
                "name": f"m{i}",
                "cluster": "c",
                "video": "qxl",
                "consoles": consoles,
                "monitors": monitors,
            },
        )
        assert (reply.status_code == 201) == good, (consoles, monitors, reply.text)
        if not good:
            assert reply.json()["error"]["field"] == "monitors"


def test_rules_endpoint_lists_every_violation(api):
    ok(api.post("/api/v1/clusters", json={"name": "old", "compat_level": "3.3"}), 201)
    found = ok(
        api.post(
            "/api/v1/rules/check",
            json={"cluster": "old", "video": "vga", "consoles": ["spice", "vnc"], "monitors": 2},
        )
    )
    fields = sorted(v["field"] for v in found)
    assert fields == ["graphics", "monitors", "video"]
    assert ok(api.post("/api/v1/rules/check", json={"video": "qxl", "consoles": ["spice", "vnc"]})) == []
