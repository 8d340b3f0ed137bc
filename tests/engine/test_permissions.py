"""Roles per system, cluster, VM and template, on every route that shows or opens a console,
and on the VM, template, cluster, host, user, permission and audit routes (SQLite and
PostgreSQL, hosts on libvirt's test driver).

The test driver cannot set graphics passwords (no updateDeviceFlags for graphics), so where
a ticket must be issued the engine's agents are wrapped by `TicketingAgents`, which accepts
VM.updateDevice / VM.setTicket itself, remembers them, and passes everything else on.
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import re
import time
from urllib.parse import urlsplit

import pytest

from multiconsole.engine.db import VmConsole
from multiconsole.proxy import tickets
from tests.engine.conftest import ADMIN, engine_client, error, ok
from tests.engine.test_api import VM, setup_cluster
from tests.support.servers import free_port

# --- helpers ---------------------------------------------------------------------------


class _TicketingClient:
    def __init__(self, real, calls: list):
        self.real, self.calls = real, calls

    def call(self, method: str, **params):
        if method in ("VM.updateDevice", "VM.setTicket"):
            self.calls.append((method, params))
            return {"vmList": {}}
        return self.real.call(method, **params)

    def __getattr__(self, name):
        return getattr(self.real, name)


class TicketingAgents:
    """The engine's agents, but console passwords are accepted here (see the module doc)."""

    def __init__(self, agents):
        self.agents = agents
        self.calls: list[tuple[str, dict]] = []

    def for_host(self, host):
        return _TicketingClient(self.agents.for_host(host), self.calls)

    def __getattr__(self, name):
        return getattr(self.agents, name)

    def vm_ids(self) -> set[str]:
        return {params["vmID"] for _, params in self.calls}


def listen(api, vm_id: str, port: int) -> None:
    """Where the VM's consoles listen, as a host's stats would say (the test driver's
    graphics get no ports: port -1)."""
    with api.app.state.sessions() as session:
        for i, protocol in enumerate(("spice", "vnc")):
            session.merge(VmConsole(vm_id=vm_id, protocol=protocol, address="127.0.0.1", port=port + i))
        session.commit()


def add_user(api, name: str, roles=()) -> tuple[str, str]:
    ok(
        api.post("/api/v1/users", json={"name": name, "password": f"{name}-password", "roles": list(roles)}),
        201,
    )
    return (name, f"{name}-password")


def grant(api, user: str, role: str, object_type: str = "system", obj: str | None = None) -> dict:
    body = {"user": user, "role": role, "object_type": object_type}
    if obj is not None:
        body["object"] = obj
    return ok(api.post("/api/v1/permissions", json=body), 201)


@dataclasses.dataclass
class World:
    api: object
    agents: TicketingAgents
    a: dict  # VM "vm-a", running
    b: dict  # VM "vm-b", running
    users: dict[str, tuple[str, str]]

    def as_(self, who: str):
        return ADMIN if who == "admin" else self.users[who]


def make_world(api, fake_host) -> World:
    """Two running VMs in cluster "prod", and users:

    alice  console_user on vm-a          bob    vm_operator on vm-a
    carol  console_user + console_reconnect on vm-a
    dave   vm_operator on cluster prod   erin   console_user on cluster prod
    nobody no role at all
    """
    setup_cluster(api, fake_host)
    agents = TicketingAgents(api.app.state.agents)
    api.app.state.agents = agents
    ok(api.post("/api/v1/vms", json={**VM, "name": "vm-a"}), 201)
    ok(api.post("/api/v1/vms", json={**VM, "name": "vm-b"}), 201)
    a = ok(api.post("/api/v1/vms/vm-a/start"))
    b = ok(api.post("/api/v1/vms/vm-b/start"))
    listen(api, a["id"], 5910)
    listen(api, b["id"], 5920)
    users = {n: add_user(api, n) for n in ("alice", "bob", "carol", "dave", "erin", "nobody")}
    grant(api, "alice", "console_user", "vm", "vm-a")
    grant(api, "bob", "vm_operator", "vm", "vm-a")
    grant(api, "carol", "console_user", "vm", "vm-a")
    grant(api, "carol", "console_reconnect", "vm", a["id"])  # by id as well as by name
    grant(api, "dave", "vm_operator", "cluster", "prod")
    grant(api, "erin", "console_user", "cluster", "prod")
    return World(api, agents, a, b, users)


@pytest.fixture
def papi(db_url):
    """The engine with its websocket proxy on (for proxy tickets)."""
    with engine_client(db_url, proxy_port=free_port(), allowed_origins=["http://testserver"]) as client:
        yield client
    client.app.state.db_engine.dispose()


@pytest.fixture
def world(papi, fake_host) -> World:
    return make_world(papi, fake_host)


# Every route that shows where a console listens or opens one.
CONSOLE_ROUTES = [
    ("GET", "/api/v1/vms/{vm}/consoles"),
    ("POST", "/api/v1/vms/{vm}/consoles/spice/ticket"),
    ("POST", "/api/v1/vms/{vm}/consoles/vnc/ticket"),
    ("GET", "/api/v1/vms/{vm}/consoles/spice.vv"),
    ("GET", "/api/v1/vms/{vm}/consoles/vnc.vv"),
    ("POST", "/api/v1/vms/{vm}/consoles/vnc/proxy-ticket"),
    ("GET", "/console/{vm}"),
    ("GET", "/api/v1/vms/{vm}/screenshot.png"),
]


def call(api, method: str, path: str, vm: str, auth):
    return api.request(method, path.format(vm=vm), auth=auth)


def check_allowed(w: World, reply, path: str, vm: dict, user: str) -> None:
    """What each console route gives a user who may open the VM's consoles."""
    assert reply.status_code == 200, (path, reply.text)
    if path.endswith("/consoles"):
        assert {c["protocol"] for c in reply.json()["current"]} == {"spice", "vnc"}
    elif path.endswith("/ticket"):
        t = reply.json()
        assert t["vm"] == vm["name"] and t["vm_id"] == vm["id"] and len(t["password"]) == 8
        assert reply.headers["cache-control"] == "no-store"
    elif path.endswith(".vv"):
        assert reply.headers["content-type"] == "application/x-virt-viewer"
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(reply.text)
        assert parser["virt-viewer"]["title"].startswith(vm["name"])
        assert len(parser["virt-viewer"]["password"]) == 8
    elif path.endswith("/proxy-ticket"):
        t = reply.json()
        assert t["vm_id"] == vm["id"] and len(t["password"]) == 8
        claims = proxy_claims(w, t["url"])
        assert (claims.vm, claims.user, claims.console) == (vm["id"], user, "vnc")
    elif path.startswith("/console/"):
        assert reply.headers["content-type"].startswith("text/html") and vm["name"] in reply.text
    elif path.endswith(".png"):
        assert reply.headers["content-type"] == "image/png"
    if "ticket" in path or path.endswith(".vv"):
        # The password was set on this VM's console and on no other VM's.
        assert w.agents.vm_ids() == {vm["id"]}


def proxy_claims(w: World, url: str) -> tickets.Claims:
    token = urlsplit(url).path.lstrip("/")
    return tickets.verify(token, w.api.app.state.proxy_key, time.time())


# --- the console routes ----------------------------------------------------------------


def test_console_routes_need_login(world):
    # Every route is tried with a wrong password: the login throttle (test_login_throttle.py) would
    # answer 429 after five; here the 401 itself is under test.
    world.api.app.state.login_throttle.per_user = 0
    for method, path in CONSOLE_ROUTES:
        for vm in ("vm-a", world.a["id"], "no-such-vm"):
            body = error(call(world.api, method, path, vm, None), 401)
            assert body["reason"].startswith("log in:"), path
        reply = call(world.api, method, path, "vm-a", ("alice", "wrong-password"))
        assert error(reply, 401)["reason"] == "wrong user name or password"
        assert reply.headers["www-authenticate"].startswith("Basic")
    assert world.agents.calls == []


def test_console_routes_need_console_user_on_that_vm(world):
    w = world
    for method, path in CONSOLE_ROUTES:
        w.agents.calls.clear()
        # No role at all on a VM: it is not there, word for word like a VM that does not exist.
        missing = error(call(w.api, method, path, "no-such-vm", w.as_("alice")), 404, "vm")
        assert missing["reason"] == "no VM 'no-such-vm'"
        for who, vm in (("nobody", "vm-a"), ("nobody", "vm-b"), ("alice", "vm-b"), ("bob", "vm-b")):
            body = error(call(w.api, method, path, vm, w.as_(who)), 404, "vm")
            assert body["reason"] == f"no VM {vm!r}", path
        # Some role but not console_user: told which role it takes.
        body = error(call(w.api, method, path, "vm-a", w.as_("bob")), 403)
        what = "see the screen of" if path.endswith(".png") else "open the consoles of"
        assert body["reason"] == f"bob may not {what} VM 'vm-a': needs console_user on it", path
        assert w.agents.calls == [], path
        # With console_user on vm-a: allowed there (by name and by id), still nothing on vm-b.
        check_allowed(w, call(w.api, method, path, "vm-a", w.as_("alice")), path, w.a, "alice")
        check_allowed(w, call(w.api, method, path, w.a["id"], w.as_("alice")), path, w.a, "alice")
        error(call(w.api, method, path, w.b["id"], w.as_("alice")), 404, "vm")
        # console_user on the cluster reaches both; the system admin reaches everything.
        w.agents.calls.clear()
        check_allowed(w, call(w.api, method, path, "vm-b", w.as_("erin")), path, w.b, "erin")
        w.agents.calls.clear()
        check_allowed(w, call(w.api, method, path, "vm-b", w.as_("admin")), path, w.b, "admin@internal")


def test_ticket_routes_pass_the_permission_check_to_the_host(papi, fake_host):
    """Without the ticketing wrapper the test driver refuses the password: the request got past
    login and permissions to the host (409), where a user without the role gets no further."""
    setup_cluster(papi, fake_host)
    ok(papi.post("/api/v1/vms", json={**VM, "name": "vm-a"}), 201)
    vm = ok(papi.post("/api/v1/vms/vm-a/start"))
    listen(papi, vm["id"], 5910)
    add_user(papi, "alice")
    add_user(papi, "bob")
    grant(papi, "alice", "console_user", "vm", "vm-a")
    grant(papi, "bob", "vm_operator", "vm", "vm-a")
    for method, path in CONSOLE_ROUTES:
        if "ticket" in path or path.endswith(".vv"):
            reply = call(papi, method, path, "vm-a", ("alice", "alice-password"))
            assert reply.status_code in (409, 502), reply.text
            assert reply.json()["error"]["field"] == "host"
            error(call(papi, method, path, "vm-a", ("bob", "bob-password")), 403)


def test_a_proxy_ticket_names_its_vm_and_opens_nothing_else(world):
    w = world
    alice = w.as_("alice")
    t = ok(w.api.post("/api/v1/vms/vm-a/consoles/vnc/proxy-ticket", auth=alice))
    claims = proxy_claims(w, t["url"])
    a_vnc = next(
        c for c in ok(w.api.get("/api/v1/vms/vm-a/consoles", auth=alice))["current"] if c["protocol"] == "vnc"
    )
    assert claims.vm == w.a["id"] and claims.port == a_vnc["port"] and claims.user == "alice"
    check = w.api.app.state.proxy.target_check

    def allowed(c: tickets.Claims) -> bool:
        return asyncio.run(check(c))

    assert allowed(claims)
    # The proxy compares the ticket's VM with its target: vm-a's ticket names vm-a's port,
    # and no other VM answers to it.
    b_vnc = next(c for c in ok(w.api.get("/api/v1/vms/vm-b/consoles"))["current"] if c["protocol"] == "vnc")
    assert b_vnc["port"] != a_vnc["port"]
    assert not allowed(dataclasses.replace(claims, vm=w.b["id"]))
    assert not allowed(dataclasses.replace(claims, port=b_vnc["port"]))
    assert not allowed(
        dataclasses.replace(claims, vm=w.b["id"], port=b_vnc["port"])
    )  # alice: no role on vm-b
    # Claims cannot be changed without the engine's key: a rewritten ticket is refused.
    payload, _, mac = urlsplit(t["url"]).path.lstrip("/").partition(".")
    forged = tickets.sign(dataclasses.replace(claims, vm=w.b["id"], port=b_vnc["port"]), b"k" * 32)
    with pytest.raises(tickets.TicketError, match="bad signature"):
        tickets.verify(forged.partition(".")[0] + "." + mac, w.api.app.state.proxy_key, time.time())
    # Taking alice's role away closes the proxy to her ticket before it is used.
    perm = next(p for p in ok(w.api.get("/api/v1/permissions?user=alice")) if p["role"] == "console_user")
    assert perm["object_name"] == "vm-a"
    assert w.api.delete(f"/api/v1/permissions/{perm['id']}").status_code == 204
    assert not allowed(claims)
    error(w.api.post("/api/v1/vms/vm-a/consoles/vnc/proxy-ticket", auth=alice), 404, "vm")


def test_takeover_needs_console_reconnect_on_the_vm(world):
    w = world
    with w.api.app.state.sessions() as session:
        console = session.get(VmConsole, (w.a["id"], "spice"))
        console.holder, console.client_address = "bob", "192.0.2.7"
        session.commit()
    url = "/api/v1/vms/vm-a/consoles/spice/ticket"
    body = error(w.api.post(url, json={"take_over": True}, auth=w.as_("alice")), 403, "take_over")
    assert "in use by bob" in body["reason"] and "console_reconnect on the VM" in body["reason"]
    error(w.api.post(url, auth=w.as_("carol")), 409, "take_over")
    t = ok(w.api.post(url, json={"take_over": True}, auth=w.as_("carol")))
    assert t["vm_id"] == w.a["id"]
    _, call_params = w.agents.calls[-1]
    assert call_params["vmID"] == w.a["id"]
    assert call_params["params"]["existingConnAction"] == "disconnect"
    assert call_params["params"]["params"]["userName"] == "carol"
    # console_reconnect on vm-a says nothing about vm-b.
    error(w.api.post("/api/v1/vms/vm-b/consoles/spice/ticket", auth=w.as_("carol")), 404, "vm")
    # The VM's allow_reconnect lets any console user take over.
    with w.api.app.state.sessions() as session:
        session.get(VmConsole, (w.a["id"], "spice")).holder = "bob"
        session.commit()
    ok(w.api.patch("/api/v1/vms/vm-a", json={"allow_reconnect": True}))
    ok(w.api.post("/api/v1/vms/vm-a/stop"))
    ok(w.api.post("/api/v1/vms/vm-a/start"))
    listen(w.api, w.a["id"], 5910)
    with w.api.app.state.sessions() as session:
        session.get(VmConsole, (w.a["id"], "spice")).holder = "bob"
        session.commit()
    ok(w.api.post(url, json={"take_over": True}, auth=w.as_("alice")))


# --- the VM routes ---------------------------------------------------------------------


def test_vms_are_seen_and_acted_on_by_role(world):
    w = world
    api = w.api
    names = {who: [v["name"] for v in ok(api.get("/api/v1/vms", auth=w.as_(who)))] for who in w.users}
    assert names == {
        "alice": ["vm-a"],
        "bob": ["vm-a"],
        "carol": ["vm-a"],
        "dave": ["vm-a", "vm-b"],
        "erin": ["vm-a", "vm-b"],
        "nobody": [],
    }
    # Where consoles listen is shown only to those who may open them.
    assert ok(api.get("/api/v1/vms/vm-a", auth=w.as_("alice")))["consoles"] != []
    assert ok(api.get("/api/v1/vms/vm-a", auth=w.as_("bob")))["consoles"] == []
    assert ok(api.get("/api/v1/vms", auth=w.as_("dave")))[0]["consoles"] == []

    operator = [
        ("PATCH", "/api/v1/vms/{vm}", {"memory_mib": 96}, "edit"),
        ("POST", "/api/v1/vms/{vm}/stop", None, "stop"),
        ("POST", "/api/v1/vms/{vm}/start", None, "start"),
        ("DELETE", "/api/v1/vms/{vm}", None, "remove"),
    ]
    for method, path, body, action in operator:
        for who, vm in (("nobody", "vm-a"), ("alice", "vm-b"), ("bob", "vm-b")):
            reply = api.request(method, path.format(vm=vm), json=body, auth=w.as_(who))
            assert error(reply, 404, "vm")["reason"] == f"no VM {vm!r}"
        reply = api.request(method, path.format(vm="vm-a"), json=body, auth=w.as_("alice"))
        assert error(reply, 403)["reason"] == f"alice may not {action} VM 'vm-a': needs vm_operator on it"
    error(api.get("/api/v1/vms/vm-b", auth=w.as_("alice")), 404, "vm")
    assert ok(api.get(f"/api/v1/vms/{w.a['id']}", auth=w.as_("alice")))["name"] == "vm-a"

    bob = w.as_("bob")
    assert (
        ok(api.patch("/api/v1/vms/vm-a", json={"memory_mib": 96}, auth=bob))["next_run"]["memory_mib"] == 96
    )
    assert ok(api.post("/api/v1/vms/vm-a/stop", auth=bob))["status"] == "Down"
    assert ok(api.post("/api/v1/vms/vm-a/start", auth=bob))["status"] == "Up"
    ok(api.post("/api/v1/vms/vm-a/stop", auth=bob))
    # Creating takes vm_operator on the cluster: bob sees the cluster (his VM is in it).
    new = {**VM, "name": "vm-c"}
    body = error(api.post("/api/v1/vms", json=new, auth=bob), 403, "cluster")
    assert body["reason"] == "bob may not create VMs in cluster 'prod': needs vm_operator on it"
    error(api.post("/api/v1/vms", json=new, auth=w.as_("nobody")), 404, "cluster")
    created = ok(api.post("/api/v1/vms", json=new, auth=w.as_("dave")), 201)
    assert "vm-c" in [v["name"] for v in ok(api.get("/api/v1/vms", auth=w.as_("dave")))]
    assert api.delete("/api/v1/vms/vm-a", auth=bob).status_code == 204
    # A removed VM's grants go with it.
    assert [p for p in ok(api.get("/api/v1/permissions?user=bob"))] == []
    assert api.delete(f"/api/v1/vms/{created['id']}", auth=w.as_("dave")).status_code == 204
    ok(api.post("/api/v1/vms/vm-b/stop", auth=w.as_("dave")))


def test_audit_shows_each_user_the_vms_they_see(world):
    w = world
    ok(w.api.post("/api/v1/vms/vm-a/consoles/vnc/ticket", auth=w.as_("alice")))
    ok(w.api.post("/api/v1/vms/vm-b/consoles/vnc/ticket", auth=w.as_("erin")))
    every = ok(w.api.get("/api/v1/audit"))
    assert {e["vm_name"] for e in every} == {"vm-a", "vm-b"}
    assert {e["vm_name"] for e in ok(w.api.get("/api/v1/audit", auth=w.as_("alice")))} == {"vm-a"}
    assert {e["vm_name"] for e in ok(w.api.get("/api/v1/audit", auth=w.as_("erin")))} == {"vm-a", "vm-b"}
    assert ok(w.api.get("/api/v1/audit", auth=w.as_("nobody"))) == []
    assert ok(w.api.get("/api/v1/audit?vm=vm-b", auth=w.as_("alice"))) == []


# --- templates, clusters, hosts, users, permissions ------------------------------------------


def test_templates_by_role(world):
    w = world
    api = w.api
    t = {"name": "t-prod", "cluster": "prod", "video": "vga", "consoles": ["vnc"]}
    error(api.post("/api/v1/templates", json=t, auth=w.as_("alice")), 403, "cluster")
    error(api.post("/api/v1/templates", json=t, auth=w.as_("nobody")), 404, "cluster")
    ok(api.post("/api/v1/templates", json=t, auth=w.as_("dave")), 201)
    body = error(
        api.post("/api/v1/templates", json={**t, "name": "shared", "cluster": None}, auth=w.as_("dave")), 403
    )
    assert "needs vm_operator or admin on the system" in body["reason"]
    ok(api.post("/api/v1/templates", json={**t, "name": "shared", "cluster": None}), 201)
    # A cluster's templates show to those with a role on the cluster; shared ones to everybody.
    seen = {
        who: [x["name"] for x in ok(api.get("/api/v1/templates", auth=w.as_(who)))]
        for who in ("alice", "erin")
    }
    assert seen == {"alice": ["shared"], "erin": ["shared", "t-prod"]}
    error(api.get("/api/v1/templates/t-prod", auth=w.as_("alice")), 404, "template")
    body = error(api.patch("/api/v1/templates/t-prod", json={"memory_mib": 99}, auth=w.as_("erin")), 403)
    assert body["reason"] == "erin may not edit template 't-prod': needs vm_operator or admin on its cluster"
    assert (
        ok(api.patch("/api/v1/templates/t-prod", json={"memory_mib": 99}, auth=w.as_("dave")))["memory_mib"]
        == 99
    )
    error(api.delete("/api/v1/templates/shared", auth=w.as_("dave")), 403)
    # Creating a VM from a template takes seeing it.
    vm = {"name": "from-t", "cluster": "prod", "template": "t-prod"}
    error(api.post("/api/v1/vms", json=vm, auth=w.as_("erin")), 403, "cluster")
    grant(api, "bob", "vm_operator", "cluster", "prod")
    ok(api.post("/api/v1/vms", json=vm, auth=w.as_("bob")), 201)
    assert api.delete("/api/v1/templates/t-prod", auth=w.as_("dave")).status_code == 204


def test_admin_routes_need_admin(world):
    w = world
    api = w.api
    dave = w.as_("dave")  # vm_operator on the cluster: no administrator
    refusals = [
        ("POST", "/api/v1/clusters", {"name": "c2"}, "create clusters"),
        ("PATCH", "/api/v1/clusters/prod", {"description": "x"}, "edit clusters"),
        ("DELETE", "/api/v1/clusters/prod", None, "remove clusters"),
        ("POST", "/api/v1/hosts", {"name": "h2", "address": "127.0.0.1", "cluster": "prod"}, "add hosts"),
        ("POST", "/api/v1/hosts/h-prod/maintenance", None, "put hosts in maintenance"),
        ("POST", "/api/v1/hosts/h-prod/activate", None, "activate hosts"),
        ("DELETE", "/api/v1/hosts/h-prod", None, "remove hosts"),
        ("GET", "/api/v1/users", None, "list users"),
        ("POST", "/api/v1/users", {"name": "x", "password": "12345678"}, "create users"),
        ("DELETE", "/api/v1/users/alice", None, "remove users"),
        ("GET", "/api/v1/permissions", None, "list permissions"),
        ("POST", "/api/v1/permissions", {"user": "dave", "role": "admin"}, "grant permissions"),
        ("DELETE", "/api/v1/permissions/1", None, "revoke permissions"),
    ]
    for method, path, body, action in refusals:
        reply = api.request(method, path, json=body, auth=dave)
        assert error(reply, 403)["reason"] == f"dave may not {action}: needs admin on the system", path
    # Reading clusters and hosts: those the user has a role in.
    assert [c["name"] for c in ok(api.get("/api/v1/clusters", auth=dave))] == ["prod"]
    assert [h["name"] for h in ok(api.get("/api/v1/hosts", auth=dave))] == ["h-prod"]
    assert [c["name"] for c in ok(api.get("/api/v1/clusters", auth=w.as_("alice")))] == ["prod"]
    assert ok(api.get("/api/v1/clusters", auth=w.as_("nobody"))) == []
    assert ok(api.get("/api/v1/hosts", auth=w.as_("nobody"))) == []
    error(api.get("/api/v1/clusters/prod", auth=w.as_("nobody")), 404, "cluster")
    error(api.get("/api/v1/hosts/h-prod", auth=w.as_("nobody")), 404, "host")
    error(api.post("/api/v1/rules/check", json={"cluster": "prod"}, auth=w.as_("nobody")), 404, "cluster")
    # A system-wide admin grant makes an administrator.
    grant(api, "dave", "admin")
    ok(api.get("/api/v1/users", auth=dave))


def test_users_and_permissions_api(api):
    alice = add_user(api, "alice")
    me = ok(api.get("/api/v1/me", auth=alice))
    assert (me["name"], me["roles"], me["permissions"]) == ("alice", [], [])
    users = {u["name"]: u["roles"] for u in ok(api.get("/api/v1/users"))}
    assert users == {"admin@internal": ["admin"], "alice": []}
    error(api.post("/api/v1/users", json={"name": "alice", "password": "another-pw"}), 409, "name")
    carol = ok(
        api.post("/api/v1/users", json={"name": "carol", "password": "carol-pw!", "roles": ["console_user"]}),
        201,
    )
    assert carol["roles"] == ["console_user"]

    ok(api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    p = grant(api, "alice", "vm_operator", "cluster", "prod")
    assert (p["user"], p["role"], p["object_type"], p["object_name"]) == (
        "alice",
        "vm_operator",
        "cluster",
        "prod",
    )
    error(
        api.post(
            "/api/v1/permissions",
            json={"user": "alice", "role": "vm_operator", "object_type": "cluster", "object": "prod"},
        ),
        409,
        "role",
    )
    error(
        api.post(
            "/api/v1/permissions",
            json={"user": "alice", "role": "console_user", "object_type": "vm", "object": "nope"},
        ),
        404,
        "object",
    )
    error(
        api.post("/api/v1/permissions", json={"user": "alice", "role": "console_user", "object_type": "vm"}),
        422,
        "object",
    )
    error(
        api.post("/api/v1/permissions", json={"user": "alice", "role": "admin", "object": "prod"}),
        422,
        "object",
    )
    error(api.post("/api/v1/permissions", json={"user": "zed", "role": "admin"}), 404, "user")
    error(api.post("/api/v1/permissions", json={"user": "alice", "role": "root"}), 422, "role")
    error(
        api.post(
            "/api/v1/permissions",
            json={"user": "alice", "role": "admin", "object_type": "host", "object": "x"},
        ),
        422,
        "object_type",
    )
    mine = ok(api.get("/api/v1/me", auth=alice))["permissions"]
    assert [(x["role"], x["object_name"]) for x in mine] == [("vm_operator", "prod")]
    assert [x["id"] for x in ok(api.get("/api/v1/permissions?object_type=cluster&object=prod"))] == [p["id"]]
    error(api.get("/api/v1/permissions?object=prod"), 422, "object_type")
    assert api.delete(f"/api/v1/permissions/{p['id']}").status_code == 204
    error(api.delete(f"/api/v1/permissions/{p['id']}"), 404, "permission")

    # The last administrator stays.
    admin_grant = ok(api.get("/api/v1/permissions?user=admin@internal"))[0]
    error(api.delete(f"/api/v1/permissions/{admin_grant['id']}"), 409, "permission")
    error(api.delete("/api/v1/users/admin@internal"), 409, "name")
    # Removing a user ends their logins, by password and by token.
    token = ok(api.post("/api/v1/login", json={"name": "alice", "password": "alice-password"}, auth=None))[
        "token"
    ]
    ok(api.get("/api/v1/vms", auth=None, headers={"Authorization": f"Bearer {token}"}))
    assert api.delete("/api/v1/users/alice").status_code == 204
    error(api.get("/api/v1/vms", auth=alice), 401)
    error(api.get("/api/v1/vms", auth=None, headers={"Authorization": f"Bearer {token}"}), 401)
    error(api.delete("/api/v1/users/alice"), 404, "name")
    assert [u["name"] for u in ok(api.get("/api/v1/users"))] == ["admin@internal", "carol"]


def test_every_route_needs_login(papi):
    """Each route of the engine but logging in (and a host's enrolment) answers 401 to
    a request without credentials."""
    from multiconsole.engine import api as api_module

    public = {(r.path, m) for r in api_module.public.routes for m in r.methods}
    try:
        from multiconsole.engine import enrollment

        public |= {(r.path, m) for r in enrollment.public.routes for m in r.methods}
    except ImportError:
        pass
    checked = 0
    for path, operations in papi.app.openapi()["paths"].items():
        for method in operations:
            if (path, method.upper()) in public:
                assert "security" not in operations[method], path
                continue
            assert operations[method].get("security"), f"{method} {path} names no way to log in"
            url = re.sub(r"\{[^}]+\}", "1", path)
            reply = papi.request(method, url, auth=None)
            assert reply.status_code == 401, f"{method} {path}: {reply.status_code} {reply.text}"
            assert reply.json()["error"]["reason"].startswith("log in:")
            assert "www-authenticate" in reply.headers
            checked += 1
    assert checked > 30
    assert ("/api/v1/login", "POST") in public
