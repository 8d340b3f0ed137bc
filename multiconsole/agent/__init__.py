"""The host agent: runs VMs through libvirt and serves the engine over JSON-RPC."""
