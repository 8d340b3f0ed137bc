"""Structured, quiet logging: one key=value line per event, warnings only by default.

A last filter masks anything that looks like a secret, in case a message carries one.
"""

from __future__ import annotations

import logging
import re
import sys

SECRET_RE = re.compile(
    r"(?i)\b(passw(?:or)?d|passwd|ticket|token|secret)(['\"]?\s*[=:]\s*['\"]?)([^\s,'\"}&]+)"
)

# HTTP credentials: "Authorization: Basic dXNlcjpwdw==", "Bearer <token>".
AUTH_RE = re.compile(
    r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{4,}"
    r"|(?i:\b(authorization)(['\"]?\s*[=:]\s*['\"]?)(?:\w+\s+)?[^\s,'\"}&]+)"
)


def _auth_mask(m: re.Match) -> str:
    if m.group(1):
        return f"{m.group(1)}{m.group(2)}***"
    return f"{m.group(3)}{m.group(4)}***"


class MaskSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = AUTH_RE.sub(_auth_mask, SECRET_RE.sub(r"\1\2***", message))
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def setup(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("time=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")
    )
    handler.addFilter(MaskSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
