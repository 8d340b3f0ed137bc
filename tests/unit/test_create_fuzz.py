"""VM.create with malformed vmParams: always a JSON-RPC answer, never a leftover domain.

Mutations of a valid two-console vmCreate (wrong types, junk strings, huge and negative
numbers, missing keys, extra devices, nested junk, unicode, XML metacharacters) go through
the real HTTP app to libvirt's test driver. One manager serves the whole run; VMs that
were created are destroyed before the next example.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .conftest import make_client

VM_ID = "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b01"
VALID: dict[str, Any] = {
    "vmId": VM_ID,
    "vmName": "fuzz",
    "memSize": 256,
    "smp": "1",
    "devices": [
        {
            "type": "video",
            "device": "qxl",
            "deviceId": "9b7b7e51-2f0a-4c53-b1a8-8d9e5f1c2a3b",
            "specParams": {"vram": "32768", "heads": "1", "ram": "65536", "vgamem": "16384"},
            "address": {"type": "pci", "domain": "0x0000", "bus": "0x00", "slot": "0x02"},
        },
        {
            "type": "graphics",
            "device": "spice",
            "deviceId": "spice-1",
            "specParams": {
                "keyMap": "en-us",
                "spiceSecureChannels": "smain,sinputs,scursor",
                "copyPasteEnable": "true",
                "fileTransferEnable": "false",
                "displayNetwork": "ovirtmgmt",
            },
        },
        {"type": "graphics", "device": "vnc", "specParams": {"keyMap": "de", "displayIp": "::"}},
    ],
}

KEYS = [
    "vmId",
    "vmName",
    "memSize",
    "smp",
    "display",
    "displayPort",
    "displaySecurePort",
    "keyboardLayout",
    "spiceSecureChannels",
    "spiceMonitors",
    "displayNetwork",
    "displayIp",
    "copyPasteEnable",
    "fileTransferEnable",
    "devices",
    "type",
    "device",
    "deviceId",
    "specParams",
    "vram",
    "heads",
    "ram",
    "vgamem",
    "address",
    "keyMap",
    "domain",
    "bus",
    "slot",
    "function",
]
STRINGS = [
    "",
    " ",
    "vnc",
    "qxl",
    "qxlnc",
    "spice",
    "video",
    "graphics",
    "none",
    "cirrus",
    "vga",
    "pci",
    "32768",
    "-1",
    "0",
    "0x02",
    "0x20",
    "99999999999999",
    "1e6",
    "NaN",
    "en-us",
    "en-us\n",
    "smain,sinputs",
    "smain,sfoo",
    "true",
    "false",
    "0.0.0.0",
    "fe80::1%eth0",
    "blah",
    "x" * 65,
    "<",
    ">",
    "&",
    "&amp;",
    "]]>",
    "'\"",
    "</mc:params></mc:vm></metadata>",
    "<graphics type='vnc' passwd=''/>",
    "\x00",
    "\n",
    "\r\n",
    "\t",
    "\u202e",
    "\ufffe",
    "ünïcødé",
    "💥",
    VM_ID,
    VM_ID.upper(),
]
NUMBERS = [0, -1, 1, 4, 5, 15, 16, 1024, 65535, 65536, 2**31, 2**63, -(2**63), 10**30]

atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NUMBERS),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(STRINGS),
    st.text(max_size=12),
)
keys = st.sampled_from(KEYS) | st.text(max_size=6)
# Nested up to three levels; spelled out rather than st.recursive, which costs twice as much
# per example and the run is long already.
junk = st.one_of(
    atoms,
    st.lists(atoms, max_size=3),
    st.dictionaries(keys, atoms, max_size=3),
    st.dictionaries(keys, st.lists(atoms, max_size=2) | st.dictionaries(keys, atoms, max_size=2), max_size=2),
)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) of a nested document."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        out.append((node, key))
        if isinstance(value, dict | list):
            out += _slots(value)
    return out


def _containers(node: Any) -> list[Any]:
    out = [node]
    for value in node.values() if isinstance(node, dict) else node:
        if isinstance(value, dict | list):
            out += _containers(value)
    return out


@st.composite
def mutated_params(draw) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(junk)  # not even an object, now and then
    params = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "delete", "insert", "device"]))
        slots = _slots(params)
        if op in ("replace", "delete") and slots:
            container, key = draw(st.sampled_from(slots))
            if op == "replace":
                container[key] = draw(junk)
            else:
                del container[key]
        elif op == "insert":
            target = draw(st.sampled_from(_containers(params)))
            if isinstance(target, dict):
                target[draw(keys)] = draw(junk)
            else:
                target.insert(draw(st.integers(0, len(target))), draw(junk))
        elif op == "device" and isinstance(params.get("devices"), list):
            # An extra device: a copy of a real one (a second console of a type, a fifth
            # video...), possibly with one field changed, or a junk one.
            devices = params["devices"]
            extra = copy.deepcopy(draw(st.sampled_from(devices))) if devices else {}
            if isinstance(extra, dict) and draw(st.booleans()):
                extra[draw(st.sampled_from(KEYS))] = draw(junk)
            devices.append(extra if draw(st.booleans()) else draw(junk))
    return params


vm_ids = st.one_of(
    st.just(VM_ID),
    st.just(VM_ID),
    st.just(VM_ID.upper()),
    st.sampled_from(STRINGS),
    atoms,
    st.sampled_from([[], {}, [VM_ID], {"vmId": VM_ID}, "{" + VM_ID + "}", VM_ID + "\n"]),
)


def test_create_with_malformed_params_answers_and_leaves_nothing(manager):
    conn = manager.conn.get()
    seen = {"result": 0, "error": 0}

    with make_client(manager) as client:

        def call(vm_id: Any, params: Any) -> list[dict]:
            """One HTTP request per example (it keeps the run short), a batch of: the
            create, the VM list, a destroy of the VM and the VM list again."""
            body = [
                {"jsonrpc": "2.0", "id": 1, "method": "VM.create"},
                {"jsonrpc": "2.0", "id": 2, "method": "Host.getVMList"},
                {"jsonrpc": "2.0", "id": 3, "method": "VM.destroy", "params": [VM_ID]},
                {"jsonrpc": "2.0", "id": 4, "method": "Host.getVMList"},
            ]
            body[0]["params"] = {"vmID": vm_id, "vmParams": params}
            response = client.post(
                "/jsonrpc",
                content=json.dumps(body).encode(),
                headers={"content-type": "application/json"},
            )
            assert response.status_code == 200, response.text
            replies = response.json()
            assert [(r["jsonrpc"], r["id"]) for r in replies] == [("2.0", i) for i in range(1, 5)]
            for reply in replies:
                assert ("result" in reply) != ("error" in reply), reply
            return replies

        @settings(
            max_examples=2000,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(vm_id=vm_ids, params=mutated_params())
        @example(vm_id=VM_ID, params=VALID)
        def run(vm_id: Any, params: Any) -> None:
            created, listed, destroyed, left = call(vm_id, params)
            if "result" in created:
                seen["result"] += 1
                vm = created["result"]["vmList"]
                assert (vm["vmId"], vm["status"]) == (VM_ID, "Up")
                assert listed["result"] == [{"vmId": VM_ID, "status": "Up"}]
                assert destroyed["result"] == {}
            else:
                seen["error"] += 1
                err = created["error"]
                assert isinstance(err["code"], int) and not isinstance(err["code"], bool)
                assert err["code"] != -32603, err
                assert isinstance(err["message"], str) and err["message"]
                if err["code"] == -32602 and "data" in err:
                    assert isinstance(err["data"]["field"], str) and err["data"]["field"]
                    assert isinstance(err["data"]["reason"], str) and err["data"]["reason"]
                # Nothing was left behind: the agent lists nothing, there is nothing to destroy.
                assert listed["result"] == []
                assert destroyed["error"]["code"] == 1
            # And after the clean-up, neither the agent nor libvirt knows a domain.
            assert left["result"] == []
            assert conn.listAllDomains(0) == []

        run()

    # The run explored both outcomes, not only one of them.
    assert seen["result"] >= 1
    assert seen["error"] >= 100
