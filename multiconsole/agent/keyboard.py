"""Typing into a VM through libvirt's send-key, with QEMU's keymap files of this host.

Everything is translated (and refused, naming the character) before the first key is sent.
Each character is one send-key call (modifiers held in the same call), paced so that the
guest's keyboard controller and console lose nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt

from multiconsole.domain import keys

KEYMAP_DIR = Path("/usr/share/qemu/keymaps")
HOLD_MS = 15  # how long each key is held down
GAP_S = 0.012  # pause after each release, before the next key
MAX_TEXT = 500  # characters typed per call (about 15 s): well inside the engine's call timeout
MAX_CHECK = 8192  # characters per call that only checks (nothing is typed: it is quick)
MAX_KEYS = 32  # named keys/combinations per call


class KeyboardError(ValueError):
    """A layout, text or key name that cannot be typed (field, reason)."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


class Keyboards:
    """Parsed keymaps of this host (read once each) and one typist per VM at a time."""

    def __init__(self, keymap_dir: Path = KEYMAP_DIR, sleep: Callable[[float], None] = time.sleep):
        self.keymap_dir = keymap_dir
        self.sleep = sleep
        self._keymaps: dict[str, keys.Keymap] = {}
        self._lock = threading.Lock()
        self._typing: dict[str, threading.Lock] = {}

    def keymap(self, layout: str) -> keys.Keymap:
        if not keys.LAYOUT_RE.fullmatch(layout):
            raise KeyboardError("keyMap", f"{layout!r} is not a keyboard layout such as 'en-us'")
        with self._lock:
            km = self._keymaps.get(layout)
        if km is not None:
            return km
        path = self.keymap_dir / layout
        try:
            text = path.read_text(encoding="utf-8")
            km = keys.parse_keymap(layout, text, self._include)
        except FileNotFoundError:
            raise KeyboardError(
                "keyMap", f"this host has no keyboard layout {layout!r} (QEMU's keymaps in {self.keymap_dir})"
            ) from None
        except (OSError, UnicodeDecodeError, keys.KeymapError) as err:
            raise KeyboardError("keyMap", f"keyboard layout {layout!r} is unreadable: {err}") from None
        with self._lock:
            self._keymaps[layout] = km
        return km

    def _include(self, name: str) -> str:
        if not keys.LAYOUT_RE.fullmatch(name) and name != "common":
            raise keys.KeymapError(f"includes {name!r}, which is not a keymap name")
        return (self.keymap_dir / name).read_text(encoding="utf-8")

    def presses(
        self, layout: str, text: str | None, combos: list[str] | None, limit: int = MAX_TEXT
    ) -> list[keys.KeyPress]:
        """Translate all of it, or raise KeyboardError naming the first thing that cannot be typed."""
        if (text is None) == (combos is None):
            raise KeyboardError("text", "give either text or keys, not both or neither")
        km = self.keymap(layout)
        if text is not None:
            if len(text) > limit:
                raise KeyboardError("text", f"at most {limit} characters per call")
            try:
                return keys.type_text(text, km)
            except keys.Untypable as err:
                raise KeyboardError("text", str(err)) from None
        assert combos is not None
        if not combos or len(combos) > MAX_KEYS:
            raise KeyboardError("keys", f"give 1..{MAX_KEYS} key names")
        out = []
        for i, combo in enumerate(combos):
            try:
                out.append(keys.press_combo(combo, km))
            except keys.BadKeyName as err:
                raise KeyboardError(f"keys[{i}]", str(err)) from None
        return out

    def send(self, vm_id: str, dom: libvirt.virDomain, presses: list[keys.KeyPress]) -> int:
        """Press each in turn; returns how many were sent. A libvirtError names how far it got
        through `SendFailed`."""
        with self._lock:
            lock = self._typing.setdefault(vm_id, threading.Lock())
        with lock:  # two pastes into one VM must not interleave
            for done, press in enumerate(presses):
                try:
                    dom.sendKey(libvirt.VIR_KEYCODE_SET_QNUM, HOLD_MS, list(press.codes), len(press.codes), 0)
                except libvirt.libvirtError as err:
                    raise SendFailed(done, len(presses), err) from None
                self.sleep(HOLD_MS / 1000 + GAP_S)
        return len(presses)


class SendFailed(Exception):
    def __init__(self, done: int, total: int, err: libvirt.libvirtError):
        super().__init__(f"after {done} of {total} keys: {err.get_error_message()}")
        self.done, self.total, self.error = done, total, err
