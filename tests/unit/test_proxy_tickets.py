"""Proxy tickets, pure: signing, verification and every way a ticket must be refused."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from multiconsole.proxy import tickets
from multiconsole.proxy.tickets import (
    MAX_TOKEN_LENGTH,
    Claims,
    TicketError,
    issue,
    load_or_create_key,
    sign,
    verify,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fresh(**overrides) -> tuple[str, Claims]:
    args = {
        "key": KEY,
        "vm": "9f0c7c3e-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
        "console": "vnc",
        "host": "10.0.0.5",
        "port": 5901,
        "user": "admin@internal",
        "now": NOW,
    }
    args.update(overrides)
    return issue(**args)


def reason(token: str, key: bytes = KEY, now: float = NOW + 1) -> str:
    with pytest.raises(TicketError) as err:
        verify(token, key, now)
    return err.value.reason


def test_round_trip():
    token, claims = fresh()
    assert verify(token, KEY, NOW + 1) == claims
    assert claims.v == 1 and claims.console == "vnc" and claims.port == 5901
    assert claims.exp - claims.iat == 120
    assert claims.user == "admin@internal" and claims.host == "10.0.0.5"
    assert len(unb64(claims.jti)) == 16  # 128 random bits
    assert claims.jti_prefix == claims.jti[:8]


def test_every_ticket_has_its_own_jti():
    jtis = {fresh()[1].jti for _ in range(200)}
    assert len(jtis) == 200


def test_sign_takes_a_dict_and_the_token_is_compact():
    _, claims = fresh()
    token = sign(claims.to_dict(), KEY)
    assert verify(token, KEY, NOW) == claims
    payload, mac = token.split(".")
    assert "=" not in token and len(mac) == 43
    assert json.loads(unb64(payload)) == claims.to_dict()


def test_validity_window():
    token, claims = fresh(ttl=120)
    assert verify(token, KEY, claims.iat) == claims
    assert verify(token, KEY, claims.exp - 0.001) == claims
    assert reason(token, now=claims.exp) == "expired"
    assert reason(token, now=claims.exp + 3600) == "expired"


def test_clock_skew_tolerated_then_not_yet_valid():
    token, claims = fresh()
    assert verify(token, KEY, claims.iat - 5) == claims  # proxy clock 5 s behind the engine's
    assert reason(token, now=claims.iat - 5.5) == "not yet valid"
    assert reason(token, now=claims.iat - 3600) == "not yet valid"


def test_tampered_payload():
    token, claims = fresh()
    payload, mac = token.split(".")
    data = json.loads(unb64(payload))
    for field, value in (("port", 22), ("host", "10.0.0.6"), ("exp", claims.exp + 3600), ("vm", "other")):
        altered = b64(json.dumps({**data, field: value}, separators=(",", ":"), sort_keys=True).encode())
        assert reason(f"{altered}.{mac}") == "bad signature", field
    # one flipped character of the payload
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    assert reason(f"{flipped}.{mac}") == "bad signature"


def test_tampered_signature():
    token, _ = fresh()
    payload, mac = token.split(".")
    for i in (0, 20, 41):
        bad = mac[:i] + ("A" if mac[i] != "A" else "B") + mac[i + 1 :]
        assert reason(f"{payload}.{bad}") == "bad signature"
    assert reason(f"{payload}.{'A' * 43}") == "bad signature"


def test_wrong_key():
    token, _ = fresh()
    assert reason(token, key=OTHER_KEY) == "bad signature"
    forged, _ = fresh(key=OTHER_KEY)
    assert reason(forged) == "bad signature"


def test_signed_but_wrong_version_or_shape():
    _, claims = fresh()
    good = claims.to_dict()
    assert reason(sign({**good, "v": 2}, KEY)) == "wrong version"
    assert reason(sign({k: v for k, v in good.items() if k != "v"}, KEY)) == "wrong version"
    assert reason(sign({**good, "console": "spice"}, KEY)) == "wrong console"
    for bad in (
        {**good, "port": 0},
        {**good, "port": 65536},
        {**good, "port": "5901"},
        {**good, "port": True},
        {**good, "exp": good["iat"]},
        {**good, "iat": 1.5},
        {**good, "host": ""},
        {**good, "user": None},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "host"},
    ):
        assert reason(sign(bad, KEY)) == "malformed", bad
    # signed JSON that is not an object, or not JSON at all
    for payload in (b"[1,2]", b"not json", b"\xff\xfe"):
        p = b64(payload)
        token = f"{p}.{b64(tickets._mac(p, KEY))}"
        assert reason(token) in ("malformed", "wrong version"), payload


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "abc.",
        ".abc",
        "a.b.c",
        "abc.def",
        "abc." + "A" * 42,
        "abc." + "A" * 44,
        "abc+/." + "A" * 43,
        "abc." + "A" * 42 + "=",
        "abc==." + "A" * 43,
        "ab c." + "A" * 43,
        "\x00." + "A" * 43,
        "é." + "A" * 43,
        "A" * (MAX_TOKEN_LENGTH + 1) + "." + "A" * 43,
        "A" * 100_000,
    ],
)
def test_garbage_is_malformed(token):
    assert reason(token) == "malformed"


def test_oversized_tokens_refused_before_decoding(monkeypatch):
    called = []
    monkeypatch.setattr(tickets, "_b64decode", lambda text: called.append(text) or b"")
    assert reason("A" * 10_000_000 + "." + "A" * 43) == "malformed"
    assert reason("A" * (MAX_TOKEN_LENGTH + 1)) == "malformed"
    assert called == []


def test_not_a_string():
    for token in (None, b"abc.def", 12):
        assert reason(token) == "malformed"  # type: ignore[arg-type]


def test_issue_refuses_nonsense():
    with pytest.raises(ValueError):
        fresh(console="spice")
    with pytest.raises(ValueError):
        fresh(port=0)
    with pytest.raises(ValueError):
        fresh(ttl=0)
    with pytest.raises(ValueError):
        fresh(key=b"short")
    with pytest.raises(ValueError):
        fresh(user="")


def test_key_file_created_once_0600_and_shared(tmp_path):
    path = tmp_path / "sub" / "proxy-ticket.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["proxy-ticket.key"]  # no temporary left


def test_key_file_race_agrees_on_one_key(tmp_path):
    path = tmp_path / "race.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8


def test_key_file_refused_when_short_or_world_readable(tmp_path):
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 8)
    short.chmod(0o600)
    too_short = rf"^{re.escape(str(short))}: a proxy ticket key has at least 32 bytes$"
    with pytest.raises(ValueError, match=too_short):
        load_or_create_key(short)
    public = tmp_path / "public.key"
    public.write_bytes(os.urandom(32))
    public.chmod(0o644)
    with pytest.raises(PermissionError):
        load_or_create_key(public)


# --- exact edges (each one a comparison a mutant could move) ---------------------------------


def _signed(**changes) -> str:
    """A token signed by KEY with these claims changed (not checked by `issue`)."""
    _, claims = fresh()
    return sign({**claims.to_dict(), **changes}, KEY)


def test_sign_refuses_a_token_over_the_limit_itself():
    # Claims that verify() would refuse anyway: sign() must still not produce an oversized token.
    with pytest.raises(ValueError, match=rf"^a ticket is at most {MAX_TOKEN_LENGTH} characters$"):
        sign({"user": "u" * 2000}, KEY)


def test_token_of_exactly_the_limit():
    # The largest token sign() makes is accepted by verify()'s shape check (and no larger one).
    _, claims = fresh()
    base = {**claims.to_dict(), "user": ""}
    token, filler = "", 0
    while True:
        try:
            token = sign({**base, "user": "u" * (filler + 1)}, KEY)
        except ValueError:
            break
        filler += 1
    assert len(token) == MAX_TOKEN_LENGTH  # base64url reaches every length but 4k+1: 2048 too
    assert reason(token) == "malformed"  # the shape passed; the claim (user too long) did not
    with pytest.raises(ValueError):
        sign({**base, "user": "u" * (filler + 1)}, KEY)


def test_key_lengths():
    token, claims = fresh(key=bytes(16))
    assert verify(token, bytes(16), NOW + 1) == claims
    with pytest.raises(ValueError, match=r"^a ticket key is at least 16 bytes$"):
        sign(claims, bytes(15))
    with pytest.raises(ValueError, match=r"^a ticket key is at least 16 bytes$"):
        verify(token, bytes(15), NOW + 1)
    with pytest.raises(ValueError):
        sign(claims, "a" * 32)  # type: ignore[arg-type]  # a str is not a key


@pytest.mark.parametrize("field", ["jti", "vm", "host", "user"])
def test_text_claim_lengths(field):
    assert verify(_signed(**{field: "x"}), KEY, NOW + 1)
    assert verify(_signed(**{field: "x" * 255}), KEY, NOW + 1)
    assert reason(_signed(**{field: ""})) == "malformed"
    assert reason(_signed(**{field: "x" * 256})) == "malformed"
    assert reason(_signed(**{field: 5})) == "malformed"


@pytest.mark.parametrize("port, ok", [(0, False), (1, True), (65535, True), (65536, False), (-1, False)])
def test_port_edges(port, ok):
    token = _signed(port=port)
    if ok:
        assert verify(token, KEY, NOW + 1).port == port
        assert fresh(port=port)[1].port == port
    else:
        assert reason(token) == "malformed"
        with pytest.raises(ValueError, match=r"^port must be 1\.\.65535$"):
            fresh(port=port)


def test_integer_claims_must_be_integers():
    assert reason(_signed(port=True)) == "malformed"
    assert reason(_signed(port="5901")) == "malformed"
    assert reason(_signed(iat=float(NOW))) == "malformed"
    assert reason(_signed(exp=None)) == "malformed"


def test_expiry_must_follow_issue():
    assert verify(_signed(iat=int(NOW), exp=int(NOW) + 1), KEY, NOW)
    assert reason(_signed(iat=int(NOW), exp=int(NOW)), now=NOW) == "malformed"
    assert reason(_signed(iat=int(NOW), exp=int(NOW) - 1), now=NOW) == "malformed"


def test_ttl_edges():
    token, claims = fresh(ttl=1)
    assert claims.exp == claims.iat + 1 == int(NOW) + 1
    assert verify(token, KEY, NOW) == claims
    assert reason(token, now=NOW + 1) == "expired"  # exp itself is no longer valid
    for ttl in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"^ttl must be a positive number of seconds$"):
            fresh(ttl=ttl)
    assert fresh()[1].exp - fresh()[1].iat == tickets.DEFAULT_TTL == 120


def test_clock_skew_edge():
    token, _ = fresh(now=NOW + tickets.CLOCK_SKEW)
    assert verify(token, KEY, NOW)  # exactly CLOCK_SKEW ahead: tolerated
    token, _ = fresh(now=NOW + tickets.CLOCK_SKEW + 1)
    assert reason(token, now=NOW) == "not yet valid"


def test_wrong_console_and_version():
    assert reason(_signed(console="spice")) == "wrong console"
    assert reason(_signed(v=2)) == "wrong version"
    assert reason(sign(["not", "a", "dict"], KEY)) == "malformed"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^console must be one of \['vnc'\]$"):
        fresh(console="spice")


def test_issue_uses_the_clock_when_not_told(monkeypatch):
    monkeypatch.setattr(tickets.time, "time", lambda: NOW + 0.9)
    token, claims = issue(KEY, "vm", "vnc", "h", 1, "u")
    assert claims.iat == int(NOW)
    assert verify(token, KEY, NOW + 1) == claims


def test_issue_refuses_claims_verify_would_refuse():
    with pytest.raises(ValueError, match=r"^cannot issue this ticket: malformed claims$"):
        fresh(user="")


def test_jti_prefix_and_fresh_jti():
    _, claims = fresh()
    assert claims.jti_prefix == claims.jti[:8] and len(claims.jti_prefix) == 8
    assert len(unb64(claims.jti)) == 16


def test_default_key_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MULTICONSOLE_DATA", str(tmp_path / "data"))
    assert tickets.default_key_path() == tmp_path / "data" / "proxy-ticket.key"


def test_key_file_in_a_new_directory_tree(tmp_path):
    path = tmp_path / "a" / "b" / "proxy.key"
    key = load_or_create_key(path)
    assert len(key) == tickets.KEY_BYTES == 32
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["proxy.key"]  # no temporary file left


def test_key_file_readable_by_group_is_accepted_by_others_not(tmp_path):
    path = tmp_path / "proxy.key"
    key = load_or_create_key(path)
    os.chmod(path, 0o640)
    assert load_or_create_key(path) == key
    os.chmod(path, 0o604)
    others = rf"^{re.escape(str(path))}: the proxy ticket key must not be readable by others \(chmod 600\)$"
    with pytest.raises(PermissionError, match=others):
        load_or_create_key(path)
    os.chmod(path, 0o601)
    with pytest.raises(PermissionError):
        load_or_create_key(path)


def test_a_token_one_over_the_limit_is_malformed_before_its_mac_is_checked():
    # 2,049 characters of the right shape (the regex alone would take a longer payload).
    token = "A" * (MAX_TOKEN_LENGTH + 1 - 44) + "." + "A" * 43
    assert len(token) == MAX_TOKEN_LENGTH + 1
    assert reason(token) == "malformed"
    token = "A" * (MAX_TOKEN_LENGTH - 44) + "." + "A" * 43
    assert reason(token) == "bad signature"  # the limit itself passes the shape check


def test_tokens_are_deterministic_whatever_the_order_of_claims():
    _, claims = fresh()
    forward = claims.to_dict()
    backward = dict(reversed(list(forward.items())))
    assert sign(forward, KEY) == sign(backward, KEY) == sign(claims, KEY)


def test_ticket_error_and_claims_values():
    err = TicketError("expired")
    assert str(err) == "expired" and err.reason == "expired"
    _, claims = fresh()
    with pytest.raises(AttributeError):
        claims.port = 1  # type: ignore[misc]


def test_key_file_path_as_text(tmp_path):
    path = str(tmp_path / "k" / "proxy.key")
    assert load_or_create_key(path) == load_or_create_key(Path(path))
