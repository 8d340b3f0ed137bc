"""One shared libvirt connection with its event loop thread, reopened if it drops."""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger(__name__)

_loop_started = False
_loop_lock = threading.Lock()


def _start_event_loop() -> None:
    """libvirt's default event loop on a daemon thread; must precede the first open()."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


# libvirt prints every error to stderr unless told otherwise; we report them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class Connection:
    """Holds the connection; `on_open` re-registers callbacks after a reconnect."""

    def __init__(self, uri: str, on_open=None):
        self.uri = uri
        self._on_open = on_open
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        _start_event_loop()

    def get(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt connection lost, reopening uri=%s", self.uri)
            self._conn = libvirt.open(self.uri)
            if self._on_open:
                self._on_open(self._conn)
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
