"""The web UI in Debian's Chromium (headless, Playwright) against a running engine and an agent
on real QEMU: log in, the New VM dialog, start, consoles and their launcher (.vv download,
noVNC in the browser), the engine's rules explained inline, the next-start badge, a user
without console permission, templates and a VM made from one. One VM is started, and reused.
A second test takes over a console another user's remote-viewer really holds.

Screenshots of every page and dialog go to artifacts/web/.
"""

from __future__ import annotations

import configparser
import time

import httpx
import pytest

from multiconsole.engine.app import Settings, make_app
from multiconsole.engine.db import VmConsole
from tests.conftest import artifacts_dir
from tests.engine.conftest import ADMIN
from tests.integration.clients import VirtualScreen, colours, spice_capture, stop
from tests.integration.test_browser_console import CHROMIUM_ARGS
from tests.support.servers import ThreadServer, free_port

VIEWER = ("it-web-viewer", "viewer-password")


@pytest.fixture
def engine(tmp_path, agent_proc):
    port, proxy_port = free_port(), free_port()
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor_interval=1,
            proxy_port=proxy_port,
            proxy_key_file=str(tmp_path / "proxy.key"),
            allowed_origins=[f"http://127.0.0.1:{port}"],
        )
    )
    server = ThreadServer(app, port=port).start()
    http = httpx.Client(base_url=server.url, auth=ADMIN, timeout=60)

    def ok(reply, status=201):
        assert reply.status_code == status, reply.text
        return reply.json() if reply.content else None

    ok(http.post("/api/v1/clusters", json={"name": "c"}))
    ok(http.post("/api/v1/clusters", json={"name": "old", "compat_level": "3.3"}))
    host = {"name": "h", "address": "127.0.0.1", "port": agent_proc.port, "cluster": "c", "insecure": True}
    ok(http.post("/api/v1/hosts", json=host))
    # A user who may run the cluster's VMs but not open their consoles.
    ok(http.post("/api/v1/users", json={"name": VIEWER[0], "password": VIEWER[1]}))
    perm = {"user": VIEWER[0], "role": "vm_operator", "object_type": "cluster", "object": "c"}
    ok(http.post("/api/v1/permissions", json=perm))
    yield server, http, app
    for vm in http.get("/api/v1/vms").json():
        if vm["status"] != "Down":
            http.post(f"/api/v1/vms/{vm['name']}/stop")
    http.close()
    server.stop()


def test_web_ui_in_chromium(engine):
    from playwright.sync_api import expect, sync_playwright

    server, http, app = engine
    shots = artifacts_dir() / "web"
    shots.mkdir(parents=True, exist_ok=True)
    n = time.monotonic_ns() % 10**6
    vm, bad, tpl, from_tpl = f"it-web-{n}", f"it-web-bad-{n}", f"it-web-tpl-{n}", f"it-web-from-{n}"

    def exists(kind: str, name: str) -> bool:
        return http.get(f"/api/v1/{kind}/{name}").status_code == 200

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(20000)
            # What the Content-Security-Policy blocks shows as a console message (none may).
            blocked: list[str] = []
            context.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))

            # --- log in -------------------------------------------------------------------
            page.goto(server.url)
            expect(page).to_have_url(f"{server.url}/ui/login?next=%2Fui%2Fvms")
            page.get_by_label("User name").fill(ADMIN[0])
            page.get_by_label("Password").fill("not the password")
            page.get_by_role("button", name="Log in").click()
            expect(page.locator("#login-error")).to_have_text("wrong user name or password")
            page.get_by_label("Password").fill(ADMIN[1])
            page.screenshot(path=str(shots / "01-login.png"))
            page.get_by_role("button", name="Log in").click()
            expect(page).to_have_url(f"{server.url}/ui/vms")
            cookie = next(c for c in context.cookies() if c["name"] == "multiconsole_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # not readable by scripts

            # --- New VM with SPICE and VNC through the dialog --------------------------------
            page.get_by_role("button", name="New VM").click()
            dialog = page.locator("#edit-dialog")
            expect(dialog).to_be_visible()
            dialog.get_by_label("Name").fill(vm)
            dialog.get_by_label("Cluster").select_option("c")
            dialog.get_by_label("Memory (MiB)").fill("64")
            dialog.get_by_label("Video type").select_option("qxl")
            dialog.get_by_label("SPICE").check()
            dialog.get_by_label("VNC", exact=True).check()
            dialog.get_by_label("Keyboard layout (e.g. en-us; empty: default)").fill("en-us")
            expect(page.locator("#edit-form")).to_have_attribute("data-rules", "valid")
            page.screenshot(path=str(shots / "02-new-vm-dialog.png"))
            dialog.get_by_role("button", name="Create").click()
            row = page.locator(f'tr[data-vm="{vm}"]')
            expect(row).to_be_visible()
            created = http.get(f"/api/v1/vms/{vm}").json()
            assert created["display"]["consoles"] == ["spice", "vnc"] and created["memory_mib"] == 64
            assert created["display"]["keyboard_layout"] == "en-us"

            # --- an invalid combination: explained beside its field, nothing created -----------
            page.get_by_role("button", name="New VM").click()
            dialog.get_by_label("Name").fill(bad)
            dialog.get_by_label("Video type").select_option("vga")
            expect(page.locator("#err-video")).to_contain_text("SPICE needs QXL video (not vga)")
            dialog.get_by_label("Cluster").select_option("old")
            expect(page.locator("#err-graphics")).to_contain_text("clusters below 3.4 allow one console")
            dialog.get_by_label("Monitors").select_option("2")
            expect(page.locator("#err-monitors")).to_contain_text("VNC allows one monitor")
            expect(dialog.get_by_label("Video type")).to_have_attribute("aria-invalid", "true")
            dialog.get_by_role("button", name="Create").click()
            expect(page.locator("#err-form")).to_contain_text("Nothing was saved")
            page.screenshot(path=str(shots / "03-invalid-combination.png"))
            assert not exists("vms", bad)
            dialog.get_by_role("button", name="Cancel").click()

            # --- start it; both consoles' ports appear in the list ----------------------------
            row.get_by_role("button", name=f"Start {vm}").click()
            spice = row.locator('li.console[data-protocol="spice"]')
            vnc = row.locator('li.console[data-protocol="vnc"]')
            expect(spice.locator(".port")).to_have_text(str_digits(), timeout=60000)
            expect(vnc.locator(".port")).to_have_text(str_digits(), timeout=60000)
            ports = {c["protocol"]: c["port"] for c in http.get(f"/api/v1/vms/{vm}").json()["consoles"]}
            assert spice.locator(".port").inner_text() == str(ports["spice"])
            assert vnc.locator(".port").inner_text() == str(ports["vnc"])
            time.sleep(2)  # let the BIOS draw before the screenshot of the list
            page.reload()
            wait_for_thumbnail(page, vm)  # the live thumbnail (the screenshot route) loads
            page.screenshot(path=str(shots / "04-vms-running.png"))

            # --- the SPICE .vv, with its one-time password and time left ------------------------
            with page.expect_download() as download:
                row.get_by_role("button", name="SPICE in remote-viewer").click()
            vv = configparser.ConfigParser(interpolation=None)
            vv.read_string(open(download.value.path()).read())
            v = vv["virt-viewer"]
            assert download.value.suggested_filename == f"{vm}-spice.vv"
            assert v["type"] == "spice" and v["host"] == "127.0.0.1" and v["port"] == str(ports["spice"])
            assert len(v["password"]) == 8 and v["title"].startswith(vm) and v["delete-this-file"] == "1"
            assert {"fullscreen", "toggle-fullscreen", "release-cursor", "secure-attention"} <= set(v)
            ticket = page.locator("#ticket-dialog")
            expect(ticket).to_be_visible()
            expect(ticket.get_by_label("One-time password")).to_have_value(v["password"])
            left = int(page.locator("#ticket-left").inner_text())
            assert 100 <= left <= 120
            ticket.get_by_role("button", name="Copy").click()
            expect(ticket.get_by_role("button", name="Copied")).to_be_visible()
            page.screenshot(path=str(shots / "05-console-password.png"))
            ticket.get_by_role("button", name="Close").click()
            with page.expect_download() as download:
                row.get_by_role("button", name="VNC in remote-viewer").click()
            vv = configparser.ConfigParser(interpolation=None)
            vv.read_string(open(download.value.path()).read())
            v = vv["virt-viewer"]
            assert v["type"] == "vnc" and v["port"] == str(ports["vnc"]) and len(v["password"]) == 8
            expect(ticket.get_by_label("One-time password")).to_have_value(v["password"])
            ticket.get_by_role("button", name="Close").click()

            # --- VNC in the browser: the VM's screen in the canvas ------------------------------
            with context.expect_page() as popup_info:
                row.get_by_role("link", name="VNC in the browser").click()
            popup = popup_info.value
            popup.wait_for_selector("body[data-state=connected]", timeout=30000)
            canvas = popup.locator("#screen canvas")
            shot = shots / "06-novnc-canvas.png"
            deadline = time.monotonic() + 20
            while True:
                canvas.screenshot(path=str(shot))
                if colours(shot) > 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert colours(shot) > 2, "the noVNC canvas is blank"
            popup.screenshot(path=str(shots / "07-novnc-page.png"))
            popup.close()

            # --- a console held by someone else: the launcher warns before taking it over -------
            # (The holder is written as the engine would record it from a graphics event.)
            with app.state.sessions() as session:
                session.get(VmConsole, (created["id"], "spice")).holder = "it-web-other"
                session.commit()
            expect(spice.locator(".holder")).to_contain_text("in use by it-web-other", timeout=10000)
            issued = len(
                http.get("/api/v1/audit", params={"vm": vm, "event": "console ticket issued"}).json()
            )
            row.get_by_role("button", name="SPICE in remote-viewer").click()
            warning = page.locator("#takeover-dialog")
            expect(warning).to_contain_text("in use by it-web-other")
            expect(warning).to_contain_text("Taking it over disconnects them")
            page.screenshot(path=str(shots / "08-takeover-warning.png"))
            warning.get_by_role("button", name="Cancel").click()
            time.sleep(0.5)
            after = len(http.get("/api/v1/audit", params={"vm": vm, "event": "console ticket issued"}).json())
            assert after == issued  # cancelled: no ticket was asked for
            with app.state.sessions() as session:
                session.get(VmConsole, (created["id"], "spice")).holder = None
                session.commit()

            # --- edit the running VM's consoles: they apply at the next start -------------------
            row.get_by_role("button", name=f"Edit {vm}").click()
            expect(page.locator("#next-start-note")).to_be_visible()
            expect(dialog.get_by_label("SPICE")).to_be_checked()
            dialog.get_by_label("SPICE").uncheck()
            dialog.get_by_label("Video type").select_option("vga")
            expect(page.locator("#edit-form")).to_have_attribute("data-rules", "valid")
            page.screenshot(path=str(shots / "09-edit-running-vm.png"))
            dialog.get_by_role("button", name="Save").click()
            expect(row.locator(".badge.next-run")).to_have_text("changes at next start")
            nxt = http.get(f"/api/v1/vms/{vm}").json()["next_run"]["display"]
            assert nxt["consoles"] == ["vnc"] and nxt["video"] == "vga"
            expect(spice.locator(".port")).to_be_visible()  # until the restart, SPICE is still there
            wait_for_thumbnail(page, vm)
            page.screenshot(path=str(shots / "10-next-start-badge.png"))

            # --- a template through the same dialog; a VM made from it inherits its consoles ----
            page.get_by_role("link", name="Templates").click()
            page.get_by_role("button", name="New template").click()
            dialog.get_by_label("Name").fill(tpl)
            dialog.get_by_label("Cluster").select_option("c")
            dialog.get_by_label("Video type").select_option("vga")
            expect(page.locator("#err-video")).to_contain_text("SPICE needs QXL video (not vga)")
            dialog.get_by_role("button", name="Create").click()
            expect(page.locator("#err-form")).to_contain_text("Nothing was saved")
            page.screenshot(path=str(shots / "11-template-invalid.png"))
            assert not exists("templates", tpl)
            dialog.get_by_label("SPICE").uncheck()
            dialog.get_by_label("Description").fill("VNC only, vga")
            expect(page.locator("#edit-form")).to_have_attribute("data-rules", "valid")
            page.screenshot(path=str(shots / "12-new-template-dialog.png"))
            dialog.get_by_role("button", name="Create").click()
            trow = page.locator(f'tr[data-template="{tpl}"]')
            expect(trow.locator("td.consoles")).to_have_text("VNC")
            trow.get_by_role("button", name=f"Edit {tpl}").click()
            expect(dialog.get_by_label("VNC", exact=True)).to_be_checked()
            dialog.get_by_label("Memory (MiB)").fill("96")
            page.screenshot(path=str(shots / "13-edit-template-dialog.png"))
            dialog.get_by_role("button", name="Save").click()
            expect(trow.locator("td", has_text="96 MiB")).to_be_visible()
            page.screenshot(path=str(shots / "14-templates.png"))

            page.get_by_role("link", name="VMs").click()
            page.get_by_role("button", name="New VM").click()
            dialog.get_by_label("Name").fill(from_tpl)
            dialog.get_by_label("Template").select_option(tpl)
            expect(dialog.get_by_label("SPICE")).not_to_be_checked()
            expect(dialog.get_by_label("Video type")).to_have_value("vga")
            page.screenshot(path=str(shots / "15-new-vm-from-template.png"))
            dialog.get_by_role("button", name="Create").click()
            expect(page.locator(f'tr[data-vm="{from_tpl}"]')).to_be_visible()
            made = http.get(f"/api/v1/vms/{from_tpl}").json()
            assert made["template"] == tpl and made["memory_mib"] == 96
            assert made["display"]["consoles"] == ["vnc"] and made["display"]["video"] == "vga"

            # --- the other pages ---------------------------------------------------------------
            page.get_by_role("link", name="Hosts").click()
            expect(page.locator('tr[data-host="h"] .accel')).to_have_text("TCG")  # agent --virt-type qemu
            expect(page.locator('tr[data-host="h"] .spice-tls')).not_to_be_empty()
            page.screenshot(path=str(shots / "16-hosts.png"))
            page.get_by_role("link", name="Clusters").click()
            expect(page.locator('tr[data-cluster="old"]')).to_contain_text("one console per VM")
            page.screenshot(path=str(shots / "17-clusters.png"))
            page.get_by_role("link", name="Audit log").click()
            expect(page.locator("table")).to_contain_text("console ticket issued")
            expect(page.locator("table")).to_contain_text("browser console opened")
            page.screenshot(path=str(shots / "18-audit.png"))
            page.get_by_role("link", name="Users and permissions").click()
            expect(page.locator(f'tr[data-user="{VIEWER[0]}"]')).to_be_visible()
            page.screenshot(path=str(shots / "19-users.png"))

            # --- keyboard: the dialog opens and closes without a mouse -------------------------
            page.get_by_role("link", name="VMs").click()
            page.get_by_role("button", name="New VM").focus()
            page.keyboard.press("Enter")
            expect(dialog).to_be_visible()
            expect(dialog.get_by_label("Name")).to_be_focused()
            page.keyboard.press("Escape")
            expect(dialog).to_be_hidden()

            # --- a tablet-sized window -----------------------------------------------------------
            page.set_viewport_size({"width": 800, "height": 1100})
            page.reload()
            wait_for_thumbnail(page, vm)
            page.screenshot(path=str(shots / "20-vms-tablet.png"), full_page=True)

            page.get_by_role("button", name="Log out").click()
            expect(page).to_have_url(f"{server.url}/ui/login")
            page.goto(f"{server.url}/ui/vms")
            expect(page).to_have_url(f"{server.url}/ui/login?next=%2Fui%2Fvms")

            assert blocked == [], blocked

            # --- a user without console permission sees no console entries ------------------------
            other = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
            other.goto(f"{server.url}/ui/login")
            other.get_by_label("User name").fill(VIEWER[0])
            other.get_by_label("Password").fill(VIEWER[1])
            other.get_by_role("button", name="Log in").click()
            vrow = other.locator(f'tr[data-vm="{vm}"]')
            expect(vrow).to_contain_text("no console permission")
            expect(vrow.get_by_role("button", name=f"Stop {vm}")).to_be_visible()
            assert other.locator(".launch").count() == 0
            assert other.locator("td.thumb img").count() == 0
            assert other.get_by_text("remote-viewer").count() == 0
            assert other.get_by_role("link", name="Users and permissions").count() == 0
            other.screenshot(path=str(shots / "21-vms-without-console-permission.png"))
        finally:
            browser.close()


def wait_for_thumbnail(page, vm: str) -> None:
    page.wait_for_function(
        "vm => { const i = document.querySelector(`tr[data-vm='${vm}'] td.thumb img`);"
        " return i && i.complete && i.naturalWidth > 100; }",
        arg=vm,
    )


def str_digits():
    import re

    return re.compile(r"^\d+$")


HOLDER = ("it-web-holder", "holder-password")


def test_taking_over_a_console_a_real_client_holds(engine, tmp_path):
    """A second user's remote-viewer holds the SPICE console (its ticket from the REST API);
    the VMs page shows them as its holder from the host's graphics event; the admin's
    launcher warns, and taking over issues a take_over ticket that disconnects them."""
    from playwright.sync_api import expect, sync_playwright

    server, http, _ = engine
    shots = artifacts_dir() / "web"
    shots.mkdir(parents=True, exist_ok=True)
    vm = f"it-web-held-{time.monotonic_ns() % 10**6}"

    def ok(reply, status=200):
        assert reply.status_code == status, reply.text
        return reply.json()

    def wait_for(predicate, what, seconds=30):
        deadline = time.monotonic() + seconds
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def holder():
        current = ok(http.get(f"/api/v1/vms/{vm}/consoles"))["current"]
        return next(c["holder"] for c in current if c["protocol"] == "spice")

    def events():
        return [
            (e["event"], e["user"], e["detail"]) for e in ok(http.get("/api/v1/audit", params={"vm": vm}))
        ]

    body = {"name": vm, "cluster": "c", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}
    ok(http.post("/api/v1/vms", json=body), 201)
    # Not an admin, no role but console_user, and that on this VM only.
    ok(http.post("/api/v1/users", json={"name": HOLDER[0], "password": HOLDER[1]}), 201)
    perm = {"user": HOLDER[0], "role": "console_user", "object_type": "vm", "object": vm}
    ok(http.post("/api/v1/permissions", json=perm), 201)
    assert http.get("/api/v1/users", auth=HOLDER).status_code == 403

    screen = VirtualScreen()
    viewer = None
    try:
        ok(http.post(f"/api/v1/vms/{vm}/start"))
        url = f"/api/v1/vms/{vm}/consoles/spice/ticket"
        wait_for(lambda: http.get(f"/api/v1/vms/{vm}").json()["status"] == "Up", "the VM to run")
        wait_for(
            lambda: any(
                c["protocol"] == "spice" and c["port"]
                for c in http.get(f"/api/v1/vms/{vm}").json()["consoles"]
            ),
            "the SPICE port",
        )
        # --- the second user's ticket (REST, Basic auth) and their remote-viewer ------------
        t = ok(http.post(url, json={"ttl": 120}, auth=HOLDER))
        vv_path = tmp_path / "holder.vv"
        vv_path.touch(mode=0o600)
        vv_path.write_text(
            f"[virt-viewer]\ntype=spice\nhost={t['address']}\nport={t['port']}\npassword={t['password']}\n"
            f"title={vm} (held)\n"
        )
        viewer = screen.run("remote-viewer", str(vv_path))
        wait_for(lambda: holder() == HOLDER[0], "remote-viewer to connect")
        assert viewer.poll() is None
        assert events() == [
            ("console ticket issued", HOLDER[0], "valid 120 s, existing client: fail"),
            ("console connected", HOLDER[0], ""),
        ]

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
                page = context.new_page()
                page.set_default_timeout(20000)
                page.goto(f"{server.url}/ui/login")
                page.get_by_label("User name").fill(ADMIN[0])
                page.get_by_label("Password").fill(ADMIN[1])
                page.get_by_role("button", name="Log in").click()
                expect(page).to_have_url(f"{server.url}/ui/vms")

                # --- the VMs page names the holder the engine learned from the event -------
                row = page.locator(f'tr[data-vm="{vm}"]')
                spice = row.locator('li.console[data-protocol="spice"]')
                expect(spice.locator(".holder")).to_have_text(f"in use by {HOLDER[0]} from 127.0.0.1")
                expect(row.locator('li.console[data-protocol="vnc"] .holder')).to_have_text(
                    "nobody connected"
                )
                page.screenshot(path=str(shots / "22-console-held-by-a-real-client.png"))

                # --- the admin's launcher warns; taking over downloads a fresh .vv ---------
                row.get_by_role("button", name="SPICE in remote-viewer").click()
                warning = page.locator("#takeover-dialog")
                expect(warning).to_contain_text(f"The SPICE console of {vm} is in use by {HOLDER[0]}.")
                expect(warning).to_contain_text("Taking it over disconnects them")
                page.screenshot(path=str(shots / "23-takeover-warning-real-holder.png"))
                with page.expect_download() as download:
                    warning.get_by_role("button", name="Take over").click()
                vv = configparser.ConfigParser(interpolation=None)
                vv.read_string(open(download.value.path()).read())
                v = vv["virt-viewer"]
                assert download.value.suggested_filename == f"{vm}-spice.vv"
                assert v["type"] == "spice" and v["port"] == str(t["port"]) and len(v["password"]) == 8
                assert v["password"] != t["password"]
                expect(page.locator("#ticket-dialog").get_by_label("One-time password")).to_have_value(
                    v["password"]
                )
                page.locator("#ticket-dialog").get_by_role("button", name="Close").click()

                # --- QEMU dropped the first client: the engine saw it leave ----------------
                wait_for(lambda: holder() is None, f"{HOLDER[0]}'s remote-viewer to be disconnected")
                wait_for(lambda: viewer.poll() is not None, "remote-viewer to exit", seconds=15)
                taken = ok(http.get("/api/v1/audit", params={"vm": vm, "event": "console taken over"}))
                assert [(e["user"], e["protocol"], e["client_address"]) for e in taken] == [
                    (ADMIN[0], "spice", "127.0.0.1")
                ]
                # The disconnect is recorded once: by its graphics event, or by the monitor's
                # poll when that saw the client gone first.
                assert events()[2:4] == [
                    ("console taken over", ADMIN[0], f"from {HOLDER[0]}"),
                    ("console ticket issued", ADMIN[0], "valid 120 s, existing client: disconnect"),
                ]
                assert events()[4:] in (
                    [("console disconnected", HOLDER[0], "")],
                    [("console disconnected", HOLDER[0], "found by polling the host")],
                )
                expect(spice.locator(".holder")).to_have_text("nobody connected", timeout=10000)
                page.screenshot(path=str(shots / "24-console-taken-over.png"))
            finally:
                browser.close()
        # The downloaded .vv's password opens the console; the first client's no longer does.
        assert spice_capture(t["port"], t["password"], tmp_path / "old.png") == 1
        assert spice_capture(t["port"], v["password"], tmp_path / "new.png") == 0
    finally:
        if viewer is not None:
            stop(viewer)
        screen.close()
        http.post(f"/api/v1/vms/{vm}/stop")
