"""The browser console: noVNC in Debian's Chromium through the engine's websocket proxy, over
https + wss (the engine's own certificate, pinned in Chromium) and over plain http + ws
(--insecure), and the proxy's refusals against a real VM."""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx
import pytest
import websockets
from PIL import Image

from multiconsole.engine.app import Settings, make_app
from multiconsole.proxy import tickets
from tests.conftest import artifacts_dir
from tests.engine.conftest import ADMIN
from tests.integration.clients import colours
from tests.support.servers import ThreadServer, free_port

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(params=["https", "http"])
def engine(request, tmp_path, agent_proc):
    """The engine with its proxy: https + wss on its own certificate, or plain http + ws."""
    port, proxy_port = free_port(), free_port()
    scheme = request.param
    origin = f"{scheme}://127.0.0.1:{port}"
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor_interval=1,
            proxy_port=proxy_port,
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(tmp_path / "pki"),
            allowed_origins=[origin],
            https=scheme == "https",
        )
    )
    tls = app.state.tls
    served_tls = {"ssl_certfile": str(tls.cert_path), "ssl_keyfile": str(tls.key_path)} if tls else {}
    server = ThreadServer(app, port=port, **served_tls).start()
    # Our CA only, verification on: what the CLI does.
    app.state.client_tls = ssl.create_default_context(cafile=app.state.ca.cert_path) if tls else None
    http = httpx.Client(base_url=server.url, auth=ADMIN, timeout=60, verify=app.state.client_tls or True)
    reply = http.post("/api/v1/clusters", json={"name": "c"})
    assert reply.status_code == 201, reply.text
    reply = http.post(
        "/api/v1/hosts",
        json={"name": "h", "address": "127.0.0.1", "port": agent_proc.port, "cluster": "c", "insecure": True},
    )
    assert reply.status_code == 201, reply.text
    names = []

    def start(name: str, **extra) -> dict:
        body = {"name": name, "cluster": "c", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}
        assert http.post("/api/v1/vms", json={**body, **extra}).status_code == 201
        names.append(name)
        reply = http.post(f"/api/v1/vms/{name}/start")
        assert reply.status_code == 200, reply.text
        return reply.json()

    yield server, http, start, app, tmp_path
    for name in names:
        http.post(f"/api/v1/vms/{name}/stop")
    http.close()
    server.stop()


def test_novnc_in_chromium_shows_the_vm_screen(engine):
    from playwright.sync_api import sync_playwright

    server, http, start, app, tmp_path = engine
    name = f"it-web-{time.monotonic_ns() % 10**6}"
    start(name)
    time.sleep(2)  # let the BIOS draw
    args = list(CHROMIUM_ARGS)
    if app.state.tls is not None:
        # Trust exactly the engine's certificate (page and wss), not any certificate at all.
        args.append(f"--ignore-certificate-errors-spki-list={app.state.tls.spki_sha256_b64()}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        try:
            page = browser.new_context(
                http_credentials={"username": ADMIN[0], "password": ADMIN[1]},
                viewport={"width": 900, "height": 600},
            ).new_page()
            sockets, blocked = [], []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
            page.goto(f"{server.url}/console/{name}")
            page.wait_for_selector("body[data-state=connected]", timeout=30000)
            assert blocked == [], blocked  # the page's policy lets noVNC and its websocket through
            assert sockets and all(u.startswith("wss://" if app.state.tls else "ws://") for u in sockets)
            canvas = page.locator("#screen canvas")
            canvas.wait_for(timeout=10000)
            shot = tmp_path / "canvas.png"
            deadline = time.monotonic() + 20
            while True:
                canvas.screenshot(path=str(shot))
                if colours(shot) > 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            page.screenshot(path=str(artifacts_dir() / f"browser-console-page-{server.url[:5]}.png"))
        finally:
            browser.close()
    (artifacts_dir() / f"browser-console-canvas-{server.url[:5]}.png").write_bytes(shot.read_bytes())
    with Image.open(shot) as im:
        assert im.width > 300 and im.height > 150
    assert colours(shot) > 2, "the noVNC canvas is blank"
    events = [e["event"] for e in http.get("/api/v1/audit", params={"vm": name}).json()]
    assert "browser console opened" in events and "console ticket issued" in events


async def _open(url: str, origin: str | None, tls: ssl.SSLContext | None = None) -> bytes:
    headers = {"Origin": origin} if origin else {}
    kw = {"ssl": tls} if url.startswith("wss://") else {}
    async with websockets.connect(
        url, additional_headers=headers, subprotocols=["binary"], open_timeout=10, compression=None, **kw
    ) as ws:
        return await asyncio.wait_for(ws.recv(), 10)


@pytest.mark.parametrize("engine", ["https"], indirect=True)
def test_proxy_refusals_against_real_vms(engine):
    server, http, start, app, _tmp = engine
    origin = server.url
    tls = app.state.client_tls

    def _refused(url: str, origin: str | None) -> bool:
        try:
            asyncio.run(_open(url, origin, tls))
        except websockets.exceptions.InvalidStatus as err:
            return err.response.status_code == 403
        return False

    a = start(f"it-pa-{time.monotonic_ns() % 10**6}")
    b = start(f"it-pb-{time.monotonic_ns() % 10**6}")
    ticket = http.post(f"/api/v1/vms/{a['name']}/consoles/vnc/proxy-ticket", json={}).json()
    url = ticket["url"]
    assert url.startswith("wss://")
    # The ticket works once: the VNC banner arrives through the proxy.
    assert asyncio.run(_open(url, origin, tls)).startswith(b"RFB ")
    assert _refused(url, origin), "a replayed ticket was accepted"

    fresh = http.post(f"/api/v1/vms/{a['name']}/consoles/vnc/proxy-ticket", json={}).json()["url"]
    assert _refused(fresh, "https://evil.example:8443"), "a wrong Origin was accepted"
    assert _refused(fresh, origin.replace("https://", "http://")), "the engine's http Origin was accepted"
    assert _refused(fresh, None), "a missing Origin was accepted"
    base, token = fresh.rsplit("/", 1)
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert _refused(f"{base}/{forged}", origin), "an altered ticket was accepted"
    # The URL cannot choose the target: the claims name it, and only them.
    key = app.state.proxy_key
    b_port = next(c["port"] for c in b["consoles"] if c["protocol"] == "vnc")
    a_claims = tickets.verify(token, key, time.time())
    # A genuine signature on a ticket for VM A but VM B's port: the engine's check refuses it.
    wrong_port, _ = tickets.issue(key, a_claims.vm, "vnc", a_claims.host, b_port, "admin@internal")
    assert _refused(f"{base}/{wrong_port}", origin), "VM A's ticket reached VM B's port"
    other_host, _ = tickets.issue(key, a_claims.vm, "vnc", "127.0.0.1", 22, "admin@internal")
    assert _refused(f"{base}/{other_host}", origin), "a ticket reached a port that is no VM's console"
    expired, _ = tickets.issue(
        key, a_claims.vm, "vnc", a_claims.host, a_claims.port, "admin@internal", ttl=1, now=time.time() - 10
    )
    assert _refused(f"{base}/{expired}", origin), "an expired ticket was accepted"
    events = [e["event"] for e in http.get("/api/v1/audit", params={"vm": a["name"]}).json()]
    assert events.count("browser console opened") == 1
    assert "browser console refused" in events


def test_chromium_trusts_only_the_pinned_engine_certificate(tmp_path):
    """The SPKI pin is what makes Chromium accept the engine (no global "ignore errors"):
    without it the page does not load."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor=False,
            proxy_port=None,
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(tmp_path / "pki"),
            https=True,
        )
    )
    tls = app.state.tls
    server = ThreadServer(app, ssl_certfile=str(tls.cert_path), ssl_keyfile=str(tls.key_path)).start()
    try:
        with sync_playwright() as p:
            pinned = f"--ignore-certificate-errors-spki-list={tls.spki_sha256_b64()}"
            for args, loads in ((CHROMIUM_ARGS, False), ([*CHROMIUM_ARGS, pinned], True)):
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
                try:
                    page = browser.new_page()
                    try:
                        reply = page.goto(f"{server.url}/ui/login", timeout=15000)
                        loaded = reply is not None and reply.ok
                    except PlaywrightError as err:
                        assert "ERR_CERT" in str(err), err
                        loaded = False
                    assert loaded == loads, args
                finally:
                    browser.close()
    finally:
        server.stop()
