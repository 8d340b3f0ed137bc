"""Typing into a VM: text or named keys sent to its keyboard through its host's agent.

The agent translates with its host's QEMU keymaps (the VM's keyboard layout), so the whole
text is first checked there — a character the layout cannot type is refused before any key
is sent — and then sent in chunks, each call well inside the agent call timeout. No database
connection is held while the host types: `target` reads what is needed, the caller commits,
then `send` talks to the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy.orm import Session

from multiconsole.domain import keys
from multiconsole.domain.display import DisplayConfig
from multiconsole.engine.broker import AgentCallError, AgentClient
from multiconsole.engine.db import Host, Vm
from multiconsole.engine.errors import Conflict, EngineError, HostUnreachable
from multiconsole.engine.hosts import Agents
from multiconsole.wire.errors import ErrorCode

MAX_TEXT = 4096  # characters per request
CHUNK = 200  # characters per agent call (about 6 s of typing)
KEY_STATES = ("Up", "PoweringUp")


@dataclass(frozen=True)
class Target:
    """What sending needs, read from the database before any host is called."""

    vm_id: str
    vm_name: str
    host_name: str
    layout: str
    agent: AgentClient


def target(session: Session, agents: Agents, vm: Vm) -> Target:
    if vm.status not in KEY_STATES or vm.host_id is None:
        raise Conflict("status", f"VM {vm.name!r} is {vm.status}: keys can be typed only while it runs")
    host = session.get(Host, vm.host_id)
    if host is None:
        raise Conflict("status", f"VM {vm.name!r} has no host")
    layout = DisplayConfig.from_json(vm.display).keyboard_layout or keys.DEFAULT_LAYOUT
    return Target(vm.id, vm.name, host.name, layout, agents.for_host(host))


def check_keys(combos: list[str]) -> None:
    """Refuse names that are no key on any layout (the host then checks the VM's layout)."""
    for i, combo in enumerate(combos):
        try:
            keys.check_combo_syntax(combo)
        except keys.BadKeyName as err:
            raise EngineError(f"keys[{i}]", str(err)) from None


def chunks(text: str, size: int = CHUNK) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Sent:
    characters: int = 0  # of the text, typed so far
    keys: int = 0  # key presses sent so far


def send(t: Target, text: str | None, combos: list[str] | None, sent: Sent) -> Sent:
    """Check everything on the host, then type it; `sent` tells how far it got if it fails."""
    if text is not None:
        text = text.replace("\r\n", "\n")
        _call(t, {"text": text, "check": True})
        for part in chunks(text):
            sent.keys += _call(t, {"text": part})["sent"]
            sent.characters += len(part)
    else:
        sent.keys += _call(t, {"keys": combos})["sent"]
    return sent


def _call(t: Target, params: dict[str, Any]) -> dict:
    try:
        return t.agent.call("VM.sendKeys", vmID=t.vm_id, keyMap=t.layout, **params)
    except AgentCallError as err:
        raise _refusal(t, err) from None
    except httpx.HTTPError as err:
        raise HostUnreachable("host", f"host {t.host_name} did not answer: {err}") from None


def _refusal(t: Target, err: AgentCallError) -> EngineError:
    data = err.data if isinstance(err.data, dict) else {}
    if err.code == ErrorCode.INVALID_PARAMS and data.get("field"):
        if data["field"] == "keyMap":
            return Conflict("keyboard_layout", f"VM {t.vm_name!r}: {data.get('reason', err.message)}")
        return EngineError(str(data["field"]), str(data.get("reason", err.message)))
    if err.code in (ErrorCode.VM_NOT_RUNNING, ErrorCode.NO_SUCH_VM):
        return Conflict("status", f"VM {t.vm_name!r} is not running on host {t.host_name}")
    if err.code == ErrorCode.METHOD_NOT_FOUND:
        return Conflict("host", f"host {t.host_name} cannot type into VMs (its agent is older)")
    return EngineError("host", f"host {t.host_name} could not type: {err.message}", 502)


def audit_detail(text: str | None, combos: list[str] | None, sent: Sent, layout: str) -> str:
    """What was typed, without the text itself (it may be a password)."""
    if text is not None:
        total = len(text.replace("\r\n", "\n"))
        done = "" if sent.characters == total else f" of {total}"
        return f"typed {sent.characters}{done} characters (layout {layout})"
    return f"pressed {', '.join(combos or [])} (layout {layout})"
