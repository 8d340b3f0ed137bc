"""Text -> key presses on QEMU's real keymap files (domain/keys.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiconsole.domain.keys import (
    ALT,
    ALTGR,
    CTRL,
    RETURN,
    SHIFT,
    TAB,
    BadKeyName,
    KeymapError,
    Untypable,
    check_combo_syntax,
    keysym_names,
    parse_keymap,
    press_combo,
    type_text,
)

KEYMAPS = Path("/usr/share/qemu/keymaps")
needs_keymaps = pytest.mark.skipif(
    not (KEYMAPS / "de").is_file(), reason="QEMU's keymaps are missing (Debian package qemu-system-data)"
)


def real(layout: str):
    return parse_keymap(layout, (KEYMAPS / layout).read_text(), lambda n: (KEYMAPS / n).read_text())


def codes(presses) -> list[tuple[int, ...]]:
    return [p.codes for p in presses]


@needs_keymaps
def test_en_us_upper_case_digits_and_punctuation():
    us = real("en-us")
    got = codes(type_text("Hello, World! 1+1=2 [ok]", us))
    assert got[:3] == [(SHIFT, 0x23), (0x12,), (0x26,)]  # H e l
    assert got[5] == (0x33,)  # comma
    assert got[12] == (SHIFT, 0x02)  # ! is shift+1
    assert got[15] == (SHIFT, 0x0D)  # + is shift+=
    assert got[17] == (0x0D,)  # =
    assert got[20] == (0x1A,) and got[-1] == (0x1B,)  # [ ]
    assert len(got) == len("Hello, World! 1+1=2 [ok]")


@needs_keymaps
def test_de_shift_altgr_and_umlauts():
    de = real("de")
    got = codes(type_text("Grüße 1+1=2 [ok] @z", de))
    assert got[0] == (SHIFT, 0x22)  # G
    assert got[2] == (0x1A,)  # ü has its own key
    assert got[3] == (0x0C,)  # ß too (where en-us has minus)
    assert got[7] == (0x1B,)  # + unshifted on de
    assert got[9] == (SHIFT, 0x0B)  # = is shift+0
    assert got[12] == (ALTGR, 0x09)  # [ is AltGr+8
    assert got[15] == (ALTGR, 0x0A)  # ]
    assert got[17] == (ALTGR, 0x10)  # @ is AltGr+Q
    assert got[18] == (0x15,)  # z and y swap places


@needs_keymaps
def test_shift_and_altgr_together():
    # de: shift+AltGr+3 is the pound sign.
    assert codes(type_text("£", real("de"))) == [(SHIFT, ALTGR, 0x04)]


@needs_keymaps
def test_untypable_is_refused_by_name():
    with pytest.raises(Untypable) as err:
        type_text("Straße", real("en-us"))
    assert str(err.value) == "cannot type 'ß' (U+00DF) with keyboard layout en-us"
    assert err.value.position == 4
    with pytest.raises(Untypable, match=r"'\\x07' \(U\+0007\)"):
        type_text("bell\x07", real("en-us"))


@needs_keymaps
def test_newlines_and_tabs():
    us = real("en-us")
    assert codes(type_text("a\nb\r\nc\rd\te", us)) == [
        (0x1E,), (RETURN,), (0x30,), (RETURN,), (0x2E,), (RETURN,), (0x20,), (TAB,), (0x12,)
    ]  # fmt: skip


@needs_keymaps
def test_every_real_keymap_parses_and_types_letters():
    for path in sorted(KEYMAPS.iterdir()):
        if path.name in ("ar", "et", "ja", "ru", "th", "mk"):
            continue  # non-Latin layouts ("et" is Amharic in QEMU 7.2) type their own scripts
        km = real(path.name)
        assert len(type_text("abc ABC 123", km)) == 11, path.name


@needs_keymaps
def test_named_keys_and_combinations():
    us, de = real("en-us"), real("de")
    assert press_combo("ctrl-alt-delete", us).codes == (CTRL, ALT, 0xD3)
    assert press_combo("Ctrl+Alt+Del", us).codes == (CTRL, ALT, 0xD3)
    assert press_combo("ctrl-alt-f2", us).codes == (CTRL, ALT, 0x3C)
    assert press_combo("alt-f4", us).codes == (ALT, 0x3E)
    assert press_combo("enter", us).codes == (RETURN,)
    assert press_combo("esc", us).codes == (0x01,)
    assert press_combo("f12", us).codes == (0x58,)
    assert press_combo("up", us).codes == (0xC8,)
    assert press_combo("ctrl-z", us).codes == (CTRL, 0x2C)
    assert press_combo("ctrl-z", de).codes == (CTRL, 0x15)  # the layout places letters
    assert press_combo("ctrl--", us).codes == (CTRL, 0x0C)
    for bad in ("ctrl-alt-dlete", "ctrl-ctrl-a", "hyper-a", "", "ctrl-", "-ctrl"):
        with pytest.raises(BadKeyName):
            press_combo(bad, us)
    with pytest.raises(BadKeyName, match="not on keyboard layout en-us"):
        press_combo("ctrl-ß", us)


def test_parser_formats():
    text = "\n".join(
        [
            "# a comment",
            "map 0x407",
            "include base",
            "a 0x1e",
            "A 0x1e shift",
            "q 0x10 addupper",
            "at 0x10 altgr",
            "KP_1 0x4f numlock",
            "Multi_key 0x0 inhibit",
            "Return 0x1c localstate",
            "a 0x99",  # a second key for a: the first one stays
        ]
    )
    km = parse_keymap("test", text, lambda name: "exclam 0x02 shift" if name == "base" else "")
    assert km.keys["a"].code == 0x1E and km.keys["A"].shift
    assert km.keys["Q"].shift and km.keys["Q"].code == 0x10
    assert km.keys["at"].altgr
    assert km.keys["exclam"].shift
    assert "KP_1" not in km.keys and "Multi_key" not in km.keys
    for bad in ("a", "a zz", "a 0x1000", "include"):
        with pytest.raises(KeymapError):
            parse_keymap("bad", bad)
    with pytest.raises(KeymapError, match="nested"):
        parse_keymap("loop", "include loop", lambda name: "include loop")


def test_keysym_names():
    assert keysym_names("a")[0] == "a"
    assert keysym_names("!")[0] == "exclam"
    assert keysym_names("ä")[0] == "adiaeresis"
    assert keysym_names("ß")[0] == "ssharp"
    assert keysym_names("ü")[0] == "udiaeresis"
    assert keysym_names("[")[0] == "bracketleft"
    assert keysym_names("€")[0] == "EuroSign"
    assert keysym_names("\u2030") == ("U2030",)


def test_combo_syntax_without_a_keymap():
    check_combo_syntax("ctrl-alt-delete")
    check_combo_syntax("ctrl-c")
    with pytest.raises(BadKeyName):
        check_combo_syntax("ctrl-alt-dlete")
