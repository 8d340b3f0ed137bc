"""REST API /api/v1 on SQLite and PostgreSQL, with a host on libvirt's test driver."""

from __future__ import annotations

from tests.engine.conftest import error, ok

VM = {"name": "web1", "cluster": "prod", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}


def setup_cluster(api, fake_host, level="4.7", name="prod"):
    ok(api.post("/api/v1/clusters", json={"name": name, "compat_level": level}), 201)
    host = ok(
        api.post(
            "/api/v1/hosts",
            json={
                "name": f"h-{name}",
                "address": "127.0.0.1",
                "port": fake_host.port,
                "cluster": name,
                "insecure": True,
            },
        ),
        201,
    )
    assert host["status"] == "Up" and host["capabilities"]["graphicsDevices"] is True
    return host


def test_login_is_required(api):
    error(api.get("/api/v1/vms", auth=None), 401)
    error(api.get("/api/v1/vms", auth=("admin@internal", "wrong")), 401)
    assert ok(api.get("/api/v1/vms")) == []


def test_vm_lifecycle_with_two_consoles(api, fake_host):
    setup_cluster(api, fake_host)
    vm = ok(api.post("/api/v1/vms", json=VM), 201)
    assert vm["status"] == "Down" and vm["display"]["consoles"] == ["spice", "vnc"]
    assert vm["next_run"] is None and vm["consoles"] == []

    vm = ok(api.post("/api/v1/vms/web1/start"))
    assert vm["status"] == "Up" and vm["host"] == "h-prod"
    # The host received graphics as devices (cluster level >= 3.4).
    params = fake_host.manager.conn.get().lookupByUUIDString(vm["id"]).XMLDesc(0)
    assert '"device": "spice"' in params and '"display"' not in params

    error(api.post("/api/v1/vms/web1/start"), 409, "status")
    error(api.delete("/api/v1/vms/web1"), 409, "status")

    # Editing consoles of a running VM waits for the next start.
    vm = ok(api.patch("/api/v1/vms/web1", json={"consoles": ["vnc"], "memory_mib": 96}))
    assert vm["display"]["consoles"] == ["spice", "vnc"] and vm["memory_mib"] == 64
    assert vm["next_run"]["display"]["consoles"] == ["vnc"] and vm["next_run"]["memory_mib"] == 96
    consoles = ok(api.get(f"/api/v1/vms/{vm['id']}/consoles"))
    assert [c["protocol"] for c in consoles["configured"]] == ["spice", "vnc"]
    assert [c["protocol"] for c in consoles["next_run"]] == ["vnc"]

    # Once stopped, the pending change is the VM's configuration, and edits build on it.
    vm = ok(api.post("/api/v1/vms/web1/stop"))
    assert vm["display"]["consoles"] == ["vnc"] and vm["memory_mib"] == 96 and vm["next_run"] is None
    vm = ok(api.patch("/api/v1/vms/web1", json={"name": "web1b"}))
    assert vm["display"]["consoles"] == ["vnc"] and vm["memory_mib"] == 96
    vm = ok(api.patch("/api/v1/vms/web1b", json={"name": "web1"}))
    vm = ok(api.post("/api/v1/vms/web1/start"))
    assert vm["display"]["consoles"] == ["vnc"] and vm["memory_mib"] == 96 and vm["next_run"] is None
    dom = fake_host.manager.conn.get().lookupByUUIDString(vm["id"])
    assert '"device": "spice"' not in dom.XMLDesc(0)
    vm = ok(api.post("/api/v1/vms/web1/stop"))
    assert vm["status"] == "Down" and vm["host"] is None
    # The host forgot it.
    assert fake_host.manager.vm_list() == []
    assert api.delete("/api/v1/vms/web1").status_code == 204
    error(api.get("/api/v1/vms/web1"), 404, "vm")


def test_edit_of_a_stopped_vm_applies_at_once(api, fake_host):
    setup_cluster(api, fake_host)
    ok(api.post("/api/v1/vms", json=VM), 201)
    vm = ok(api.patch("/api/v1/vms/web1", json={"consoles": []}))
    assert vm["display"]["consoles"] == [] and vm["display"]["video"] == "none" and vm["next_run"] is None
    vm = ok(api.patch("/api/v1/vms/web1", json={"consoles": ["vnc"]}))
    assert vm["display"]["video"] == "vga"
    vm = ok(api.patch("/api/v1/vms/web1", json={"consoles": ["spice"]}))
    assert vm["display"]["video"] == "qxl"


def test_edit_back_to_the_running_configuration_clears_next_run(api, fake_host):
    setup_cluster(api, fake_host)
    ok(api.post("/api/v1/vms", json=VM), 201)
    ok(api.post("/api/v1/vms/web1/start"))
    assert ok(api.patch("/api/v1/vms/web1", json={"consoles": ["spice"]}))["next_run"] is not None
    assert ok(api.patch("/api/v1/vms/web1", json={"consoles": ["spice", "vnc"]}))["next_run"] is None
    ok(api.post("/api/v1/vms/web1/stop"))


def test_template_gives_its_consoles_to_new_vms(api, fake_host):
    setup_cluster(api, fake_host)
    t = ok(
        api.post(
            "/api/v1/templates",
            json={
                "name": "vnc-only",
                "video": "vga",
                "consoles": ["vnc"],
                "memory_mib": 80,
                "keyboard_layout": "de",
            },
        ),
        201,
    )
    assert t["display"]["consoles"] == ["vnc"]
    vm = ok(api.post("/api/v1/vms", json={"name": "from-t", "cluster": "prod", "template": "vnc-only"}), 201)
    assert vm["template"] == "vnc-only" and vm["memory_mib"] == 80
    assert vm["display"]["consoles"] == ["vnc"] and vm["display"]["video"] == "vga"
    assert vm["display"]["keyboard_layout"] == "de"
    # A request may still override what the template says.
    vm = ok(
        api.post(
            "/api/v1/vms",
            json={
                "name": "from-t2",
                "cluster": "prod",
                "template": "vnc-only",
                "video": "qxl",
                "consoles": ["spice", "vnc"],
            },
        ),
        201,
    )
    assert vm["display"]["consoles"] == ["spice", "vnc"]
    # Templates follow the same rules.
    error(
        api.post("/api/v1/templates", json={"name": "bad", "video": "vga", "consoles": ["spice"]}),
        422,
        "video",
    )
    assert [x["name"] for x in ok(api.get("/api/v1/templates"))] == ["vnc-only"]


def test_bad_input_names_the_field_and_changes_nothing(api, fake_host):
    setup_cluster(api, fake_host)
    cases = [
        ({**VM, "name": "bad name"}, "name"),
        ({**VM, "name": "x" * 65}, "name"),
        ({**VM, "name": "<script>"}, "name"),
        ({**VM, "memory_mib": 0}, "memory_mib"),
        ({**VM, "memory_mib": "lots"}, "memory_mib"),
        ({**VM, "video": "matrox"}, "video"),
        ({**VM, "consoles": ["rdp"]}, "consoles.0"),
        ({**VM, "consoles": ["spice", "spice"]}, "graphics"),
        ({**VM, "video": "vga"}, "video"),
        ({**VM, "monitors": 2}, "monitors"),
        ({**VM, "consoles": ["spice"], "monitors": 3}, "monitors"),
        ({**VM, "keyboard_layout": "en-us\n[virt-viewer]"}, "keyboard_layout"),
        ({**VM, "cluster": "nowhere"}, "cluster"),
        ({**VM, "template": "nothing"}, "template"),
        ({**VM, "os_type": "beos"}, "os_type"),
        ({**VM, "surprise": 1}, "surprise"),
        ({k: v for k, v in VM.items() if k != "cluster"}, "cluster"),
    ]
    for body, field in cases:
        reply = api.post("/api/v1/vms", json=body)
        assert reply.status_code in (404, 422), (body, reply.text)
        assert reply.json()["error"]["field"] == field, (body, reply.json())
    error(api.post("/api/v1/vms", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert ok(api.get("/api/v1/vms")) == []
    ok(api.post("/api/v1/vms", json=VM), 201)
    error(api.post("/api/v1/vms", json=VM), 409, "name")


def test_start_refusals_are_clear(api, fake_host):
    ok(api.post("/api/v1/clusters", json={"name": "empty"}), 201)
    ok(api.post("/api/v1/vms", json={**VM, "cluster": "empty"}), 201)
    body = error(api.post("/api/v1/vms/web1/start"), 409, "host")
    assert "has no hosts" in body["reason"]
    setup_cluster(api, fake_host, name="prod")
    ok(api.post("/api/v1/vms", json={**VM, "name": "huge", "memory_mib": 1024 * 1024}), 201)
    body = error(api.post("/api/v1/vms/huge/start"), 409, "host")
    assert "MiB free" in body["reason"]
    ok(api.post("/api/v1/hosts/h-prod/maintenance"))
    ok(api.post("/api/v1/vms", json={**VM, "name": "small"}), 201)
    body = error(api.post("/api/v1/vms/small/start"), 409, "host")
    assert "Maintenance" in body["reason"]


def test_hosts_must_answer_and_match_the_cluster(api, fake_host):
    ok(api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    body = error(
        api.post(
            "/api/v1/hosts",
            json={"name": "ghost", "address": "127.0.0.1", "port": 1, "cluster": "prod", "insecure": True},
        ),
        422,
        "address",
    )
    assert "no agent answers" in body["reason"]
    ok(api.post("/api/v1/clusters", json={"name": "power", "arch": "ppc64"}), 201)
    body = error(
        api.post(
            "/api/v1/hosts",
            json={
                "name": "x86",
                "address": "127.0.0.1",
                "port": fake_host.port,
                "cluster": "power",
                "insecure": True,
            },
        ),
        422,
        "cluster",
    )
    assert "x86_64" in body["reason"]
    assert ok(api.get("/api/v1/hosts")) == []
    error(api.post("/api/v1/hosts", json={"name": "h", "address": "a b", "cluster": "prod"}), 422, "address")


def test_cluster_rules(api, fake_host):
    error(api.post("/api/v1/clusters", json={"name": "c", "compat_level": "2.9"}), 422, "compat_level")
    setup_cluster(api, fake_host)
    error(api.post("/api/v1/clusters", json={"name": "prod"}), 409, "name")
    ok(api.post("/api/v1/vms", json=VM), 201)
    error(api.delete("/api/v1/clusters/prod"), 409, "cluster")
    c = ok(api.patch("/api/v1/clusters/prod", json={"console_address": "consoles.example.org"}))
    assert c["console_address"] == "consoles.example.org"
