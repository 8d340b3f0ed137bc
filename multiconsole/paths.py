"""Where multiconsole keeps its files."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(create: bool = True) -> Path:
    """$MULTICONSOLE_DATA, else /var/lib/multiconsole for root, else ~/.local/share/multiconsole;
    made unless `create` is False (a client only looking for files there)."""
    env = os.environ.get("MULTICONSOLE_DATA")
    if env:
        path = Path(env)
    elif os.geteuid() == 0:
        path = Path("/var/lib/multiconsole")
    else:
        path = Path.home() / ".local/share/multiconsole"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
