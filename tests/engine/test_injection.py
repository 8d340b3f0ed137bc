"""Text that could reach domain XML or a remote-viewer file is refused at the API, by name."""

from __future__ import annotations

import configparser

from multiconsole.wire import vvfile
from tests.engine.conftest import ok

NASTY = [
    'web"><graphics type="vnc" passwd=""/>',
    "web' onload='x",
    "web<script>",
    "web\n[virt-viewer]\nhost=evil.example",
    "web\r\npassword=",
    "web]\n[virt-viewer",
    "we b",
    "web\x00",
    "../../etc/passwd",
    "-flag",
    "",
]


def test_text_fields_refuse_metacharacters(sqlite_api):
    api = sqlite_api
    ok(api.post("/api/v1/clusters", json={"name": "c"}), 201)
    for text in NASTY:
        for path, body, field in (
            ("/api/v1/vms", {"name": text, "cluster": "c"}, "name"),
            ("/api/v1/templates", {"name": text}, "name"),
            ("/api/v1/clusters", {"name": text}, "name"),
            ("/api/v1/vms", {"name": "ok1", "cluster": "c", "keyboard_layout": text}, "keyboard_layout"),
            ("/api/v1/clusters", {"name": "ok2", "console_address": text}, "console_address"),
            ("/api/v1/hosts", {"name": "h", "address": text, "cluster": "c"}, "address"),
            ("/api/v1/hosts", {"name": text, "address": "127.0.0.1", "cluster": "c"}, "name"),
        ):
            reply = api.post(path, json=body)
            assert reply.status_code == 422, (path, body, reply.text)
            assert reply.json()["error"]["field"] == field, (path, body, reply.json())
    # Nothing was created by any of them.
    assert ok(api.get("/api/v1/vms")) == [] and ok(api.get("/api/v1/templates")) == []
    assert [c["name"] for c in ok(api.get("/api/v1/clusters"))] == ["c"]
    assert ok(api.get("/api/v1/hosts")) == []


def test_a_viewer_file_has_exactly_its_keys():
    ticket = {
        "protocol": "spice",
        "address": "10.0.0.5",
        "port": 5901,
        "password": "abcdEF12",
        "ttl": 120,
        "vm": "web",
        "tls_port": None,
    }
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(vvfile.from_ticket(ticket))
    assert parser.sections() == ["virt-viewer"]
    keys = dict(parser["virt-viewer"])
    assert keys["host"] == "10.0.0.5" and keys["password"] == "abcdEF12" and keys["title"] == "web:%d"
    for field, value in (
        ("address", "10.0.0.5\n[virt-viewer]"),
        ("vm", "web\nhost=evil"),
        ("password", "x\rproxy=http://evil"),
    ):
        try:
            vvfile.from_ticket({**ticket, field: value})
        except ValueError as err:
            assert "single line" in str(err)
        else:
            raise AssertionError(f"{field} with a line break was written into the file")
