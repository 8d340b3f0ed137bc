"""The agent's JSON-RPC over its real HTTP app, on libvirt's test driver."""

from __future__ import annotations

import json
import uuid

import pytest

from multiconsole.agent import api

from .conftest import Rpc

VM_ID = "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b01"
OTHER_ID = "0ec7c2b9-62c9-4578-b096-f453b5cfc677"
METHODS = {
    "Host.getCapabilities",
    "Host.getVMList",
    "Host.getAllVmStats",
    "VM.create",
    "VM.getStats",
    "VM.destroy",
    "VM.setTicket",
    "VM.updateDevice",
    "VM.screenshot",
    "VM.sendKeys",
    "Host.certificateRequest",
    "Host.installCertificate",
    "Host.getImages",
    "VM.removeDisks",
}
BOTH = {
    "vmId": VM_ID,
    "vmName": "both",
    "memSize": 512,
    "smp": "2",
    "devices": [
        {"type": "video", "device": "qxl", "specParams": {"vram": "32768", "heads": "1"}},
        {"type": "graphics", "device": "spice", "specParams": {"keyMap": "en-us"}},
        {"type": "graphics", "device": "vnc", "specParams": {"keyMap": "en-us"}},
    ],
}
UNLOCKED_DISPLAY = [
    {"type": "vnc", "port": "-1", "tlsPort": "", "ipAddress": "0.0.0.0"},
    {"type": "spice", "port": "-1", "tlsPort": "", "ipAddress": "0.0.0.0"},
]


def create(rpc: Rpc, params: dict = BOTH, vm_id: str = VM_ID) -> dict:
    return rpc.result("VM.create", {"vmID": vm_id, "vmParams": params})


def domains(manager) -> list[str]:
    return sorted(d.UUIDString() for d in manager.conn.get().listAllDomains(0))


def ticket(gtype: str = "vnc", password: str = "abcd1234", ttl=120, **kw) -> dict:
    return {
        "vmID": VM_ID,
        "params": {
            "deviceType": "graphics",
            "graphicsType": gtype,
            "password": password,
            "ttl": ttl,
            **kw,
        },
    }


# --- every method ---------------------------------------------------------------------


def test_get_capabilities(rpc):
    caps = rpc.result("Host.getCapabilities")
    assert caps["graphicsDevices"] is True
    assert caps["diskDevices"] is True
    assert caps["legacyDisplay"] is True
    assert caps["graphicsTypes"] == ["spice", "vnc"]
    assert caps["videoTypes"] == ["qxl", "vga", "cirrus", "bochs", "virtio", "none"]
    assert caps["virtType"] == "test"
    assert caps["kvmEnabled"] is False
    assert caps["spiceTls"] is False
    assert caps["arch"] == "x86_64"
    assert caps["displayListen"] == "0.0.0.0"
    # Below 3.4 the legacy 'display' form, from 3.4 graphics devices: both served.
    assert {"3.3", "3.4"} <= set(caps["clusterLevels"])
    # tests/conftest.py's node: 4 cores, 8 GiB.
    assert (caps["cpuCores"], caps["memTotal"]) == (4, 8192)
    assert set(caps) == set(api.Capabilities.model_fields)


def test_create_returns_the_running_vm_with_two_consoles(rpc, manager):
    vm = create(rpc)["vmList"]
    assert isinstance(vm.pop("cpuTime"), int)
    assert vm == {
        "vmId": VM_ID,
        "vmName": "both",
        "status": "Up",
        "memSize": 512,
        "smp": 2,
        "displayInfo": UNLOCKED_DISPLAY,
        "displayType": "qxl",
        "displayPort": "-1",
        "displaySecurePort": "",
        "displayIp": "0.0.0.0",
        "additionalDisplayPort": "-1",
        "consoleClients": [],
        "consoleClientsSince": round(manager.events.started, 3),
    }
    assert domains(manager) == [VM_ID]
    dom = manager.conn.get().lookupByUUIDString(VM_ID)
    assert dom.isActive() == 1
    assert dom.name() == "both"


def test_create_with_an_upper_case_id(rpc):
    params = {k: v for k, v in BOTH.items() if k != "vmId"}
    assert create(rpc, params, VM_ID.upper())["vmList"]["vmId"] == VM_ID
    assert rpc.result("VM.getStats", {"vmID": VM_ID.upper()})[0]["vmId"] == VM_ID


def test_get_stats_matches_the_model(rpc):
    create(rpc)
    (stats,) = rpc.result("VM.getStats", {"vmID": VM_ID})
    assert stats["vmId"] == VM_ID
    assert stats["status"] == "Up"
    assert stats["displayInfo"] == UNLOCKED_DISPLAY
    # A running VM has no exit fields (vdsm sends them only with Down).
    exit_fields = {"exitCode", "exitReason", "exitMessage"}
    assert set(stats) == set(api.VmStats.model_fields) - exit_fields
    api.VmStats.model_validate(stats)


def test_all_vm_stats_and_vm_list(rpc):
    assert rpc.result("Host.getAllVmStats") == []
    assert rpc.result("Host.getVMList") == []
    create(rpc)
    legacy = {"vmId": OTHER_ID, "vmName": "legacy", "display": "vnc"}
    create(rpc, legacy, OTHER_ID)
    stats = {s["vmId"]: s for s in rpc.result("Host.getAllVmStats")}
    assert set(stats) == {VM_ID, OTHER_ID}
    assert stats[OTHER_ID]["displayInfo"] == [
        {"type": "vnc", "port": "-1", "tlsPort": "", "ipAddress": "0.0.0.0"}
    ]
    assert (stats[OTHER_ID]["displayType"], stats[OTHER_ID]["additionalDisplayPort"]) == (
        "vnc",
        "",
    )
    assert sorted(rpc.result("Host.getVMList"), key=lambda v: v["vmId"]) == [
        {"vmId": OTHER_ID, "status": "Up"},
        {"vmId": VM_ID, "status": "Up"},
    ]


def test_headless_vm(rpc):
    vm = create(rpc, {"vmId": VM_ID, "vmName": "headless"})["vmList"]
    assert (vm["displayInfo"], vm["displayType"], vm["displayPort"]) == ([], "", "")


def test_destroy_removes_the_domain(rpc, manager):
    create(rpc)
    assert rpc.result("VM.destroy", {"vmID": VM_ID}) == {}
    assert domains(manager) == []
    assert rpc.result("Host.getVMList") == []
    assert rpc.error("VM.getStats", {"vmID": VM_ID})["code"] == 1


def test_stopped_vm_reports_down_without_consoles(rpc, manager):
    create(rpc)
    manager.conn.get().lookupByUUIDString(VM_ID).destroy()
    (stats,) = rpc.result("VM.getStats", {"vmID": VM_ID})
    assert (stats["status"], stats["displayInfo"], stats["displayPort"]) == ("Down", [], "")
    assert rpc.result("Host.getVMList") == [{"vmId": VM_ID, "status": "Down"}]


# --- JSON-RPC envelope -------------------------------------------------------------------


def test_batch(rpc):
    response = rpc.post(
        [
            {"jsonrpc": "2.0", "id": "a", "method": "Host.getVMList"},
            {"jsonrpc": "2.0", "method": "Host.getVMList"},  # notification: no reply
            {"jsonrpc": "2.0", "id": 7, "method": "No.such"},
            {"jsonrpc": "2.0", "id": None, "method": "Host.getAllVmStats", "params": []},
            5,
        ]
    )
    assert response.status_code == 200
    assert response.json() == [
        {"jsonrpc": "2.0", "id": "a", "result": []},
        {
            "jsonrpc": "2.0",
            "id": 7,
            "error": {"code": -32601, "message": "no such method: No.such"},
        },
        {"jsonrpc": "2.0", "id": None, "result": []},
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": "not a JSON-RPC 2.0 request"},
        },
    ]


def test_batch_of_notifications_only_gets_no_content(rpc):
    response = rpc.post(
        [
            {"jsonrpc": "2.0", "method": "Host.getVMList"},
            {"jsonrpc": "2.0", "method": "No.such"},
        ]
    )
    assert (response.status_code, response.content) == (204, b"")


def test_notification_gets_no_reply_but_runs(rpc, manager):
    body = {
        "jsonrpc": "2.0",
        "method": "VM.create",
        "params": {"vmID": VM_ID, "vmParams": BOTH},
    }
    response = rpc.post(body)
    assert (response.status_code, response.content) == (204, b"")
    assert domains(manager) == [VM_ID]


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "method": "VM.getStats", "params": {}},
        {"jsonrpc": "2.0", "method": "VM.getStats", "params": {"vmID": OTHER_ID}},
        {"jsonrpc": "2.0", "method": "No.such"},
    ],
    ids=["invalid-params", "no-such-vm", "no-such-method"],
)
def test_failed_notification_gets_no_reply(rpc, body):
    response = rpc.post(body)
    assert (response.status_code, response.content) == (204, b"")


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"not json",
        b"",
        b'{"jsonrpc": "2.0", "id": 1, "method": "Host.getVMList",}',
        b"\xff\xfe\x00",
        b'{"jsonrpc": "2.0", "id": NaN, "method": "Host.getVMList"}',
        b'{"jsonrpc": "2.0", "id": 1, "method": "VM.create", "params": {"x": Infinity}}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["brace", "text", "empty", "comma", "bytes", "nan", "infinity", "deep"],
)
def test_parse_error(rpc, body):
    response = rpc.post(body)
    assert response.status_code == 200
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "the request is not valid JSON"},
    }


def test_nested_too_deeply_is_refused_before_any_method(rpc, manager):
    junk = json.loads("[" * 200 + "]" * 200)
    reply = rpc.post(
        {"jsonrpc": "2.0", "id": 1, "method": "VM.create", "params": {"vmID": VM_ID, "x": junk}}
    ).json()
    assert reply["error"]["code"] == -32700
    assert "nested deeper than 64 levels" in reply["error"]["message"]
    assert domains(manager) == []


@pytest.mark.parametrize(
    "body",
    [
        '{"jsonrpc": "2.0", "id": "\\ud800", "method": "Host.getVMList"}',
        '{"jsonrpc": "2.0", "id": 1, "method": "\\udfff"}',
        '{"jsonrpc": "2.0", "id": 1, "method": "VM.getStats", "params": {"\\ud800": 1}}',
    ],
    ids=["id", "method", "key"],
)
def test_lone_surrogates_are_a_parse_error(rpc, body):
    reply = rpc.post(body).json()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700
    assert "surrogate" in reply["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"id": 1, "method": "Host.getVMList"},
        {"jsonrpc": "1.0", "id": 1, "method": "Host.getVMList"},
        {"jsonrpc": 2.0, "id": 1, "method": "Host.getVMList"},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1},
    ],
    ids=["no-version", "version-1", "version-number", "method-number", "no-method"],
)
def test_invalid_request_keeps_the_id(rpc, body):
    assert rpc.post(body).json() == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32600, "message": "not a JSON-RPC 2.0 request"},
    }


@pytest.mark.parametrize("body", [5, "x", None, True], ids=["int", "str", "null", "bool"])
def test_invalid_request_that_is_no_object(rpc, body):
    assert rpc.post(json.dumps(body)).json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "not a JSON-RPC 2.0 request"},
    }


def test_empty_batch(rpc):
    assert rpc.post([]).json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "empty batch"},
    }


@pytest.mark.parametrize("req_id", [{"a": 1}, [1], True], ids=["object", "list", "bool"])
def test_invalid_id(rpc, req_id):
    reply = rpc.post({"jsonrpc": "2.0", "id": req_id, "method": "Host.getVMList"}).json()
    assert reply == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "id must be a string, a number or null"},
    }


def test_ids_are_echoed(rpc):
    for req_id in ("x-1", 0, -5, 1.5, None):
        reply = rpc.post({"jsonrpc": "2.0", "id": req_id, "method": "Host.getVMList"}).json()
        assert reply == {"jsonrpc": "2.0", "id": req_id, "result": []}


def test_unknown_method(rpc):
    assert rpc.error("VM.migrate", {"vmID": VM_ID}) == {
        "code": -32601,
        "message": "no such method: VM.migrate",
    }


# --- params --------------------------------------------------------------------------------


def test_missing_param(rpc):
    err = rpc.error("VM.getStats", {})
    assert err["code"] == -32602
    assert err["data"] == {"field": "vmID", "reason": "Field required"}
    assert err["message"] == "vmID: Field required"


def test_extra_param(rpc):
    err = rpc.error("VM.getStats", {"vmID": VM_ID, "verbose": True})
    assert err["code"] == -32602
    assert err["data"]["field"] == "verbose"
    assert "Extra inputs" in err["data"]["reason"]


@pytest.mark.parametrize("vm_id", ["garbage", "a\x00b", "", 5], ids=["text", "nul", "empty", "int"])
def test_vm_id_must_be_a_uuid(rpc, vm_id):
    for method in ("VM.getStats", "VM.destroy"):
        err = rpc.error(method, {"vmID": vm_id})
        assert err["code"] == -32602
        assert err["data"]["field"] == "vmID"


@pytest.mark.parametrize("params", ["x", 5, True], ids=["str", "int", "bool"])
def test_params_neither_object_nor_list(rpc, params):
    assert rpc.error("Host.getVMList", params) == {
        "code": -32602,
        "message": "params must be an object or a list",
    }


def test_invalid_vm_params_name_the_field(rpc, manager):
    params = {**BOTH, "devices": [*BOTH["devices"], {"type": "disk", "format": "raw"}]}
    err = rpc.error("VM.create", {"vmID": VM_ID, "vmParams": params})
    assert err["code"] == -32602
    assert err["data"] == {
        "field": "devices[3].path",
        "reason": "must be the absolute path of an image file",
    }
    assert domains(manager) == []


def test_vm_params_must_be_an_object(rpc):
    err = rpc.error("VM.create", {"vmID": VM_ID, "vmParams": []})
    assert err["code"] == -32602
    assert err["data"]["field"] == "vmParams"


def test_vm_params_id_differing_from_the_call(rpc, manager):
    err = rpc.error("VM.create", {"vmID": OTHER_ID, "vmParams": BOTH})
    assert err["code"] == -32602
    assert err["data"]["field"] == "vmParams.vmId"
    assert domains(manager) == []


def test_positional_params(rpc):
    assert rpc.result("VM.create", [VM_ID, BOTH])["vmList"]["vmId"] == VM_ID
    assert rpc.result("VM.getStats", [VM_ID])[0]["vmName"] == "both"
    assert rpc.result("Host.getVMList", []) == [{"vmId": VM_ID, "status": "Up"}]
    assert rpc.error("VM.getStats", [VM_ID, "extra"]) == {
        "code": -32602,
        "message": "VM.getStats takes at most 1 parameters",
    }
    assert rpc.result("VM.destroy", [VM_ID]) == {}


# --- agent errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("VM.getStats", {"vmID": OTHER_ID}),
        ("VM.destroy", {"vmID": OTHER_ID}),
        ("VM.setTicket", {"vmID": OTHER_ID, "password": "abcd1234", "ttl": 120}),
        ("VM.updateDevice", ticket() | {"vmID": OTHER_ID}),
    ],
    ids=["getStats", "destroy", "setTicket", "updateDevice"],
)
def test_no_such_vm(rpc, method, params):
    assert rpc.error(method, params) == {
        "code": 1,
        "message": f"no VM with id {OTHER_ID}",
    }


def test_foreign_domain_is_not_ours(rpc, manager):
    manager.conn.get().defineXML(
        f"<domain type='test'><name>foreign</name><uuid>{OTHER_ID}</uuid>"
        "<memory>65536</memory><os><type>hvm</type></os></domain>"
    )
    assert rpc.error("VM.getStats", {"vmID": OTHER_ID}) == {
        "code": 1,
        "message": f"VM {OTHER_ID} is not managed by this agent",
    }
    assert rpc.result("Host.getVMList") == []
    err = rpc.error("VM.create", {"vmID": VM_ID, "vmParams": {**BOTH, "vmName": "foreign"}})
    assert err == {"code": 4, "message": "a VM with name foreign already exists"}


def test_vm_exists_same_id(rpc, manager):
    create(rpc)
    again = {**BOTH, "vmName": "another"}
    assert rpc.error("VM.create", {"vmID": VM_ID, "vmParams": again}) == {
        "code": 4,
        "message": f"a VM with id {VM_ID} already exists",
    }
    assert domains(manager) == [VM_ID]


def test_vm_exists_same_name(rpc, manager):
    create(rpc)
    again = {**BOTH, "vmId": OTHER_ID}
    assert rpc.error("VM.create", {"vmID": OTHER_ID, "vmParams": again}) == {
        "code": 4,
        "message": "a VM with name both already exists",
    }
    assert domains(manager) == [VM_ID]


# --- tickets (the test driver has no updateDeviceFlags: validation only) -----------------------


@pytest.fixture
def running(rpc):
    create(rpc)
    return rpc


def test_vnc_password_longer_than_8(running):
    reply = running.call("VM.updateDevice", ticket("vnc", "123456789"))
    assert reply["error"] == {
        "code": -32602,
        "message": "password: VNC passwords are at most 8 characters",
        "data": {"field": "password", "reason": "VNC passwords are at most 8 characters"},
    }
    assert "123456789" not in json.dumps(reply)


def test_spice_password_may_be_longer(running):
    # Valid: it goes through to libvirt, which on the test driver cannot update devices.
    err = running.error("VM.updateDevice", ticket("spice", "a-long-spice-ticket"))
    assert err["code"] == 100
    assert "virDomainUpdateDeviceFlags" in err["message"]


@pytest.mark.parametrize("ttl", [0, -1, 7 * 24 * 3600 + 1])
def test_ttl_out_of_range(running, ttl):
    err = running.error("VM.updateDevice", ticket(ttl=ttl))
    assert err["code"] == -32602
    assert err["data"] == {"field": "ttl", "reason": "must be 1..604800 seconds"}


@pytest.mark.parametrize("ttl", [True, "soon", 1.5, None])
def test_ttl_not_a_number(running, ttl):
    err = running.error("VM.updateDevice", ticket(ttl=ttl))
    assert err["code"] == -32602
    assert err["data"]["field"] == "params.ttl"


def test_set_ticket_ttl_zero(running):
    err = running.error("VM.setTicket", {"vmID": VM_ID, "password": "abcd1234", "ttl": 0})
    assert err["code"] == -32602
    assert err["data"]["field"] == "ttl"


@pytest.mark.parametrize("gtype", ["rdp", "SPICE", "", None])
def test_unknown_graphics_type(running, gtype):
    err = running.error("VM.updateDevice", ticket(gtype))
    assert err["code"] == -32602
    assert err["data"]["field"] == "params.graphicsType"


@pytest.mark.parametrize("device_type", ["video", "disk", None])
def test_device_type_must_be_graphics(running, device_type):
    params = ticket()
    params["params"]["deviceType"] = device_type
    err = running.error("VM.updateDevice", params)
    assert err["code"] == -32602
    assert err["data"]["field"] == "params.deviceType"


def test_unknown_existing_conn_action(running):
    err = running.error("VM.updateDevice", ticket(existingConnAction="kick"))
    assert err["code"] == -32602
    assert err["data"]["field"] == "params.existingConnAction"


@pytest.mark.parametrize("password", ["ab\x00cd", "ab\ncd", "ab\x1bcd"], ids=["nul", "nl", "esc"])
def test_password_with_control_characters(running, password):
    err = running.error("VM.updateDevice", ticket("spice", password))
    assert err["code"] == -32602
    assert err["data"]["field"] == "params.password"
    err = running.error("VM.setTicket", {"vmID": VM_ID, "password": password, "ttl": 60})
    assert err["data"]["field"] == "password"


def test_empty_password(running):
    err = running.error("VM.updateDevice", ticket("spice", ""))
    assert err["code"] == -32602
    assert err["data"]["field"] == "password"


def test_ticket_for_a_console_the_vm_lacks(rpc):
    create(rpc, {"vmId": VM_ID, "vmName": "vnc", "display": "vnc"})
    assert rpc.error("VM.updateDevice", ticket("spice", "abcd1234")) == {
        "code": 101,
        "message": f"VM {VM_ID} has no spice console",
    }


def test_set_ticket_of_a_headless_vm(rpc):
    create(rpc, {"vmId": VM_ID, "vmName": "headless"})
    assert rpc.error("VM.setTicket", {"vmID": VM_ID, "password": "abcd1234", "ttl": 60}) == {
        "code": 101,
        "message": f"VM {VM_ID} is headless: no console",
    }


def test_set_ticket_picks_the_first_console_the_engine_sent(rpc):
    # VNC first: the 9-character password is refused as a VNC password...
    vnc_first = {**BOTH, "devices": [BOTH["devices"][0], BOTH["devices"][2], BOTH["devices"][1]]}
    create(rpc, vnc_first)
    err = rpc.error("VM.setTicket", {"vmID": VM_ID, "password": "123456789", "ttl": 60})
    assert err["data"]["field"] == "password"
    rpc.result("VM.destroy", {"vmID": VM_ID})
    # ...SPICE first: it is a valid SPICE password and reaches libvirt.
    create(rpc)
    err = rpc.error("VM.setTicket", {"vmID": VM_ID, "password": "123456789", "ttl": 60})
    assert err["code"] == 100


def test_ticket_of_a_stopped_vm(rpc, manager):
    create(rpc)
    manager.conn.get().lookupByUUIDString(VM_ID).destroy()
    assert rpc.error("VM.updateDevice", ticket()) == {
        "code": 102,
        "message": f"VM {VM_ID} is not running",
    }


# --- schema --------------------------------------------------------------------------------------


def test_schema_has_every_method_with_params_and_result(rpc):
    response = rpc.client.get("/jsonrpc/schema")
    assert response.status_code == 200
    schema = response.json()
    assert schema["jsonrpc"] == "2.0"
    assert set(schema["methods"]) == METHODS == set(api.METHODS)
    for name, method in schema["methods"].items():
        assert method["description"], name
        assert method["params"]["type"] == "object", name
        assert "result" in method and method["result"], name
    create_params = schema["methods"]["VM.create"]["params"]
    assert create_params["required"] == ["vmID", "vmParams"]
    assert create_params["additionalProperties"] is False
    ticket_params = schema["methods"]["VM.updateDevice"]["params"]
    assert ticket_params["required"] == ["vmID", "params"]
    stats = schema["methods"]["VM.getStats"]["result"]
    assert stats["type"] == "array"
    caps = schema["methods"]["Host.getCapabilities"]["result"]
    assert "graphicsDevices" in caps["properties"]
    assert schema["errors"] == {
        "-32700": "the request is not valid JSON",
        "-32600": "not a JSON-RPC 2.0 request",
        "-32601": "no such method",
        "-32602": "invalid parameters",
        "-32603": "internal error",
        "1": "virtual machine does not exist",
        "4": "virtual machine already exists",
        "100": "libvirt failed",
        "101": "the VM has no such device",
        "102": "the VM is not running",
        "103": "a client is connected to the console",
        "110": "the host cannot make or install that certificate",
        "120": "the host cannot provide the VM's images or disks",
    }


def test_two_vms_each_addressed_by_its_own_id(rpc, manager):
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for i, vm_id in enumerate(ids):
        create(rpc, {"vmId": vm_id, "vmName": f"vm{i}", "display": "qxl"}, vm_id)
    assert domains(manager) == sorted(ids)
    rpc.result("VM.destroy", {"vmID": ids[0]})
    assert domains(manager) == [ids[1]]
