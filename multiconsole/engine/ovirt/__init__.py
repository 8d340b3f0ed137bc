"""oVirt's REST API v4 for VMs, templates and graphics consoles, under /ovirt-engine.

Enough of it that ovirt-engine-sdk-python 4.x works unchanged (reference §6): SSO login,
clusters, hosts, VMs, templates and their graphics consoles, in oVirt's XML. Every rule
and permission is the engine's own (service, consoles, permissions); this package only
speaks the other dialect.
"""

from multiconsole.engine.ovirt.routes import router

__all__ = ["router"]
