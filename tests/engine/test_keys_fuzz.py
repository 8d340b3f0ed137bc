"""Random bodies for POST /api/v1/vms/{vm}/keys: never a 500, every refusal a 4xx naming the
field or the reason; what is typed is what was accepted (a host on libvirt's test driver)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from multiconsole.engine.schemas import KeysIn
from tests.engine.conftest import FakeHost, engine_client, ok
from tests.engine.test_api import VM, setup_cluster
from tests.engine.test_rest_fuzz import FUZZ, NASTY, bodies, check_refusal, send, texts

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/qemu/keymaps/de").is_file(), reason="QEMU's keymaps are missing (qemu-system-data)"
)

COMBOS = (
    st.sampled_from(
        [
            "enter",
            "ctrl-alt-delete",
            "alt-f4",
            "ctrl-c",
            "ctrl--",
            "ctrl-alt-dlete",
            "ctrl-ctrl-a",
            "-",
            "+",
            "f13",
        ]
    )
    | texts
)
KEYS_IN = {"text": texts | st.text(max_size=300), "keys": st.lists(COMBOS, max_size=34)}


@pytest.fixture(scope="module")
def typing(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys-fuzz")
    host = FakeHost(tmp)
    host.manager.keyboards.sleep = lambda _s: None
    with engine_client(f"sqlite:///{tmp / 'engine.db'}", keys_rate_limit=10**9) as api:
        setup_cluster(api, host)
        ok(api.post("/api/v1/vms", json={**VM, "name": "fz-typing", "keyboard_layout": "de"}), 201)
        ok(api.post("/api/v1/vms/fz-typing/start"))
        yield api
        api.post("/api/v1/vms/fz-typing/stop")
    host.stop()


@FUZZ
@given(body=bodies(KEYS_IN))
@example(body={"text": "\x00"})
@example(body={"text": "a\r\nb\rc"})
@example(body={"text": "x" * 4096})
@example(body={"keys": ["ctrl-alt-delete"] * 32})
@example(body={"keys": [""]})
@example(body={"text": NASTY[5], "keys": None})
def test_keys(typing, body):
    reply = send(typing, "POST", "/api/v1/vms/fz-typing/keys", body)
    out = check_refusal(reply, body, KeysIn)
    if reply.status_code == 200:
        assert out["vm"] == "fz-typing" and out["keyboard_layout"] == "de"
        if isinstance(body, dict) and isinstance(body.get("text"), str):
            assert out["characters"] == len(body["text"].replace("\r\n", "\n"))
            assert out["keys_sent"] == out["characters"]
        else:
            assert out["keys_sent"] == len(body["keys"])
    else:
        assert reply.status_code in (400, 422), reply.text
