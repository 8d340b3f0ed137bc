"""An old host for tests: speaks only the legacy display protocol (before cluster level 3.4).

It refuses graphics devices in vmCreate, reports only displayType / displayPort /
displaySecurePort / displayIp, and lists no cluster levels in its capabilities.
Run it as a process: python -m tests.support.legacy_agent --libvirt-uri URI --listen HOST:PORT
"""

from __future__ import annotations

import argparse

from multiconsole.agent.server import serve
from multiconsole.agent.vms import AgentError, VmManager
from multiconsole.wire.errors import ErrorCode

LEGACY_STATS = ("displayType", "displayPort", "displaySecurePort", "displayIp")
NEW_STATS = ("displayInfo", "additionalDisplayPort", "consoleClients")


class LegacyVmManager(VmManager):
    def create(self, vm_id: str, params: dict) -> dict:
        devices = params.get("devices") if isinstance(params, dict) else None
        for i, dev in enumerate(devices or []):
            if isinstance(dev, dict) and dev.get("type") == "graphics":
                raise AgentError(
                    ErrorCode.INVALID_PARAMS,
                    f"devices[{i}].type: unknown device type 'graphics'",
                    {"field": f"devices[{i}].type", "reason": "unknown device type 'graphics'"},
                )
        return super().create(vm_id, params)

    def set_ticket(self, vm_id, gtype, password, ttl, existing_conn_action="disconnect"):
        if gtype is not None:  # VM.updateDevice for graphics did not exist yet
            raise AgentError(ErrorCode.METHOD_NOT_FOUND, "no such method: VM.updateDevice")
        return super().set_ticket(vm_id, gtype, password, ttl, existing_conn_action)

    def _stats(self, dom, xml):
        stats = super()._stats(dom, xml)
        for key in NEW_STATS:
            stats.pop(key, None)
        return stats

    def capabilities(self) -> dict:
        caps = super().capabilities()
        for key in ("graphicsDevices", "legacyDisplay", "clusterLevels"):
            caps.pop(key, None)
        return caps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--libvirt-uri", default="qemu:///system")
    parser.add_argument("--listen", default="127.0.0.1:54322")
    parser.add_argument("--virt-type", default="qemu")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    serve(LegacyVmManager(args.libvirt_uri, virt_type=args.virt_type), host, int(port))


if __name__ == "__main__":
    main()
