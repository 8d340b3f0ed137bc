"""No name may look like an id (issue 11, finding 4): routes find an object by id, then by name,
so a VM named with another VM's id would make an admin's action by that name land on the
other VM. VMs, templates, clusters, hosts (and their enrolment tokens) and users, through the
REST API (which the CLI and the web UI's forms use) and the oVirt API."""

from __future__ import annotations

import uuid

from tests.engine.conftest import error, ok
from tests.engine.test_ovirt_api import Ovirt, fault

VM = {"cluster": "prod", "memory_mib": 64, "video": "qxl", "consoles": ["vnc"]}
SHAPES = [  # what uuid.UUID reads: with or without hyphens, any case
    lambda u: str(u),
    lambda u: str(u).upper(),
    lambda u: u.hex,
]


def refused(reply, field="name"):
    body = error(reply, 422, field)
    assert "UUID" in body["reason"], body


def test_a_vm_cannot_be_named_with_another_vms_id(api, fake_host):
    ok(api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    victim = ok(api.post("/api/v1/vms", json={**VM, "name": "victim"}), 201)
    refused(api.post("/api/v1/vms", json={**VM, "name": victim["id"]}))
    other = ok(api.post("/api/v1/vms", json={**VM, "name": "other"}), 201)
    refused(api.patch(f"/api/v1/vms/{other['id']}", json={"name": victim["id"]}))
    for shape in SHAPES:
        refused(api.post("/api/v1/vms", json={**VM, "name": shape(uuid.uuid4())}))
    # Nothing changed: the admin's delete by that id still reaches the victim only.
    assert sorted(v["name"] for v in ok(api.get("/api/v1/vms"))) == ["other", "victim"]
    assert ok(api.get(f"/api/v1/vms/{victim['id']}"))["name"] == "victim"
    # The oVirt API refuses it too (its 400 fault).
    ov = Ovirt(api)
    fault(
        ov.post("/vms", f"<vm><name>{victim['id']}</name><cluster><name>prod</name></cluster></vm>", 400),
        "UUID",
    )
    # Names that merely contain hex and dashes are fine.
    ok(api.post("/api/v1/vms", json={**VM, "name": "web-0123abcd"}), 201)


def test_no_resource_takes_an_id_shaped_name(api, fake_host):
    name = str(uuid.uuid4())
    refused(api.post("/api/v1/clusters", json={"name": name}))
    ok(api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    tpl = {"cluster": "prod", "memory_mib": 64, "video": "qxl", "consoles": ["vnc"]}
    refused(api.post("/api/v1/templates", json={**tpl, "name": name}))
    t = ok(api.post("/api/v1/templates", json={**tpl, "name": "tpl"}), 201)
    refused(api.patch(f"/api/v1/templates/{t['id']}", json={"name": name}))
    host = {"name": name, "address": "127.0.0.1", "port": fake_host.port, "cluster": "prod", "insecure": True}
    refused(api.post("/api/v1/hosts", json=host))
    refused(api.post("/api/v1/hosts/enrollment-tokens", json={"host": name}), "host")
    refused(api.post("/api/v1/users", json={"name": name, "password": "long-enough"}))
    assert [c["name"] for c in ok(api.get("/api/v1/clusters"))] == ["prod"]
    assert [x["name"] for x in ok(api.get("/api/v1/templates"))] == ["tpl"]
    assert ok(api.get("/api/v1/hosts")) == []
    assert name not in [u["name"] for u in ok(api.get("/api/v1/users"))]
