"""Images reach an enrolled host over the engine<->agent mutual TLS (PUT /images/<sha256> on the
agent, engine certificate presented, the agent's pinned), and nothing else may put one there."""

from __future__ import annotations

import hashlib
import ssl
import subprocess

import httpx
import pytest

from multiconsole.agent.images import Storage
from tests.engine.conftest import ok
from tests.engine.test_tls import Engine, enrolled_host


@pytest.fixture
def engine(tmp_path):
    e = Engine(tmp_path, images_dir=str(tmp_path / "engine-images"))
    ok(e.api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    yield e
    e.stop()


def test_a_host_with_an_empty_cache_gets_the_image_over_mutual_tls(tmp_path, engine):
    host, pki_dir = enrolled_host(tmp_path, engine)
    host.manager.storage = Storage(tmp_path / "host-storage")
    try:
        ok(engine.add_host("node1", host.port), 201)
        disk = tmp_path / "d.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
        image = ok(
            engine.api.post("/api/v1/images", params={"name": "d"}, content=disk.read_bytes()),
            201,
        )
        vm = {"name": "tls-disk", "cluster": "prod", "memory_mib": 64, "disks": [{"image": "d"}]}
        ok(engine.api.post("/api/v1/vms", json=vm), 201)
        assert ok(engine.api.post("/api/v1/vms/tls-disk/start"))["status"] == "Up"
        # It went over the TLS server's own endpoint, and arrived intact.
        assert f"/images/{image['sha256']}" in host.requests
        cached = host.manager.storage.cached(image["sha256"])
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == image["sha256"]
        ok(engine.api.post("/api/v1/vms/tls-disk/stop"))

        # Without the engine's client certificate the agent takes nothing: the handshake fails.
        context = ssl.create_default_context(cafile=str(pki_dir / "ca-cert.pem"))
        context.check_hostname = False
        with pytest.raises(httpx.HTTPError):
            httpx.put(f"{host.url}/images/{'0' * 64}", content=b"x", verify=context, timeout=10)
        assert not host.manager.storage.cached("0" * 64).exists()
    finally:
        host.stop()
