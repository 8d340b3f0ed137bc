"""Random REST payloads on the VM and console routes: never a 500, and every refusal a 4xx
in the one error shape whose `field` or `reason` names the problem.

Bodies mix the routes' own fields (with good values, wrong types, huge and negative
numbers, unicode, XML metacharacters, newlines, `[virt-viewer]` lines) with junk keys, any
JSON at all, and bytes that are not JSON. One engine on SQLite serves the whole run, with a
host on libvirt's test driver and one stopped and one running VM.
"""

from __future__ import annotations

import configparser
import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from multiconsole.domain.devices import SPICE_CHANNELS
from multiconsole.domain.display import OS_TYPES, DisconnectAction
from multiconsole.engine.schemas import TicketIn, VmIn, VmPatch
from tests.engine.conftest import FakeHost, engine_client, ok
from tests.engine.test_api import VM, setup_cluster
from tests.engine.test_permissions import TicketingAgents, listen

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

NASTY = [
    "",
    " ",
    "\n",
    "\r\n",
    "[virt-viewer]",
    "\n[virt-viewer]\nhost=evil.example\npassword=x\n",
    "web\r\npassword=",
    "en-us\n[virt-viewer]",
    "<graphics type='vnc' passwd=''/>",
    '"><script>alert(1)</script>',
    "]]><!--",
    "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
    "&amp;&lt;",
    "'\"`",
    "\x00",
    "\u202eevil",
    "\ufeff",
    "😀" * 10,
    "ä" * 70,
    "x" * 5000,
    "%s%n%x",
    "${jndi:ldap://x}",
    "../../etc/passwd",
    "NaN",
    "-1",
    "1e309",
    "true",
    "null",
]
texts = st.one_of(st.text(max_size=40), st.sampled_from(NASTY))
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 15, 16, 256, 1048577, 2**31, 2**63, 2**64, 10**100, -(10**100)]),
    st.floats(),  # NaN and infinities too: Python's json writes and reads them
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
any_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)


NAMES = st.one_of(st.from_regex(r"\Afz-[a-z0-9]{1,8}\Z"), texts)
# Values of the right type (some still wrong: unknown names, out of range).
DISPLAY = {
    "video": st.sampled_from(["qxl", "vga", "cirrus", "bochs", "virtio", "none", "QXL", "matrox"]),
    "consoles": st.lists(st.sampled_from(["spice", "vnc", "rdp", "SPICE", ""]), max_size=3),
    "monitors": st.integers(min_value=-1, max_value=5),
    "vram": st.integers(min_value=0, max_value=2 * 1048576),
    "keyboard_layout": st.sampled_from(["en-us", "de", "fr-ch", "xx-", "EN"]) | texts,
    "copy_paste": st.booleans(),
    "file_transfer": st.booleans(),
    "spice_secure_channels": st.lists(st.sampled_from(SPICE_CHANNELS + ("smain", "all")), max_size=4),
    "disconnect_action": st.sampled_from([d.value for d in DisconnectAction] + ["lock_screen"]),
    "allow_reconnect": st.booleans(),
}
HARDWARE = {
    "os_type": st.sampled_from([*OS_TYPES, "windows_95"]),
    "memory_mib": st.integers(min_value=0, max_value=2 * 1048576),
    "vcpus": st.integers(min_value=0, max_value=300),
}
VM_IN = {
    "name": NAMES,
    "cluster": st.sampled_from(["prod", "prod", "nowhere", "PROD"]),
    "template": st.sampled_from(["nothing"]) | texts,
    **HARDWARE,
    **DISPLAY,
}
VM_PATCH = {"name": NAMES, **HARDWARE, **DISPLAY}
TICKET_IN = {
    "ttl": st.integers(min_value=-5, max_value=8000),
    "existing_connection": st.sampled_from(["disconnect", "keep", "fail", "KEEP"]),
    "take_over": st.booleans(),
}


def bodies(fields: dict[str, st.SearchStrategy], required: tuple[str, ...] = ()) -> st.SearchStrategy:
    """A JSON object of (some of) `fields` with values of their type, or of any JSON, maybe
    with junk keys; or any JSON; or bytes that are no JSON."""

    def objects(value: Any) -> st.SearchStrategy:
        return st.fixed_dictionaries(
            {k: value(v) for k, v in fields.items() if k in required},
            optional={k: value(v) for k, v in fields.items() if k not in required},
        )

    typed = objects(lambda good: good)
    mixed = objects(lambda good: st.one_of(good, any_json))
    with_junk = st.tuples(typed, st.dictionaries(texts, any_json, min_size=1, max_size=2)).map(
        lambda kv: {**kv[1], **kv[0]}
    )
    return st.one_of(typed, typed, typed, mixed, mixed, with_junk, any_json, st.binary(max_size=64))


def send(api, method: str, url: str, body: Any):
    if isinstance(body, bytes):
        return api.request(method, url, content=body, headers={"Content-Type": "application/json"})
    return api.request(method, url, content=json.dumps(body), headers={"Content-Type": "application/json"})


def check_refusal(reply, body: Any, model) -> dict:
    """No 500; a refusal is a 4xx in the error shape, naming a field or giving a reason."""
    event(f"HTTP {reply.status_code}")
    assert reply.status_code < 500, reply.text
    if reply.status_code < 400:
        return reply.json() if reply.headers.get("content-type", "").startswith("application/json") else {}
    err = reply.json()["error"]
    assert err["status"] == reply.status_code
    assert isinstance(err["reason"], str) and err["reason"].strip()
    assert err["field"] or err["reason"]
    if err["field"] is not None:
        assert isinstance(err["field"], str) and err["field"]
        if reply.status_code == 422 and isinstance(body, dict):
            known = set(model.model_fields) | {"graphics", "video", "monitors", "os_type", "cluster", "name"}
            assert err["field"] in body or err["field"].split(".")[0] in known, err
    return {}


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    host = FakeHost(tmp)
    with engine_client(f"sqlite:///{tmp / 'engine.db'}", ticket_rate_limit=10**9) as api:
        setup_cluster(api, host)
        api.app.state.agents = TicketingAgents(api.app.state.agents)
        stopped = ok(api.post("/api/v1/vms", json={**VM, "name": "fz-stopped"}), 201)
        ok(api.post("/api/v1/vms", json={**VM, "name": "fz-running"}), 201)
        running = ok(api.post("/api/v1/vms/fz-running/start"))
        listen(api, running["id"], 5910)
        yield api, stopped["id"], running["id"]
        api.post(f"/api/v1/vms/{running['id']}/stop")
    host.stop()


@FUZZ
@given(body=bodies(VM_IN, required=("name", "cluster")))
@example(body={"name": "fz-x", "cluster": "prod", "keyboard_layout": "en-us\n[virt-viewer]\nhost=evil"})
@example(body={"name": "fz-x\n[virt-viewer]", "cluster": "prod"})
@example(body={"name": "fz-x", "cluster": "prod", "memory_mib": 10**100, "vcpus": float("inf")})
@example(body={"name": "fz-x", "cluster": "prod", "consoles": {"spice": True}})
@example(body=[{"name": "fz-x"}])
@example(body=b"<vm><name>x</name></vm>")
def test_create_vm(fuzz, body):
    api, _, _ = fuzz
    reply = send(api, "POST", "/api/v1/vms", body)
    vm = check_refusal(reply, body, VmIn)
    if reply.status_code == 201:
        assert vm["name"] == body["name"] and "\n" not in (vm["display"]["keyboard_layout"] or "")
        assert set(vm["display"]["consoles"]) <= {"spice", "vnc"}
        assert api.delete(f"/api/v1/vms/{vm['id']}").status_code == 204


@FUZZ
@given(body=bodies(VM_PATCH), running=st.booleans())
@example(body={"keyboard_layout": "de\n[virt-viewer]"}, running=False)
@example(body={"name": None, "monitors": 2**64}, running=True)
@example(body=None, running=False)
def test_edit_vm(fuzz, body, running):
    api, stopped_id, running_id = fuzz
    vm_id = running_id if running else stopped_id
    reply = send(api, "PATCH", f"/api/v1/vms/{vm_id}", body)
    vm = check_refusal(reply, body, VmPatch)
    if reply.status_code == 200:
        assert vm["id"] == vm_id and vm["status"] == ("Up" if running else "Down")
        assert set(vm["display"]["consoles"]) <= {"spice", "vnc"}


PROTOCOLS = st.one_of(
    st.sampled_from(["vnc", "spice"]),
    st.sampled_from(["vnc", "spice"]),
    st.sampled_from(["VNC", "rdp", "..", "vnc.vv", "spice\n[virt-viewer]"]),
    st.text(min_size=1, max_size=12),
)


@FUZZ
@given(protocol=PROTOCOLS, body=st.one_of(st.none(), bodies(TICKET_IN)))
@example(protocol="vnc", body={"ttl": 0})
@example(protocol="spice", body={"ttl": 7200, "existing_connection": "keep"})
@example(protocol="vnc", body={"take_over": "yes please"})
@example(protocol="spice\n[virt-viewer]", body=None)
def test_console_ticket(fuzz, protocol, body):
    api, stopped_id, running_id = fuzz
    url = f"/api/v1/vms/{running_id}/consoles/{quote(protocol, safe='')}/ticket"
    reply = api.post(url) if body is None else send(api, "POST", url, body)
    t = check_refusal(reply, body, TicketIn)
    if reply.status_code == 200:
        assert t["vm_id"] == running_id and t["protocol"] in ("spice", "vnc")
        assert len(t["password"]) == 8 and 1 <= t["ttl"] <= 7200
    # A stopped VM never gets one.
    stopped = api.post(url.replace(running_id, stopped_id)) if body is None else None
    if stopped is not None:
        assert 400 <= stopped.status_code < 500, stopped.text


@FUZZ
@given(
    protocol=PROTOCOLS,
    ttl=st.one_of(st.none(), texts, numbers.map(str)),
    take_over=st.one_of(st.none(), texts),
)
@example(protocol="spice", ttl="120\n[virt-viewer]", take_over=None)
@example(protocol="vnc", ttl="99999999999999999999999", take_over="1")
def test_console_file(fuzz, protocol, ttl, take_over):
    api, _, running_id = fuzz
    params = {k: v for k, v in (("ttl", ttl), ("take_over", take_over)) if v is not None}
    reply = api.get(f"/api/v1/vms/{running_id}/consoles/{quote(protocol, safe='')}.vv", params=params)
    check_refusal(reply, params, TicketIn)
    if reply.status_code == 200:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(reply.text)
        assert parser.sections() == ["virt-viewer"]
        assert len(parser["virt-viewer"]["password"]) == 8
        assert parser["virt-viewer"]["type"] in ("spice", "vnc")
