"""POST /api/v1/vms/{key}/keys with hosts on libvirt's test driver (which implements send-key
and checks every key code); the host's typist records what it sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiconsole.agent.vms import AgentError, VmManager
from multiconsole.domain.keys import ALT, ALTGR, CTRL, RETURN, SHIFT
from multiconsole.engine import keys as engine_keys
from multiconsole.wire.errors import ErrorCode
from tests.engine.conftest import ADMIN, FakeHost, engine_client, error, ok
from tests.engine.test_api import VM, setup_cluster
from tests.engine.test_permissions import add_user, grant, papi, world  # noqa: F401 (fixtures)
from tests.engine.test_web_ui import ORIGIN, _row, browser, login

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/qemu/keymaps/de").is_file(), reason="QEMU's keymaps are missing (qemu-system-data)"
)


class RecordingManager(VmManager):
    """The real agent; what its typist sends is recorded (and still sent to the test driver)."""

    pool = None  # the engine's connection pool, to see what it holds while the host types

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[int, ...]] = []
        self.held: list[int] = []
        self.keyboards.sleep = lambda _s: None
        send = self.keyboards.send

        def recording(vm_id, dom, presses):
            if RecordingManager.pool is not None:
                self.held.append(RecordingManager.pool.checkedout())
            self.sent.extend(p.codes for p in presses)
            return send(vm_id, dom, presses)

        self.keyboards.send = recording


@pytest.fixture
def host(tmp_path):
    h = FakeHost(tmp_path, manager_cls=RecordingManager)
    yield h
    h.stop()


def running_vm(api, host, **fields) -> dict:
    setup_cluster(api, host)
    ok(api.post("/api/v1/vms", json={**VM, **fields}), 201)
    return ok(api.post("/api/v1/vms/web1/start"))


def keys_audit(api) -> list[dict]:
    return [e for e in ok(api.get("/api/v1/audit?vm=web1")) if e["event"] == "keys typed"]


def test_text_and_named_keys_are_typed_with_the_vms_layout(api, host):
    running_vm(api, host, keyboard_layout="de")
    RecordingManager.pool = api.app.state.db_engine.pool
    try:
        reply = ok(api.post("/api/v1/vms/web1/keys", json={"text": "Grüße @\n"}))
    finally:
        RecordingManager.pool = None
    assert reply == {"vm": "web1", "keyboard_layout": "de", "characters": 8, "keys_sent": 8}
    m = host.manager
    assert m.sent == [(SHIFT, 0x22), (0x13,), (0x1A,), (0x0C,), (0x12,), (0x39,), (ALTGR, 0x10), (RETURN,)]
    assert m.held == [0]  # no database connection held while the host typed
    m.sent.clear()
    reply = ok(api.post("/api/v1/vms/web1/keys", json={"keys": ["ctrl-alt-delete", "ctrl-alt-f2"]}))
    assert reply["keys_sent"] == 2 and reply["characters"] == 0
    assert m.sent == [(CTRL, ALT, 0xD3), (CTRL, ALT, 0x3C)]
    # Audited, without the text itself.
    details = [e["detail"] for e in keys_audit(api)]
    assert sorted(details) == [
        "pressed ctrl-alt-delete, ctrl-alt-f2 (layout de)",
        "typed 8 characters (layout de)",
    ]
    assert all(e["user"] == "admin@internal" for e in keys_audit(api))
    assert "Grüße" not in str(ok(api.get("/api/v1/audit")))


def test_an_untypable_character_is_refused_before_any_key_is_sent(api, host):
    running_vm(api, host)  # no layout: en-us
    body = error(api.post("/api/v1/vms/web1/keys", json={"text": "Hello Straße"}), 400, "text")
    assert body["reason"] == "cannot type 'ß' (U+00DF) with keyboard layout en-us"
    # Also when it is far into a text that is sent in several chunks.
    text = "a" * (engine_keys.CHUNK * 2) + "€"
    error(api.post("/api/v1/vms/web1/keys", json={"text": text}), 400, "text")
    assert host.manager.sent == []
    assert keys_audit(api) == []


def test_long_texts_are_sent_in_chunks(sqlite_api, host, monkeypatch):
    api = sqlite_api
    running_vm(api, host)
    calls = []
    real_call = engine_keys._call
    monkeypatch.setattr(engine_keys, "_call", lambda t, p: calls.append(dict(p)) or real_call(t, p))
    text = "echo hi\r\n" * 50  # 450 characters, 400 once \r\n is one Enter
    reply = ok(api.post("/api/v1/vms/web1/keys", json={"text": text}))
    assert reply["characters"] == 400 and reply["keys_sent"] == 400
    assert [("check" in c, len(c["text"])) for c in calls] == [(True, 400), (False, 200), (False, 200)]
    assert host.manager.sent.count((RETURN,)) == 50


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, None),
        ({"text": "a", "keys": ["enter"]}, 422, None),
        ({"text": "a" * 4097}, 422, "text"),
        ({"keys": []}, 422, "keys"),
        ({"keys": ["enter"] * 33}, 422, "keys"),
        ({"keys": ["enter", "ctrl-alt-dlete"]}, 400, "keys[1]"),
        ({"text": "a", "layout": "de"}, 422, "layout"),
    ],
)
def test_bad_requests(sqlite_api, host, body, status, field):
    running_vm(sqlite_api, host)
    reply = error(sqlite_api.post("/api/v1/vms/web1/keys", json=body), status, field)
    assert reply["reason"]
    assert host.manager.sent == []


def test_only_while_running_and_only_with_console_user(sqlite_api, host):
    api = sqlite_api
    setup_cluster(api, host)
    ok(api.post("/api/v1/vms", json=VM), 201)
    body = error(api.post("/api/v1/vms/web1/keys", json={"text": "a"}), 409, "status")
    assert body["reason"] == "VM 'web1' is Down: keys can be typed only while it runs"
    error(api.post("/api/v1/vms/nope/keys", json={"text": "a"}), 404, "vm")
    ok(api.post("/api/v1/vms/web1/start"))
    alice, bob = add_user(api, "alice"), add_user(api, "bob")
    grant(api, "alice", "console_user", "vm", "web1")
    grant(api, "bob", "vm_operator", "vm", "web1")
    body = error(api.post("/api/v1/vms/web1/keys", json={"text": "a"}, auth=bob), 403)
    assert body["reason"] == "bob may not type into VM 'web1': needs console_user on it"
    error(api.post("/api/v1/vms/web1/keys", json={"text": "a"}, auth=None), 401)
    assert host.manager.sent == []
    ok(api.post("/api/v1/vms/web1/keys", json={"text": "a"}, auth=alice))
    assert host.manager.sent == [(0x1E,)]
    assert keys_audit(api)[0]["user"] == "alice"


def test_rate_limited_per_user(sqlite_url, host):
    with engine_client(sqlite_url, keys_rate_limit=2) as api:
        running_vm(api, host)
        for _ in range(2):
            ok(api.post("/api/v1/vms/web1/keys", json={"keys": ["enter"]}))
        reply = api.post("/api/v1/vms/web1/keys", json={"keys": ["enter"]})
        assert error(reply, 429)["reason"].startswith("too much typing: admin@internal may send 2 texts")
        assert int(reply.headers["retry-after"]) >= 1
        assert len(host.manager.sent) == 2


def test_a_host_without_the_layout(sqlite_api, host):
    host.manager.keyboards.keymap_dir = Path("/nonexistent")
    running_vm(sqlite_api, host, keyboard_layout="fr")
    body = error(sqlite_api.post("/api/v1/vms/web1/keys", json={"text": "a"}), 409, "keyboard_layout")
    assert "this host has no keyboard layout 'fr'" in body["reason"]


def test_web_ui_offers_paste_as_keystrokes_to_console_users(world):  # noqa: F811
    for who in ("admin", "alice"):
        b = browser(world.api)
        login(b, *(ADMIN if who == "admin" else world.users[who]))
        row = _row(b.get("/ui/vms").text, "vm-a")
        assert 'class="type-keys" data-vm="vm-a"' in row and "Paste as keystrokes" in row, who
    page = b.get("/ui/vms").text
    assert 'id="keys-dialog"' in page and 'id="keys-text"' in page
    console = b.get("/console/vm-a", headers={"Sec-Fetch-Site": "same-origin"}).text
    assert 'id="paste-text"' in console and "/console.js" in console
    assert "/keys`" in b.get("/static/ui/console.js").text
    # The pages' POST: the cookie and the same origin; from another site it is refused.
    reply = b.post(
        "/api/v1/vms/vm-a/keys", json={"keys": ["enter"]}, headers={"Origin": "http://evil.example"}
    )
    assert reply.status_code == 403
    reply = b.post("/api/v1/vms/vm-a/keys", json={"keys": ["enter"]}, headers={"Origin": ORIGIN})
    assert reply.status_code == 200, reply.text

    bob = browser(world.api)  # vm_operator, no console_user
    login(bob, *world.users["bob"])
    assert "type-keys" not in _row(bob.get("/ui/vms").text, "vm-a")


class _OldManager(VmManager):
    def send_keys(self, *_a, **_kw):
        raise AgentError(ErrorCode.METHOD_NOT_FOUND, "no such method: VM.sendKeys")


class _BrokenManager(VmManager):
    def send_keys(self, *_a, **_kw):
        raise AgentError(ErrorCode.LIBVIRT_FAILURE, "sending keys: qemu said no")


@pytest.mark.parametrize(
    ("manager_cls", "status", "reason"),
    [
        (_OldManager, 409, "host h-prod cannot type into VMs (its agent is older)"),
        (_BrokenManager, 502, "host h-prod could not type: sending keys: qemu said no"),
    ],
)
def test_hosts_that_cannot_type(sqlite_api, tmp_path, manager_cls, status, reason):
    h = FakeHost(tmp_path, manager_cls=manager_cls)
    try:
        running_vm(sqlite_api, h)
        body = error(sqlite_api.post("/api/v1/vms/web1/keys", json={"text": "a"}), status, "host")
        assert body["reason"] == reason
    finally:
        h.stop()
    body = error(sqlite_api.post("/api/v1/vms/web1/keys", json={"text": "a"}), 502, "host")
    assert body["reason"].startswith("host h-prod did not answer")
    assert keys_audit(sqlite_api) == []
