"""The agent's recovery of its VMs when it starts, on a libvirt that others use too."""

from __future__ import annotations

import libvirt

from multiconsole.agent.vms import VmManager


class VanishedDomain:
    """A domain listed a moment ago and removed since (another agent's VM, stopped)."""

    def UUIDString(self) -> str:  # noqa: N802 (libvirt's name)
        return "ffe44794-f836-40ea-881c-e03b2dbc8966"

    def isActive(self) -> int:  # noqa: N802
        raise libvirt.libvirtError("Domain not found: no domain with matching uuid")


def test_a_domain_removed_while_the_agent_starts_is_skipped(test_uri, monkeypatch):
    manager = VmManager(test_uri)
    try:
        monkeypatch.setattr(manager, "_our_domains", lambda: [(VanishedDomain(), "<domain/>")])
        assert manager.recover() == []  # the agent starts; before, it exited with libvirtError
    finally:
        manager.conn.close()
