"""multiconsole.guest_shell: the demo's check that its guest reached the shell, on a real pty
pair standing in for the one libvirt gives a VM's serial port."""

from __future__ import annotations

import os
import threading
import time

from multiconsole.guest_shell import prompt_pattern, serial_pty, wait_for_prompt


def test_the_prompt_names_the_vm_and_nothing_else():
    p = prompt_pattern("demo-1.x")
    assert p.search(b"\r\ndemo-1.x:/root# ")
    assert p.search(b"demo-1.x:/# ")
    assert not p.search(b"demo-1yx:/root# ")  # the dot is a dot
    assert not p.search(b"other:/root# ")
    assert not p.search(b"Try:  echo $((6*7))\r\n")


def test_serial_pty_from_the_domain_xml():
    xml = "<domain><devices><serial type='pty'><source path='/dev/pts/7'/></serial></devices></domain>"
    assert serial_pty(xml) == "/dev/pts/7"
    assert serial_pty("<domain><devices/></domain>") is None


def guest(fd: int, boot_seconds: float, name: str) -> None:
    """A guest that says nothing until it has 'booted', then answers Enter with its prompt."""
    ready = time.monotonic() + boot_seconds
    end = ready + 10
    while time.monotonic() < end:
        try:
            data = os.read(fd, 100)
        except OSError:
            return
        if b"\r" in data and time.monotonic() >= ready:
            os.write(fd, f"\r\n{name}:/root# ".encode())
            return
        os.write(fd, b"[    1.234] booting\r\n")


def test_waits_until_the_guest_answers_with_its_prompt():
    qemu_end, pty = os.openpty()  # QEMU holds the master; libvirt names the slave
    try:
        t = threading.Thread(target=guest, args=(qemu_end, 1.5, "vm1"), daemon=True)
        t.start()
        start = time.monotonic()
        assert wait_for_prompt(os.ttyname(pty), "vm1", 20)
        assert 1.4 < time.monotonic() - start < 10
    finally:
        os.close(qemu_end)
        os.close(pty)


def test_gives_up_after_its_time_when_no_prompt_comes():
    qemu_end, pty = os.openpty()
    try:
        t = threading.Thread(target=guest, args=(qemu_end, 60, "vm1"), daemon=True)
        t.start()
        start = time.monotonic()
        assert not wait_for_prompt(os.ttyname(pty), "vm1", 2)
        assert time.monotonic() - start < 5
    finally:
        os.close(qemu_end)
        os.close(pty)
