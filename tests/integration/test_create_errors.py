"""A VM that libvirt or QEMU refuses leaves nothing behind."""

from __future__ import annotations

import pytest

from multiconsole.engine.broker import AgentCallError


def test_start_failure_undefines_the_domain(agent, vms, system_conn):
    params = vms.params("spice", "vnc")
    params["devices"][1]["specParams"] = {"displayNetwork": "no-such-network"}
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.create", vmID=params["vmId"], vmParams=params)
    assert err.value.code == 100
    assert "starting the VM" in err.value.message and "no-such-network" in err.value.message
    assert params["vmName"] not in [d.name() for d in system_conn.listAllDomains()]
    assert params["vmId"] not in [v["vmId"] for v in agent.call("Host.getVMList")]


def test_duplicate_name_and_id_are_refused(agent, vms):
    params = vms.params("vnc")
    vms.create(params)
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.create", vmID=params["vmId"], vmParams=params)
    assert err.value.code == 4
    other = vms.params("vnc")
    other["vmName"] = params["vmName"]
    with pytest.raises(AgentCallError) as err:
        agent.call("VM.create", vmID=other["vmId"], vmParams=other)
    assert err.value.code == 4 and params["vmName"] in err.value.message


def test_foreign_domains_are_not_ours(agent, system_conn):
    """A domain defined outside the agent is neither listed nor destroyable through it."""
    xml = (
        "<domain type='qemu'><name>it-foreign</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    dom = system_conn.defineXML(xml)
    try:
        assert dom.UUIDString() not in [v["vmId"] for v in agent.call("Host.getVMList")]
        with pytest.raises(AgentCallError) as err:
            agent.call("VM.destroy", vmID=dom.UUIDString())
        assert err.value.code == 1
        assert system_conn.lookupByName("it-foreign")
    finally:
        dom.undefine()
