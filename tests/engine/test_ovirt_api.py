"""oVirt's REST API v4 under /ovirt-engine (engine/ovirt/), on SQLite and PostgreSQL, with a host
on libvirt's test driver: XML shapes, faults and their status codes, ids, search, permissions."""

from __future__ import annotations

import uuid

import pytest
from lxml import etree

from multiconsole.engine.auth import TooManyRequests
from multiconsole.proxy import tickets
from tests.engine.conftest import engine_client, ok
from tests.engine.test_api import setup_cluster
from tests.engine.test_permissions import TicketingAgents, listen
from tests.support.servers import free_port

A = "/ovirt-engine/api"
SPICE, VNC = "7370696365", "766e63"
ADMIN_PW = "admin-pw"


def sso(api, username="admin@internal", password=ADMIN_PW, **extra):
    form = {"grant_type": "password", "scope": "ovirt-app-api", "username": username, "password": password}
    return api.post("/ovirt-engine/sso/oauth/token", data={**form, **extra}, auth=None)


class Ovirt:
    """Calls as the SDK makes them: bearer token, Version 4, XML both ways."""

    def __init__(self, api, username="admin@internal", password=ADMIN_PW):
        self.api = api
        reply = sso(api, username, password)
        assert reply.status_code == 200, reply.text
        self.token = reply.json()["access_token"]

    def headers(self, extra=None):
        return {
            "Authorization": f"Bearer {self.token}",
            "Version": "4",
            "Accept": "application/xml",
            "Content-Type": "application/xml",
            **(extra or {}),
        }

    def call(self, method, path, body=None, status=200, headers=None, **params):
        reply = self.api.request(
            method, A + path, content=body, headers=self.headers(headers), params=params or None, auth=None
        )
        assert reply.status_code == status, reply.text
        if status == 204:
            assert reply.content == b""
            return None
        assert reply.headers["content-type"].startswith("application/xml"), reply.headers
        return etree.fromstring(reply.content)

    def get(self, path, status=200, **params):
        return self.call("GET", path, status=status, **params)

    def post(self, path, body="<action/>", status=200, **params):
        return self.call("POST", path, body, status, **params)

    def delete(self, path, status=200):
        return self.call("DELETE", path, status=status)


def start(api, ov, vm_id, port=5910):
    """Start on the test driver; its graphics get no ports and take no passwords, so the
    consoles' addresses are set as stats would, and tickets stop at the engine's agents
    (test_permissions.py explains)."""
    if not isinstance(api.app.state.agents, TicketingAgents):
        api.app.state.agents = TicketingAgents(api.app.state.agents)
    assert ov.post(f"/vms/{vm_id}/start").findtext("status") == "complete"
    listen(api, vm_id, port)


def fault(el, contains=""):
    assert el.tag == "fault", etree.tostring(el)
    detail = el.findtext("detail")
    assert el.findtext("reason") and contains in detail, detail
    return detail


def names(el):
    return [child.findtext("name") for child in el]


def protocols(el):
    return sorted(c.findtext("protocol") for c in el)


@pytest.fixture
def ov(api):
    return Ovirt(api)


def template(api, name="tpl", consoles=("spice",), video="qxl"):
    return ok(
        api.post(
            "/api/v1/templates",
            json={
                "name": name,
                "cluster": "prod",
                "memory_mib": 64,
                "video": video,
                "consoles": list(consoles),
            },
        ),
        201,
    )


def new_vm(ov, name, tpl="tpl", cluster="<cluster><name>prod</name></cluster>", extra=""):
    body = f"<vm><name>{name}</name>{cluster}<template><name>{tpl}</name></template>{extra}</vm>"
    return ov.post("/vms", body, 201)


# --- SSO ----------------------------------------------------------------------------------------


def test_sso_token_logout_and_its_errors(api):
    reply = sso(api)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert (
        body["token_type"] == "bearer"
        and body["exp"].isdigit()
        and "no-store" in reply.headers["cache-control"]
    )
    token = body["access_token"]
    # The token is an engine login token: /api/v1 takes it too.
    me = api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}, auth=None)
    assert me.json()["name"] == "admin@internal"

    bad = sso(api, password="wrong")
    assert bad.status_code == 401 and bad.json()["error"] == "access_denied"
    assert "incorrect" in bad.json()["error_description"] and "wrong" not in bad.text
    other = sso(api, grant_type="urn:ovirt:params:oauth:grant-type:http")
    assert other.status_code == 400 and other.json()["error"] == "unsupported_grant_type"
    missing = api.post("/ovirt-engine/sso/oauth/token", data={"grant_type": "password"}, auth=None)
    assert missing.status_code == 400 and "username" in missing.json()["error_description"]

    out = api.post(
        "/ovirt-engine/services/sso-logout", data={"scope": "ovirt-app-api", "token": token}, auth=None
    )
    assert out.status_code == 200 and out.json() == {}
    gone = api.get(A, headers={"Authorization": f"Bearer {token}"}, auth=None)
    assert gone.status_code == 401 and gone.headers["www-authenticate"].startswith("Bearer")
    fault(etree.fromstring(gone.content), "token")


# Logging in is the same code on both databases (tokens are stored like /api/v1's): SQLite only.


def test_users_log_in_with_or_without_at_internal(sqlite_api):
    api = sqlite_api
    ok(api.post("/api/v1/users", json={"name": "alice", "password": "alice-pw-123"}), 201)
    assert sso(api, "alice@internal", "alice-pw-123").status_code == 200
    assert sso(api, "alice", "alice-pw-123").status_code == 200
    assert sso(api, "alice@internal", "nope").status_code == 401


def test_the_login_throttle_is_an_sso_error(sqlite_api, monkeypatch):
    api = sqlite_api
    from multiconsole.engine.ovirt import sso as sso_module

    def throttled(*_args, **_kw):
        raise TooManyRequests("too many failed logins for admin@internal; try again in 30 s", 30)

    monkeypatch.setattr(sso_module.auth, "verify", throttled)
    reply = sso(api)
    assert reply.status_code == 429 and reply.headers["retry-after"] == "30"
    assert reply.json() == {
        "error": "access_denied",
        "error_description": "too many failed logins for admin@internal; try again in 30 s",
    }


def test_the_engines_own_throttle_reaches_sso_and_basic(sqlite_api):
    """Failed logins through the SSO count like any other; once throttled, the SDK gets
    SSO's JSON error (and HTTP Basic a 429 fault), with Retry-After."""
    api = sqlite_api
    for _ in range(30):
        reply = sso(api, password="wrong")
        if reply.status_code == 429:
            break
        assert reply.status_code == 401
    assert reply.status_code == 429 and int(reply.headers["retry-after"]) > 0, reply.text
    assert reply.json()["error"] == "access_denied" and reply.json()["error_description"]
    basic = api.get(A, auth=("admin@internal", ADMIN_PW))
    assert basic.status_code == 429 and basic.headers["content-type"].startswith("application/xml")
    fault(etree.fromstring(basic.content))


# --- root, faults, ids --------------------------------------------------------------------------


def test_root_and_faults(api, ov):
    root = ov.get("")
    assert root.tag == "api" and root.findtext("product_info/version/major") == "4"
    assert {link.get("rel") for link in root.findall("link")} >= {"vms", "templates", "clusters", "hosts"}
    assert root.find("authenticated_user").get("id")

    # No credentials: 401 fault (the SDK logs in again once), never the engine's JSON.
    reply = api.get(A + "/vms", auth=None)
    assert reply.status_code == 401 and reply.headers["content-type"].startswith("application/xml")
    fault(etree.fromstring(reply.content), "sso/oauth/token")
    # HTTP Basic works as on oVirt.
    assert api.get(A, auth=("admin@internal", ADMIN_PW)).status_code == 200

    fault(ov.get("/nothing/here", 404), "no resource")
    fault(ov.call("GET", "/vms", status=400, headers={"Version": "3"}), "only 4")
    fault(ov.post("/vms", "<vm><name>x", 400), "not well-formed")
    fault(ov.post("/vms", "<template/>", 400), "expected <vm>")
    fault(ov.post("/vms", "<vm><cluster><name>prod</name></cluster></vm>", 400), "name")
    fault(ov.get(f"/vms/{uuid.uuid4()}", 404), "no VM")
    fault(ov.get("/vms", 400, search="colour=blue"), "cannot search by 'colour'")
    # Entities are not expanded (no billion laughs).
    bomb = '<!DOCTYPE vm [<!ENTITY a "aaaaaaaaaa">]><vm><name>&a;</name></vm>'
    assert ov.post("/vms", bomb, 400).tag == "fault"


def test_ids_are_uuids_and_console_ids_the_hex_of_the_protocol(api, fake_host, ov):
    setup_cluster(api, fake_host)
    template(api, consoles=("spice", "vnc"))
    vm = new_vm(ov, "web1")
    for path in ("/clusters", "/hosts", "/templates", "/vms"):
        for el in ov.get(path):
            assert uuid.UUID(el.get("id")) and el.get("href") == f"{A}{path}/{el.get('id')}"
    consoles = ov.get(f"/vms/{vm.get('id')}/graphicsconsoles")
    assert sorted(c.get("id") for c in consoles) == sorted([SPICE, VNC])
    assert bytes.fromhex(SPICE) == b"spice" and bytes.fromhex(VNC) == b"vnc"
    for c in consoles:
        assert c.find("vm").get("id") == vm.get("id")
        assert {a.get("rel") for a in c.findall("actions/link")} == {
            "ticket",
            "remoteviewerconnectionfile",
            "proxyticket",
        }
    fault(ov.get(f"/vms/{vm.get('id')}/graphicsconsoles/zz", 404), "no graphics console")
    fault(ov.get(f"/vms/{vm.get('id')}/graphicsconsoles/{b'rdp'.hex()}", 404), "no graphics console")
    one = ov.get(f"/vms/{vm.get('id')}/graphicsconsoles/{VNC}")
    assert one.tag == "graphics_console" and one.findtext("protocol") == "vnc"


def test_search(api, fake_host, ov):
    setup_cluster(api, fake_host)
    template(api)
    for name in ("web1", "web2", "db1"):
        new_vm(ov, name)
    assert names(ov.get("/vms", search="name=web1")) == ["web1"]
    assert names(ov.get("/vms", search="name=web*")) == ["web1", "web2"]
    assert names(ov.get("/vms", search="name=WEB1")) == []
    assert names(ov.get("/vms", search="name=WEB1", case_sensitive="false")) == ["web1"]
    assert names(ov.get("/vms", search="name=web* and status=down")) == ["web1", "web2"]
    assert names(ov.get("/vms", search="status=up")) == []
    assert names(ov.get("/vms", search="cluster=prod and name!=web*")) == ["db1"]
    assert names(ov.get("/vms", search="name=we_1")) == []  # LIKE's own characters are literal
    assert len(ov.get("/vms", max="2")) == 2
    fault(ov.get("/vms", 400, search="status=sleeping"), "status 'sleeping'")
    fault(ov.get("/vms", 400, search="name=web1 and"), "and")
    assert names(ov.get("/templates", search="name=tpl")) == ["tpl"]
    assert names(ov.get("/clusters", search="name=prod")) == ["prod"]
    assert names(ov.get("/hosts", search="status=up")) == ["h-prod"]


# --- VMs ----------------------------------------------------------------------------------------


def test_vm_add_start_stop_remove_and_its_display(api, fake_host, ov):
    setup_cluster(api, fake_host)
    t = template(api, consoles=("spice", "vnc"))
    cluster_id = ov.get("/clusters")[0].get("id")
    reply = api.post(
        A + "/vms",
        content=f'<vm><name>web1</name><cluster id="{cluster_id}"/><template id="{t["id"]}"/>'
        "<memory>134217728</memory><cpu><topology><sockets>2</sockets></topology></cpu></vm>",
        headers=ov.headers(),
        auth=None,
    )
    assert reply.status_code == 201
    vm = etree.fromstring(reply.content)
    vm_id = vm.get("id")
    assert reply.headers["location"].endswith(f"{A}/vms/{vm_id}")
    assert vm.findtext("memory") == str(128 * 2**20) and vm.findtext("cpu/topology/sockets") == "2"
    assert vm.findtext("status") == "down" and vm.find("template").get("id") == t["id"]
    display = vm.find("display")
    assert display.findtext("type") == "spice" and display.findtext("video_type") == "qxl"
    assert display.find("port") is None  # not running: no address, no port
    # From nothing (oVirt's Blank template), with oVirt's field names in errors.
    blank = new_vm(ov, "web2", "Blank")
    assert blank.find("template").get("id") == "00000000-0000-0000-0000-000000000000"
    fault(
        ov.post(
            "/vms", "<vm><name>web3</name><cluster><name>prod</name></cluster><memory>1024</memory></vm>", 400
        ),
        "memory",
    )
    fault(ov.post("/vms", "<vm><name>web3</name><template><name>tpl</name></template></vm>", 400), "cluster")
    no_template = "<template><name>nope</name></template>"
    fault(
        ov.post("/vms", f"<vm><name>web3</name><cluster><name>prod</name></cluster>{no_template}</vm>", 404),
        "template",
    )
    fault(
        ov.post("/vms", "<vm><name>web1</name><cluster><name>prod</name></cluster></vm>", 409),
        "already exists",
    )

    start(api, ov, vm_id)
    running = ov.get(f"/vms/{vm_id}")
    assert running.findtext("status") == "up" and running.find("host").get("id")
    current = {c.findtext("protocol"): c for c in ov.get(f"/vms/{vm_id}/graphicsconsoles", current="true")}
    assert set(current) == {"spice", "vnc"}
    assert all(c.findtext("address") and int(c.findtext("port")) > 0 for c in current.values())
    assert running.findtext("display/port") == current["spice"].findtext("port")
    fault(ov.post(f"/vms/{vm_id}/start", status=409), "already Up")
    fault(ov.delete(f"/vms/{vm_id}", 409), "stop it first")

    # The VM's own ticket is for SPICE when it has both.
    t1 = ov.post(f"/vms/{vm_id}/ticket", "<action><ticket><expiry>60</expiry></ticket></action>")
    assert t1.findtext("status") == "complete" and t1.findtext("ticket/expiry") == "60"
    assert len(t1.findtext("ticket/value")) == 8
    audit = ok(api.get("/api/v1/audit", params={"vm": "web1"}))
    assert audit[-1]["protocol"] == "spice" and audit[-1]["user"] == "admin@internal"

    assert ov.post(f"/vms/{vm_id}/stop").findtext("status") == "complete"
    assert ov.get(f"/vms/{vm_id}").findtext("status") == "down"
    assert ov.get(f"/vms/{vm_id}/graphicsconsoles", current="true") is not None
    assert len(ov.get(f"/vms/{vm_id}/graphicsconsoles", current="true")) == 0
    fault(ov.post(f"/vms/{vm_id}/stop", status=409), "not running")
    assert ov.delete(f"/vms/{vm_id}").findtext("status") == "complete"
    fault(ov.get(f"/vms/{vm_id}", 404), "no VM")


def test_console_add_and_remove_follow_the_rules(api, fake_host, ov):
    setup_cluster(api, fake_host)
    template(api)
    vm_id = new_vm(ov, "web1").get("id")
    path = f"/vms/{vm_id}/graphicsconsoles"
    reply = api.post(
        A + path,
        content="<graphics_console><protocol>vnc</protocol></graphics_console>",
        headers=ov.headers(),
        auth=None,
    )
    assert reply.status_code == 201 and reply.headers["location"].endswith(f"{A}{path}/{VNC}")
    assert etree.fromstring(reply.content).get("id") == VNC
    assert protocols(ov.get(path)) == ["spice", "vnc"]
    fault(ov.post(path, "<graphics_console><protocol>vnc</protocol></graphics_console>", 409), "already has")
    fault(ov.post(path, "<graphics_console><protocol>rdp</protocol></graphics_console>", 400), "rdp")
    fault(ov.post(path, "<graphics_console/>", 400), "protocol")

    # A running VM gets its new console at the next start: the list without current shows that.
    start(api, ov, vm_id)
    assert ov.delete(f"{path}/{VNC}").findtext("status") == "complete"
    assert protocols(ov.get(path)) == ["spice"]
    assert protocols(ov.get(path, current="true")) == ["spice", "vnc"]
    assert ov.get(f"/vms/{vm_id}").findtext("next_run_configuration_exists") == "true"
    ov.post(f"/vms/{vm_id}/stop")
    assert protocols(ov.get(path)) == ["spice"]

    # The last one removed: headless.
    ov.delete(f"{path}/{SPICE}")
    assert len(ov.get(path)) == 0
    display = ov.get(f"/vms/{vm_id}").find("display")
    assert display.find("type") is None and display.find("video_type") is None
    assert ok(api.get(f"/api/v1/vms/{vm_id}"))["display"]["video"] == "none"
    fault(ov.delete(f"{path}/{SPICE}", 404), "no spice console")
    # Adding to a headless VM brings a video card that can show it.
    ov.post(path, "<graphics_console><protocol>vnc</protocol></graphics_console>", 201)
    assert ok(api.get(f"/api/v1/vms/{vm_id}"))["display"]["video"] == "vga"


def test_a_33_cluster_allows_one_console(api, fake_host, ov):
    setup_cluster(api, fake_host, level="3.3", name="old")
    ok(
        api.post(
            "/api/v1/vms",
            json={"name": "old1", "cluster": "old", "memory_mib": 64, "video": "qxl", "consoles": ["spice"]},
        ),
        201,
    )
    vm_id = ov.get("/vms", search="name=old1")[0].get("id")
    body = "<graphics_console><protocol>vnc</protocol></graphics_console>"
    fault(ov.post(f"/vms/{vm_id}/graphicsconsoles", body, 409), "below 3.4")


def test_template_consoles(api, fake_host, ov):
    setup_cluster(api, fake_host)
    t = template(api)
    path = f"/templates/{t['id']}/graphicsconsoles"
    assert protocols(ov.get(path)) == ["spice"]
    added = ov.post(path, "<graphics_console><protocol>vnc</protocol></graphics_console>", 201)
    assert added.find("template").get("id") == t["id"] and added.find("actions") is None
    assert ov.get(f"{path}/{VNC}").findtext("protocol") == "vnc"
    vm_id = new_vm(ov, "web1").get("id")
    assert protocols(ov.get(f"/vms/{vm_id}/graphicsconsoles")) == ["spice", "vnc"]
    ov.delete(f"{path}/{SPICE}")
    assert protocols(ov.get(path)) == ["vnc"]
    assert ov.get(f"/templates/{t['id']}").findtext("display/type") == "vnc"
    # No tickets on templates: no such action.
    fault(ov.post(f"{path}/{VNC}/ticket", status=404), "no resource")


# --- tickets, remote-viewer files, proxy tickets ------------------------------------------------


def test_tickets_and_remote_viewer_files(api, fake_host, ov):
    setup_cluster(api, fake_host)
    template(api, consoles=("spice", "vnc"))
    vm_id = new_vm(ov, "web1").get("id")
    console = f"/vms/{vm_id}/graphicsconsoles/{VNC}"
    # Not running: no file (204), no ticket (409).
    assert ov.post(f"{console}/remoteviewerconnectionfile", status=204) is None
    accept = {"Accept": "application/x-virt-viewer"}
    reply = api.get(A + console, headers=ov.headers(accept), auth=None)
    assert reply.status_code == 204 and reply.content == b""
    fault(ov.post(f"{console}/ticket", status=409), "consoles open only while it runs")

    start(api, ov, vm_id)
    t = ov.post(f"{console}/ticket")
    assert t.findtext("ticket/expiry") == "7200" and len(t.findtext("ticket/value")) == 8
    t = ov.post(f"{console}/ticket", "<action><ticket><expiry>120</expiry></ticket></action>")
    assert t.findtext("ticket/expiry") == "120"
    fault(ov.post(f"{console}/ticket", "<action><ticket><value>mine</value></ticket></action>", 400), "value")
    fault(ov.post(f"{console}/ticket", "<action><ticket><expiry>0</expiry></ticket></action>", 400), "ttl")
    fault(
        ov.post(f"{console}/ticket", "<action><ticket><expiry>soon</expiry></ticket></action>", 400), "expiry"
    )

    vv = ov.post(f"{console}/remoteviewerconnectionfile").findtext("remote_viewer_connection_file")
    lines = vv.splitlines()
    keys = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert lines[0] == "[virt-viewer]" and keys["type"] == "vnc" and len(keys["password"]) == 8
    assert keys["delete-this-file"] == "1" and keys["title"] == "web1:%d"
    raw = api.get(A + f"/vms/{vm_id}/graphicsconsoles/{SPICE}", headers=ov.headers(accept), auth=None)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("application/x-virt-viewer")
    assert "type=spice" in raw.text and "no-store" in raw.headers["cache-control"]
    # This engine runs no websocket proxy (the test default).
    fault(ov.post(f"{console}/proxyticket", status=409), "no websocket proxy")


def test_proxy_ticket_is_the_engines_signed_ticket(sqlite_url, fake_host):
    with engine_client(sqlite_url, proxy_port=free_port()) as api:
        ov = Ovirt(api)
        setup_cluster(api, fake_host)
        template(api, consoles=("spice", "vnc"))
        vm_id = new_vm(ov, "web1").get("id")
        start(api, ov, vm_id)
        value = ov.post(f"/vms/{vm_id}/graphicsconsoles/{VNC}/proxyticket").findtext("proxy_ticket/value")
        import time

        claims = tickets.verify(value, api.app.state.proxy_key, time.time())
        assert claims.vm == vm_id and claims.console == "vnc" and claims.user == "admin@internal"
        vnc = next(c for c in ok(api.get(f"/api/v1/vms/{vm_id}"))["consoles"] if c["protocol"] == "vnc")
        assert claims.port == vnc["port"]
        fault(ov.post(f"/vms/{vm_id}/graphicsconsoles/{SPICE}/proxyticket", status=409), "vnc only")
        ov.post(f"/vms/{vm_id}/stop")


# --- permissions ----------------------------------------------------------------------------------


def test_permissions_as_in_api_v1(api, fake_host, ov):
    setup_cluster(api, fake_host)
    template(api, consoles=("spice", "vnc"))
    web = new_vm(ov, "web1").get("id")
    db = new_vm(ov, "db1").get("id")
    start(api, ov, web)
    for name, role in (("carol", "console_user"), ("otto", "vm_operator")):
        ok(api.post("/api/v1/users", json={"name": name, "password": f"{name}-pw-123"}), 201)
        ok(
            api.post(
                "/api/v1/permissions",
                json={"user": name, "role": role, "object_type": "vm", "object": "web1"},
            ),
            201,
        )
    carol = Ovirt(api, "carol@internal", "carol-pw-123")
    otto = Ovirt(api, "otto@internal", "otto-pw-123")

    # Seeing: only the VMs one has a role on; others do not exist (404).
    assert names(carol.get("/vms")) == ["web1"]
    fault(carol.get(f"/vms/{db}", 404), "no VM")
    fault(carol.get(f"/vms/{db}/graphicsconsoles", 404), "no VM")
    assert names(carol.get("/clusters")) == ["prod"]
    # Consoles: the console user gets tickets and files, not start/stop/edit (403).
    assert len(carol.post(f"/vms/{web}/graphicsconsoles/{VNC}/ticket").findtext("ticket/value")) == 8
    assert carol.post(f"/vms/{web}/ticket").findtext("ticket/value")
    fault(carol.post(f"/vms/{web}/stop", status=403), "needs vm_operator")
    fault(carol.delete(f"/vms/{web}/graphicsconsoles/{VNC}", 403), "needs vm_operator")
    fault(carol.delete(f"/vms/{web}", 403), "needs vm_operator")
    fault(
        carol.post("/vms", "<vm><name>x</name><cluster><name>prod</name></cluster></vm>", 403), "create VMs"
    )
    assert all(c.findtext("port") for c in carol.get(f"/vms/{web}/graphicsconsoles", current="true"))
    # The operator starts and stops, but opens no console and does not see where they listen.
    fault(otto.post(f"/vms/{web}/graphicsconsoles/{VNC}/ticket", status=403), "needs console_user")
    fault(
        otto.post(f"/vms/{web}/graphicsconsoles/{VNC}/remoteviewerconnectionfile", status=403), "console_user"
    )
    current = otto.get(f"/vms/{web}/graphicsconsoles", current="true")
    assert protocols(current) == ["spice", "vnc"] and all(c.find("port") is None for c in current)
    assert otto.get(f"/vms/{web}").find("display/port") is None
    otto.post(f"/vms/{web}/stop")
    # Templates: those of a cluster one has no role in are not there; seeing one is not editing it.
    t = ov.get("/templates")[0].get("id")
    body = "<graphics_console><protocol>vnc</protocol></graphics_console>"
    assert len(otto.get("/templates")) == 0
    fault(otto.post(f"/templates/{t}/graphicsconsoles", body, 404), "no template")
    ok(
        api.post(
            "/api/v1/permissions",
            json={"user": "otto", "role": "console_user", "object_type": "template", "object": t},
        ),
        201,
    )
    assert protocols(otto.get(f"/templates/{t}/graphicsconsoles")) == ["spice", "vnc"]
    fault(otto.delete(f"/templates/{t}/graphicsconsoles/{SPICE}", 403), "needs vm_operator")
    fault(otto.post(f"/templates/{t}/graphicsconsoles", body, 403), "needs vm_operator")


def test_no_secret_reaches_the_log(sqlite_url, fake_host, caplog):
    """Passwords, tokens, console tickets and proxy tickets of the oVirt API: in no log line."""
    caplog.set_level("DEBUG")
    with engine_client(sqlite_url, proxy_port=free_port()) as api:
        ov = Ovirt(api)
        setup_cluster(api, fake_host)
        template(api, consoles=("spice", "vnc"))
        vm_id = new_vm(ov, "web1").get("id")
        start(api, ov, vm_id)
        secrets = [ADMIN_PW, ov.token, "Wr0ng-guess-pw"]
        sso(api, password="Wr0ng-guess-pw")
        console = f"/vms/{vm_id}/graphicsconsoles/{VNC}"
        secrets.append(ov.post(f"{console}/ticket").findtext("ticket/value"))
        secrets.append(ov.post(f"/vms/{vm_id}/ticket").findtext("ticket/value"))
        vv = ov.post(f"{console}/remoteviewerconnectionfile").findtext("remote_viewer_connection_file")
        secrets.append(next(line for line in vv.splitlines() if line.startswith("password="))[9:])
        secrets.append(ov.post(f"{console}/proxyticket").findtext("proxy_ticket/value"))
        api.post("/ovirt-engine/services/sso-logout", data={"token": ov.token}, auth=None)
        ov.get("", 401)
    text = caplog.text
    assert text  # the engine did log (logins, tickets), just nothing secret
    for secret in secrets:
        assert secret and secret not in text
