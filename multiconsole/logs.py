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


class MaskSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = SECRET_RE.sub(r"\1\2***", message)
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
