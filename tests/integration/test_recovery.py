"""kill -9 the agent while VMs run: a new agent finds them, same stats, tickets work."""

from __future__ import annotations

from tests.integration.clients import capture_screen, spice_capture, vnc_capture
from tests.integration.conftest import AgentProcess, Vms, ports, ticket


def test_recovery_after_kill_9(log_dir, system_conn, tmp_path):
    first = AgentProcess(log_dir).start()
    client = first.client()
    vms = Vms(client)
    try:
        created = [vms.create(vms.params("spice", "vnc")) for _ in range(3)]
        before = {s["vmId"]: s for s in client.call("Host.getAllVmStats")}
        first.kill(9)
        assert first.proc.returncode == -9

        # The VMs outlived their agent.
        for s in created:
            assert system_conn.lookupByUUIDString(s["vmId"]).isActive()

        second = AgentProcess(log_dir, port=first.port).start()
        try:
            with second.client() as fresh:
                listed = {v["vmId"]: v["status"] for v in fresh.call("Host.getVMList")}
                assert {s["vmId"] for s in created} <= set(listed)
                after = {s["vmId"]: s for s in fresh.call("Host.getAllVmStats")}
                for s in created:
                    old, new = before[s["vmId"]], after[s["vmId"]]
                    for key in (
                        "status",
                        "vmName",
                        "displayInfo",
                        "displayType",
                        "displayPort",
                        "displaySecurePort",
                        "displayIp",
                        "additionalDisplayPort",
                    ):
                        assert new[key] == old[key], key
                # Tickets still work, by type and on the first console.
                s = created[0]
                p = ports(s)
                ticket(fresh, s["vmId"], "vnc", "recovr01")
                assert capture_screen(vnc_capture, p["vnc"], "recovr01", tmp_path / "v.png") == 0
                fresh.call(
                    "VM.setTicket",
                    vmID=s["vmId"],
                    password="recovr02",
                    ttl=60,
                    existingConnAction="disconnect",
                    params={},
                )
                assert capture_screen(spice_capture, p["spice"], "recovr02", tmp_path / "s.png") == 0
                vms.client = fresh
                vms.destroy_all()
        finally:
            second.kill(15)
    finally:
        first.kill(9)
        client.close()
