"""Has a tiny-linux guest booted to its shell? Read on its serial port (ttyS0).

The demo guest (scripts/build-guest.sh) runs a root shell on ttyS0 with the prompt
"NAME:CWD# ". libvirt gives the VM's <serial> a pty on this host; QEMU drops the guest's
output while nobody holds that pty open, so the shell is woken with Enter until its
prompt shows. Only for a VM on this machine (the demo's host is).
"""

from __future__ import annotations

import os
import re
import select
import time
import tty

from lxml import etree


def prompt_pattern(vm_name: str) -> re.Pattern[bytes]:
    """The guest shell's prompt, e.g. b"demo:/# " (the VM's name comes from SMBIOS)."""
    return re.compile(re.escape(vm_name.encode()) + rb":/[^\s#]*# ")


def serial_pty(domain_xml: str) -> str | None:
    """The host end of the guest's ttyS0 in a running domain's XML (None without one)."""
    source = etree.fromstring(domain_xml.encode()).find("devices/serial/source")
    return None if source is None else source.get("path")


def wait_for_prompt(pty_path: str, vm_name: str, seconds: float) -> bool:
    """Press Enter on the serial port every second until the shell prompt shows (True),
    or `seconds` pass (False)."""
    prompt = prompt_pattern(vm_name)
    fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)  # no echo of what the guest prints back into it
        seen = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            os.write(fd, b"\r")
            end = min(deadline, time.monotonic() + 1)
            while (left := end - time.monotonic()) > 0:
                if select.select([fd], [], [], left)[0]:
                    try:
                        seen = (seen + os.read(fd, 65536))[-4096:]
                    except (BlockingIOError, OSError):
                        pass
                    if prompt.search(seen):
                        return True
        return False
    finally:
        os.close(fd)


def wait_for_shell(vm_id: str, vm_name: str, seconds: float, uri: str = "qemu:///system") -> bool | None:
    """Wait until the local VM `vm_id` shows its shell prompt on ttyS0: True when it did,
    False when it did not within `seconds`, None when its serial port cannot be read here."""
    import libvirt

    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return None
    try:
        path = serial_pty(conn.lookupByUUIDString(vm_id).XMLDesc())
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()
    if not path:
        return None
    try:
        return wait_for_prompt(path, vm_name, seconds)
    except OSError:
        return None
