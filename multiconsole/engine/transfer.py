"""Images reach a host without shared storage: the engine pushes what the host lacks.

Before a VM starts, the engine asks the host's agent which of the VM's images its cache
holds (the agent re-checks their sha256), then streams each missing one over the same
mutual TLS as JSON-RPC (PUT /images/<sha256>); the agent keeps it only if it hashes right.
Never called with a database connection held: a transfer may take minutes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import httpx

from multiconsole.engine.broker import AgentCallError, AgentClient
from multiconsole.engine.errors import Conflict, EngineError, HostUnreachable

log = logging.getLogger(__name__)
NO_SUCH_METHOD = -32601


@dataclass(frozen=True)
class ImageFile:
    name: str
    sha256: str
    path: Path
    size: int


def send_missing(client: AgentClient, host_name: str, files: list[ImageFile]) -> list[str]:
    """Make sure the host's cache has every file; returns the names of those sent."""
    if not files:
        return []
    try:
        present = set(client.call("Host.getImages", sha256s=[f.sha256 for f in files])["present"])
    except AgentCallError as err:
        if err.code == NO_SUCH_METHOD:
            raise Conflict("host", f"host {host_name} cannot receive images (its agent is older)") from None
        raise EngineError("host", f"host {host_name} could not list its images: {err.message}", 502) from None
    except httpx.HTTPError as err:
        raise HostUnreachable("host", f"host {host_name} did not answer: {err}") from None
    sent = []
    for f in files:
        if f.sha256 in present:
            continue
        if not f.path.is_file():
            raise EngineError("image", f"image {f.name!r} is missing from the engine's store ({f.path})", 500)
        log.info("sending image=%s sha256=%s bytes=%d host=%s", f.name, f.sha256, f.size, host_name)
        try:
            client.put_image(f.sha256, str(f.path), f.size)
        except AgentCallError as err:
            raise EngineError(
                "image", f"host {host_name} refused image {f.name!r}: {err.message}", 502
            ) from None
        except httpx.HTTPError as err:
            raise HostUnreachable("host", f"host {host_name} did not take image {f.name!r}: {err}") from None
        sent.append(f.name)
    return sent
