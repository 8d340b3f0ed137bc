"""`multiconsole image ...` and the VM drive options, against a real engine (SQLite) and agent
(libvirt's test driver, a real image cache and disks) served by uvicorn."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from multiconsole.agent.images import Storage
from multiconsole.agent.server import make_app as make_agent_app
from multiconsole.agent.vms import VmManager
from multiconsole.engine.app import Settings, make_app
from tests.conftest import TEST_DRIVER_XML
from tests.unit.test_cli import PASSWORD, Served, Stack, cli, cli_json, isolated  # noqa: F401


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cli-images")
    node = tmp / "node.xml"
    node.write_text(TEST_DRIVER_XML)
    manager = VmManager(f"test://{node}", storage=Storage(tmp / "host"))
    agent = Served(make_agent_app(manager))
    engine = Served(
        make_app(
            Settings(
                db_url=f"sqlite:///{tmp / 'engine.db'}",
                admin_password=PASSWORD,
                monitor=False,
                proxy_port=None,
                pki_dir=str(tmp / "pki"),
                images_dir=str(tmp / "images"),
            )
        )
    )
    stack = Stack(engine, agent)
    stack.manager = manager  # type: ignore[attr-defined]
    yield stack
    engine.stop()
    agent.stop()
    manager.conn.close()


def test_upload_with_progress_then_use_it_in_a_vm(stack, tmp_path):
    disk = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "32M"], check=True)
    out = cli(stack, "image", "upload", str(disk)).stdout
    assert "image tiny.qcow2 uploaded (qcow2" in out
    images = cli_json(stack, "image", "list")
    assert [(i["name"], i["format"]) for i in images] == [("tiny.qcow2", "qcow2")]
    # Refusals name the reason and exit 1.
    raw = tmp_path / "x.raw"
    raw.write_bytes(b"\x01" * 4096)
    bad = cli(stack, "image", "upload", str(raw), "--name", "x", "--format", "qcow2", ok=False)
    assert bad.exit_code == 1 and "declared qcow2, but the file is raw" in bad.stderr

    cli(stack, "cluster", "add", "c1", "--level", "4.7")
    cli(stack, "host", "add", "h1", f"127.0.0.1:{stack.agent.port}", "--cluster", "c1", "--insecure")
    vm = cli_json(
        stack,
        "vm",
        "create",
        "v1",
        "--cluster",
        "c1",
        "--memory",
        "64",
        "--disk",
        "tiny.qcow2",
        "--disk-size",
        "2",
        "--boot",
        "disk",
    )
    assert [d["size_gib"] for d in vm["drives"]["disks"]] == [None, 2] and vm["drives"]["boot"] == ["disk"]
    shown = cli(stack, "vm", "show", "v1").stdout
    assert "overlay of tiny.qcow2; empty, 2 GiB" in shown
    in_use = cli(stack, "image", "delete", "tiny.qcow2", ok=False)
    assert in_use.exit_code == 1 and "in use by VM v1" in in_use.stderr
    assert "VM v1" in cli(stack, "image", "show", "tiny.qcow2").stdout
    cli(stack, "vm", "start", "v1")
    assert "pinned to host" in cli(stack, "vm", "show", "v1").stdout
    cli(stack, "vm", "stop", "v1")
    cli(stack, "vm", "remove", "v1")
    assert not (stack.manager.storage.disks / vm["id"]).exists()
    cli(stack, "image", "delete", "tiny.qcow2")
    assert cli_json(stack, "image", "list") == []
