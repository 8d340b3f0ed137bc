"""The web UI's Images page and the dialog's boot media, in Chromium (Playwright): an upload
with a progress bar, a refusal shown as the engine words it, a VM made with a disk image,
a delete refused while the VM uses it, then allowed."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from multiconsole.engine.app import Settings, make_app
from tests.conftest import artifacts_dir
from tests.engine.conftest import ADMIN
from tests.integration.test_browser_console import CHROMIUM_ARGS
from tests.support.servers import ThreadServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(tmp_path):
    port = free_port()
    app = make_app(
        Settings(
            db_url=f"sqlite:///{tmp_path / 'e.db'}",
            admin_password=ADMIN[1],
            monitor=False,
            proxy_port=None,
            proxy_key_file=str(tmp_path / "proxy.key"),
            pki_dir=str(tmp_path / "pki"),
            images_dir=str(tmp_path / "images"),
            allowed_origins=[f"http://127.0.0.1:{port}"],
        )
    )
    server = ThreadServer(app, port=port).start()
    http = httpx.Client(base_url=server.url, auth=ADMIN, timeout=60)
    assert http.post("/api/v1/clusters", json={"name": "c"}).status_code == 201
    yield server, http, tmp_path / "images"
    http.close()
    server.stop()
    app.state.db_engine.dispose()


def test_images_page_and_boot_media_in_chromium(engine, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    server, http, images_dir = engine
    shots = artifacts_dir() / "web"
    shots.mkdir(parents=True, exist_ok=True)
    disk = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "256M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x21 0 24M", str(disk)], check=True, capture_output=True)
    raw = tmp_path / "not-qcow2.img"
    raw.write_bytes(b"\x01" * 65536)
    vm = f"it-img-{time.monotonic_ns() % 10**6}"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(30000)
            page.goto(f"{server.url}/ui/images")
            page.get_by_label("User name").fill(ADMIN[0])
            page.get_by_label("Password").fill(ADMIN[1])
            page.get_by_role("button", name="Log in").click()
            expect(page).to_have_url(f"{server.url}/ui/images")

            # A refusal: the engine's reason, and nothing kept.
            page.get_by_label("File", exact=True).set_input_files(str(raw))
            page.get_by_label("Format").select_option("qcow2")
            page.get_by_role("button", name="Upload").click()
            expect(page.locator("#u-error")).to_contain_text("declared qcow2, but the file is raw")
            assert http.get("/api/v1/images").json() == []

            # An upload with progress: the highest value the bar showed is kept across the reload.
            page.evaluate(
                """() => {
                  const bar = document.querySelector('#u-progress');
                  new MutationObserver(() => sessionStorage.setItem('max', Math.max(
                    Number(sessionStorage.getItem('max') || 0), bar.value))).observe(bar, {attributes: true});
                  setInterval(() => sessionStorage.setItem('max', Math.max(
                    Number(sessionStorage.getItem('max') || 0), bar.value)), 5);
                }"""
            )
            page.get_by_label("File", exact=True).set_input_files(str(disk))
            page.get_by_label("Format").select_option("")
            page.get_by_role("button", name="Upload").click()
            row = page.locator('tr[data-image="tiny.qcow2"]')
            expect(row).to_be_visible()
            expect(row).to_contain_text("qcow2")
            assert int(page.evaluate("sessionStorage.getItem('max')") or 0) > 0
            page.screenshot(path=str(shots / "images-01-uploaded.png"))

            # The New VM dialog offers it as a disk.
            page.goto(f"{server.url}/ui/vms")
            page.get_by_role("button", name="New VM").click()
            dialog = page.locator("#edit-dialog")
            dialog.get_by_label("Name").fill(vm)
            dialog.get_by_label("Memory (MiB)").fill("64")
            dialog.get_by_label("Disk (a copy-on-write overlay of an image)").select_option("tiny.qcow2")
            dialog.get_by_label("Boot order").select_option("disk")
            page.screenshot(path=str(shots / "images-02-dialog.png"))
            dialog.get_by_role("button", name="Create").click()
            expect(page.locator(f'tr[data-vm="{vm}"]')).to_be_visible()
            created = http.get(f"/api/v1/vms/{vm}").json()
            assert created["drives"]["disks"][0]["image"]["name"] == "tiny.qcow2"
            assert created["drives"]["boot"] == ["disk"]

            # Delete: refused while the VM uses it, then done.
            page.goto(f"{server.url}/ui/images")
            row.get_by_role("button", name="Delete tiny.qcow2").click()
            expect(page.locator("#flash")).to_contain_text(f"in use by VM {vm}")
            assert http.delete(f"/api/v1/vms/{vm}").status_code == 204
            page.reload()
            row.get_by_role("button", name="Delete tiny.qcow2").click()
            expect(page.locator("#image-table")).to_contain_text("No images.", timeout=15000)
            assert list(images_dir.iterdir()) == []
        finally:
            browser.close()
