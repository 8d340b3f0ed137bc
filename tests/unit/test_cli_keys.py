"""`multiconsole console VM --type/--type-file/--key` against a real engine and a test-driver agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_cli import cli, cli_json, cluster, isolated, mc, stack  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(
    not Path("/usr/share/qemu/keymaps/de").is_file(), reason="QEMU's keymaps are missing (qemu-system-data)"
)


def test_type_text_a_file_and_keys(stack, cluster, tmp_path):  # noqa: F811
    cli(stack, "vm", "create", "typist", "--cluster", "c1", "--console", "vnc", "--keyboard-layout", "de")
    cli(stack, "vm", "start", "typist")
    out = cli(stack, "console", "typist", "--type", "Grüße").stdout
    assert "typed 5 characters into typist (layout de)" in out
    f = tmp_path / "script.txt"
    f.write_text("echo hi\nexit\n")
    reply = cli_json(stack, "console", "typist", "--type-file", str(f))
    assert reply["characters"] == 13 and reply["keys_sent"] == 13
    out = cli(stack, "console", "typist", "--key", "ctrl-alt-delete", "--key", "ctrl-alt-f2").stdout
    assert "typed ctrl-alt-delete, ctrl-alt-f2 into typist" in out
    audit = json.loads(cli(stack, "audit", "--vm", "typist", "--event", "keys typed", "--json").stdout)
    assert len(audit) == 3 and not any("Grüße" in e["detail"] for e in audit)


def test_refusals(stack, cluster, tmp_path):  # noqa: F811
    cli(stack, "vm", "create", "typist-us", "--cluster", "c1", "--console", "vnc")
    cli(stack, "vm", "start", "typist-us")
    result = cli(stack, "console", "typist-us", "--type", "Straße", ok=False)
    assert result.exit_code == 1
    assert "error: text: cannot type 'ß' (U+00DF) with keyboard layout en-us" in result.stderr
    result = cli(stack, "console", "typist-us", "--key", "ctrl-alt-dlete", ok=False)
    assert result.exit_code == 1 and "'dlete' is not a key name" in result.stderr
    result = mc("console", "typist-us", "--type", "a", "--key", "enter")
    assert result.exit_code == 2 and "choose one of --type" in result.stderr
    result = mc("console", "typist-us", "--type", "a", "--vv", "x.vv")
    assert result.exit_code == 2
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9")
    result = mc("console", "typist-us", "--type-file", str(bad))
    assert result.exit_code == 2 and "is not UTF-8 text" in result.stderr
    result = mc("console", "typist-us", "--type-file", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "cannot read" in result.stderr
