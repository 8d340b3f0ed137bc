"""Text and named keys -> key presses for a VM's keyboard layout (pure: no I/O).

A guest reads scancodes, not characters: to type "@" on a German layout the host must press
AltGr+Q. QEMU's keymap files (``/usr/share/qemu/keymaps/<layout>``, made by ``qemu-keymap``)
say, for each X11 keysym name, which key and modifiers produce it::

    # comment
    map 0x407              (a header: ignored)
    include common         (older files: another keymap's lines first)
    a 0x1e
    A 0x1e shift
    at 0x10 altgr
    KP_1 0x4f numlock      (needs NumLock on: never used to type)
    q 0x10 addupper        (older files: Q is shift+q too)

Codes are QEMU's key numbers ("qnum": PC set-1 scancodes, 0xe0-prefixed keys as 0x80|code),
libvirt's ``VIR_KEYCODE_SET_QNUM``. One `KeyPress` is one libvirt send-key call: its keys are
pressed in order (modifiers first), held together, and released together.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Fixed keys (physical positions, the same on every layout).
SHIFT = 0x2A
CTRL = 0x1D
ALT = 0x38
ALTGR = 0xB8  # right Alt: what layouts read as ISO_Level3_Shift
SUPER = 0xDB
RETURN = 0x1C
TAB = 0x0F
MAX_CODES = 16  # libvirt's VIR_DOMAIN_SEND_KEY_MAX_KEYS
MAX_CODE = 0xFF
DEFAULT_LAYOUT = "en-us"
LAYOUT_RE = re.compile(r"^[a-z]{2,3}(-[a-z]{2,8})?$")

MODIFIERS = {
    "ctrl": CTRL,
    "control": CTRL,
    "alt": ALT,
    "shift": SHIFT,
    "altgr": ALTGR,
    "super": SUPER,
    "win": SUPER,
    "meta": SUPER,
}
NAMED_KEYS = {
    "esc": 0x01,
    "escape": 0x01,
    "enter": RETURN,
    "return": RETURN,
    "tab": TAB,
    "space": 0x39,
    "backspace": 0x0E,
    "delete": 0xD3,
    "del": 0xD3,
    "insert": 0xD2,
    "ins": 0xD2,
    "home": 0xC7,
    "end": 0xCF,
    "pageup": 0xC9,
    "pgup": 0xC9,
    "pagedown": 0xD1,
    "pgdn": 0xD1,
    "up": 0xC8,
    "down": 0xD0,
    "left": 0xCB,
    "right": 0xCD,
    "capslock": 0x3A,
    "numlock": 0x45,
    "scrolllock": 0x46,
    "sysrq": 0x54,
    "print": 0x54,
    "printscreen": 0x54,
    "pause": 0xC6,
    "menu": 0xDD,
    **{f"f{n}": 0x3A + n for n in range(1, 11)},
    "f11": 0x57,
    "f12": 0x58,
}

# Character -> X11 keysym names (keysymdef.h; the first name is the usual one). Characters
# not listed are tried as "U<hex>", the name X gives every other Unicode character.
_ASCII_NAMES = {
    " ": "space",
    "!": "exclam",
    '"': "quotedbl",
    "#": "numbersign",
    "$": "dollar",
    "%": "percent",
    "&": "ampersand",
    "'": "apostrophe",
    "(": "parenleft",
    ")": "parenright",
    "*": "asterisk",
    "+": "plus",
    ",": "comma",
    "-": "minus",
    ".": "period",
    "/": "slash",
    ":": "colon",
    ";": "semicolon",
    "<": "less",
    "=": "equal",
    ">": "greater",
    "?": "question",
    "@": "at",
    "[": "bracketleft",
    "\\": "backslash",
    "]": "bracketright",
    "^": "asciicircum",
    "_": "underscore",
    "`": "grave",
    "{": "braceleft",
    "|": "bar",
    "}": "braceright",
    "~": "asciitilde",
}
# Latin-1, U+00A0..U+00FF in order (keysym value = code point).
_LATIN1 = (
    "nobreakspace exclamdown cent sterling currency yen brokenbar section diaeresis copyright "
    "ordfeminine guillemotleft notsign hyphen registered macron degree plusminus twosuperior "
    "threesuperior acute mu paragraph periodcentered cedilla onesuperior masculine guillemotright "
    "onequarter onehalf threequarters questiondown Agrave Aacute Acircumflex Atilde Adiaeresis "
    "Aring AE Ccedilla Egrave Eacute Ecircumflex Ediaeresis Igrave Iacute Icircumflex Idiaeresis "
    "ETH Ntilde Ograve Oacute Ocircumflex Otilde Odiaeresis multiply Oslash Ugrave Uacute "
    "Ucircumflex Udiaeresis Yacute THORN ssharp agrave aacute acircumflex atilde adiaeresis aring "
    "ae ccedilla egrave eacute ecircumflex ediaeresis igrave iacute icircumflex idiaeresis eth "
    "ntilde ograve oacute ocircumflex otilde odiaeresis division oslash ugrave uacute ucircumflex "
    "udiaeresis yacute thorn ydiaeresis"
).split()
# Latin-2 and a few others that keymaps name rather than write as U<hex>.
_OTHER_NAMES = {
    "Ą": "Aogonek", "˘": "breve", "Ł": "Lstroke", "Ľ": "Lcaron", "Ś": "Sacute", "Š": "Scaron",
    "Ş": "Scedilla", "Ť": "Tcaron", "Ź": "Zacute", "Ž": "Zcaron", "Ż": "Zabovedot",
    "ą": "aogonek", "˛": "ogonek", "ł": "lstroke", "ľ": "lcaron", "ś": "sacute", "ˇ": "caron",
    "š": "scaron", "ş": "scedilla", "ť": "tcaron", "ź": "zacute", "˝": "doubleacute",
    "ž": "zcaron", "ż": "zabovedot", "Ŕ": "Racute", "Ă": "Abreve", "Ĺ": "Lacute", "Ć": "Cacute",
    "Č": "Ccaron", "Ę": "Eogonek", "Ě": "Ecaron", "Ď": "Dcaron", "Đ": "Dstroke", "Ń": "Nacute",
    "Ň": "Ncaron", "Ő": "Odoubleacute", "Ř": "Rcaron", "Ů": "Uring", "Ű": "Udoubleacute",
    "Ţ": "Tcedilla", "ŕ": "racute", "ă": "abreve", "ĺ": "lacute", "ć": "cacute", "č": "ccaron",
    "ę": "eogonek", "ě": "ecaron", "ď": "dcaron", "đ": "dstroke", "ń": "nacute", "ň": "ncaron",
    "ő": "odoubleacute", "ř": "rcaron", "ů": "uring", "ű": "udoubleacute", "ţ": "tcedilla",
    "˙": "abovedot", "ı": "idotless", "Ğ": "Gbreve", "ğ": "gbreve", "İ": "Iabovedot",
    "€": "EuroSign", "Œ": "OE", "œ": "oe", "Ÿ": "Ydiaeresis",
}  # fmt: skip
_ALIASES = {"«": ("guillemetleft",), "»": ("guillemetright",), "º": ("ordmasculine",)}


def keysym_names(char: str) -> tuple[str, ...]:
    """The X11 keysym names that may stand for `char` in a keymap, most usual first."""
    cp = ord(char)
    if char.isascii() and char.isalnum():
        names: tuple[str, ...] = (char,)
    elif char in _ASCII_NAMES:
        names = (_ASCII_NAMES[char],)
    elif 0xA0 <= cp <= 0xFF:
        names = (_LATIN1[cp - 0xA0], *_ALIASES.get(char, ()))
    elif char in _OTHER_NAMES:
        names = (_OTHER_NAMES[char],)
    else:
        names = ()
    return (*names, f"U{cp:04X}")


# --- keymap files -----------------------------------------------------------------------


class KeymapError(ValueError):
    """A keymap file that cannot be read as one."""


@dataclass(frozen=True)
class Key:
    code: int
    shift: bool = False
    altgr: bool = False

    def codes(self) -> tuple[int, ...]:
        return (*((SHIFT,) if self.shift else ()), *((ALTGR,) if self.altgr else ()), self.code)


@dataclass(frozen=True)
class Keymap:
    name: str
    keys: dict[str, Key]  # keysym name -> the first key (in file order) that types it

    def key_for(self, char: str) -> Key | None:
        for name in keysym_names(char):
            key = self.keys.get(name)
            if key is not None:
                return key
        return None


def parse_keymap(name: str, text: str, include: Callable[[str], str] | None = None) -> Keymap:
    """A keymap from the text of a QEMU keymap file; `include(name)` gives another file's text."""
    keys: dict[str, Key] = {}
    _parse_into(keys, name, text, include, depth=0)
    return Keymap(name, keys)


def _parse_into(keys: dict[str, Key], name: str, text: str, include, depth: int) -> None:
    if depth > 4:
        raise KeymapError(f"keymap {name}: includes nested too deep")
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split() if not raw.lstrip().startswith("#") else []
        if not words or words[0] == "map":
            continue
        if words[0] == "include":
            if len(words) != 2 or include is None:
                raise KeymapError(f"keymap {name} line {number}: cannot include {' '.join(words[1:])!r}")
            _parse_into(keys, words[1], include(words[1]), include, depth + 1)
            continue
        if len(words) < 2:
            raise KeymapError(f"keymap {name} line {number}: a keysym without a key code")
        try:
            code = int(words[1], 16)
        except ValueError:
            raise KeymapError(f"keymap {name} line {number}: {words[1]!r} is not a key code") from None
        flags = set(words[2:])
        if flags & {"numlock", "inhibit"}:
            continue  # keypad digits need NumLock on; "inhibit" keys must not be sent
        if not 0 < code <= MAX_CODE:
            raise KeymapError(f"keymap {name} line {number}: key code {words[1]} is out of range")
        key = Key(code, "shift" in flags, "altgr" in flags)
        keys.setdefault(words[0], key)
        if "addupper" in flags:
            keys.setdefault(words[0].upper(), Key(code, True, key.altgr))


# --- text and named keys ----------------------------------------------------------------


class Untypable(ValueError):
    """A character the layout has no key for (nothing is sent)."""

    def __init__(self, char: str, layout: str, position: int):
        super().__init__(f"cannot type {char!r} (U+{ord(char):04X}) with keyboard layout {layout}")
        self.char = char
        self.position = position


class BadKeyName(ValueError):
    """A key combination that does not name keys (e.g. "ctrl-alt-dlete")."""


@dataclass(frozen=True)
class KeyPress:
    codes: tuple[int, ...]  # pressed in order, held together, released together


def type_text(text: str, keymap: Keymap) -> list[KeyPress]:
    """One key press per character; newlines (\\n, \\r\\n, \\r) are Return, tabs Tab.

    Raises Untypable for the first character the layout cannot type."""
    presses = []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for position, char in enumerate(text):
        if char == "\n":
            presses.append(KeyPress((RETURN,)))
            continue
        if char == "\t":
            presses.append(KeyPress((TAB,)))
            continue
        key = keymap.key_for(char) if char.isprintable() or char == "\xa0" else None
        if key is None:
            raise Untypable(char, keymap.name, position)
        presses.append(KeyPress(key.codes()))
    return presses


def press_combo(spec: str, keymap: Keymap) -> KeyPress:
    """A named key or combination: "enter", "f2", "ctrl-alt-delete", "alt-f4", "ctrl-c",
    "ctrl+shift+t". Modifiers: ctrl, alt, shift, altgr, super (win, meta)."""
    parts = spec.strip().lower().replace("+", "-").split("-")
    if spec.strip().endswith(("--", "-+", "+-", "++")) or spec.strip() in ("-", "+"):
        parts = [*[p for p in parts if p], spec.strip()[-1]]  # ctrl-- / ctrl++: the key itself
    if not parts or any(not p for p in parts):
        raise BadKeyName(f"{spec!r} is not a key combination such as 'ctrl-alt-delete'")
    *mods, last = parts
    codes: list[int] = []
    for m in mods:
        code = MODIFIERS.get(m)
        if code is None:
            raise BadKeyName(f"{spec!r}: {m!r} is not a modifier (ctrl, alt, shift, altgr, super)")
        if code in codes:
            raise BadKeyName(f"{spec!r}: {m!r} is named twice")
        codes.append(code)
    if last in NAMED_KEYS:
        key_codes: tuple[int, ...] = (NAMED_KEYS[last],)
    elif last in MODIFIERS:
        key_codes = (MODIFIERS[last],)
    elif len(last) == 1:
        key = keymap.key_for(last)
        if key is None:
            raise BadKeyName(f"{spec!r}: {last!r} is not on keyboard layout {keymap.name}")
        key_codes = tuple(c for c in key.codes() if c not in codes)
    else:
        raise BadKeyName(
            f"{spec!r}: {last!r} is not a key name (such as enter, esc, tab, f1..f12, up, delete, "
            "or one character)"
        )
    if key_codes[-1] in codes:
        raise BadKeyName(f"{spec!r}: {last!r} is named twice")
    return KeyPress((*codes, *key_codes))


def check_combo_syntax(spec: str) -> None:
    """Raise BadKeyName unless `spec` could name keys on some layout (for callers without keymaps)."""
    press_combo(spec, _ANY_LAYOUT)


class _AnyLayout(Keymap):
    def key_for(self, char: str) -> Key | None:
        return Key(0x39) if char.isprintable() and not char.isspace() else None


_ANY_LAYOUT = _AnyLayout("any", {})
