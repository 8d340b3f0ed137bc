"""The websocket proxy in front of a real QEMU VNC server (qemu:///system), end to end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
import uuid
from datetime import UTC, datetime, timedelta

import libvirt
import pytest
from lxml import etree
from vncdotool.rfb import _vnc_des, des_encrypt
from websockets.asyncio.client import ClientConnection, connect

from multiconsole.proxy import ProxyServer, issue

pytestmark = [
    pytest.mark.integration,
    # vncdotool's DES helper uses cryptography's TripleDES, deprecated there (not ours to fix)
    pytest.mark.filterwarnings("ignore:TripleDES has been moved"),
]

ORIGIN = "http://127.0.0.1:8080"
PASSWORD = "prx12345"


def domain_xml(name: str) -> str:
    valid_to = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <graphics type='vnc' autoport='yes' passwd='{PASSWORD}' passwdValidTo='{valid_to}'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='vga'/></video>
  </devices>
</domain>"""


def vnc_port(dom: libvirt.virDomain) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        port = etree.fromstring(dom.XMLDesc(0)).xpath("string(devices/graphics[@type='vnc']/@port)")
        if port and int(port) > 0:
            return int(port)
        time.sleep(0.05)
    raise AssertionError("no VNC port in the live XML")


@pytest.fixture
def vnc_vm(system_conn):
    name = f"proxytest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    dom = system_conn.defineXML(domain_xml(name))
    try:
        dom.create()
        yield dom, vnc_port(dom)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


class Reader:
    """Exact-length reads over websocket messages (a VNC message may span frames)."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.buffer = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += await asyncio.wait_for(self.ws.recv(decode=False), 10)
        data, self.buffer = bytes(self.buffer[:n]), self.buffer[n:]
        return data


async def vnc_handshake(ws: ClientConnection, password: str) -> tuple[int, int] | None:
    """RFB 3.8 through the websocket: VNC authentication, then ServerInit's (width, height)."""
    r = Reader(ws)
    assert await r.read(12) == b"RFB 003.008\n"
    await ws.send(b"RFB 003.008\n")
    (count,) = await r.read(1)
    types = await r.read(count)
    assert 2 in types, types  # VNC authentication: the console is password-locked
    await ws.send(bytes([2]))
    challenge = await r.read(16)
    await ws.send(des_encrypt(_vnc_des(password), challenge))
    (result,) = struct.unpack(">I", await r.read(4))
    if result != 0:
        return None
    await ws.send(b"\x01")  # ClientInit, shared
    width, height = struct.unpack(">HH", await r.read(4))
    return width, height


def test_novnc_path_through_the_proxy_to_qemu(vnc_vm, system_conn):
    dom, port = vnc_vm
    vm_id = dom.UUIDString()
    events = []

    def still_that_vm(claims) -> bool:
        """What the engine does: the port in the ticket is still this VM's VNC port."""
        live = system_conn.lookupByUUIDString(claims.vm)
        return live.isActive() and vnc_port(live) == claims.port

    async def scenario():
        key = os.urandom(32)
        proxy = ProxyServer(
            key,
            [ORIGIN],
            "127.0.0.1",
            0,
            target_check=still_that_vm,
            on_session=lambda e, c, p: events.append(e),
        )
        await proxy.start()
        try:
            url = f"ws://127.0.0.1:{proxy.port}/"

            async def session(password: str):
                ticket, _ = issue(key, vm_id, "vnc", "127.0.0.1", port, "admin@internal")
                async with connect(
                    url + ticket, origin=ORIGIN, subprotocols=["binary"], compression=None
                ) as ws:
                    assert ws.subprotocol == "binary"
                    return await vnc_handshake(ws, password)

            size = await session(PASSWORD)
            assert size is not None and size[0] >= 640 and size[1] >= 400, size
            assert await session("wrong123") is None  # QEMU still decides on the password
            for _ in range(100):
                if events.count("closed") == 2:
                    break
                await asyncio.sleep(0.05)
            assert events == ["opened", "closed", "opened", "closed"]
        finally:
            await proxy.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
