"""The engine against both databases, with agents on libvirt's test driver."""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from multiconsole.agent.server import make_app as agent_app
from multiconsole.agent.vms import VmManager
from multiconsole.engine.app import Settings, make_app
from tests.conftest import TEST_DRIVER_XML
from tests.support.servers import ThreadServer

PG_URL = os.environ.get(
    "MULTICONSOLE_TEST_PG", "postgresql+psycopg://multiconsole:multiconsole@127.0.0.1/multiconsole_test"
)
ADMIN = ("admin@internal", "admin-pw")


def _pg_database():
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if os.environ.get("MULTICONSOLE_NO_POSTGRES") == "1":
        pytest.skip("MULTICONSOLE_NO_POSTGRES=1")
    name = f"mc_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sqlalchemy.exc.OperationalError as err:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({err.orig}); run scripts/setup.sh")
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    return admin, name, url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'engine.db'}"
        return
    admin, name, url = _pg_database()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'engine.db'}"


def engine_client(url: str, **settings) -> TestClient:
    settings.setdefault("monitor", False)
    settings.setdefault("proxy_port", None)
    settings.setdefault("proxy_key_file", os.path.join(tempfile.mkdtemp(prefix="mc-key-"), "proxy.key"))
    settings.setdefault("pki_dir", tempfile.mkdtemp(prefix="mc-pki-"))
    app = make_app(Settings(db_url=url, admin_password=ADMIN[1], **settings))
    client = TestClient(app)
    client.auth = ADMIN
    return client


@pytest.fixture
def api(db_url):
    with engine_client(db_url) as client:
        yield client
    client.app.state.db_engine.dispose()


@pytest.fixture
def sqlite_api(sqlite_url):
    with engine_client(sqlite_url) as client:
        yield client


class FakeHost:
    """An agent app on its own test-driver host, served over HTTP in a thread."""

    def __init__(self, tmp_path, manager_cls=VmManager, app_factory=agent_app):
        node = tmp_path / f"host-{uuid.uuid4().hex[:8]}.xml"
        node.write_text(TEST_DRIVER_XML)
        self.manager = manager_cls(f"test://{node}")
        self.server = ThreadServer(app_factory(self.manager)).start()
        self.port = self.server.port

    def stop(self) -> None:
        self.server.stop()
        self.manager.conn.close()


@pytest.fixture
def fake_host(tmp_path):
    host = FakeHost(tmp_path)
    yield host
    host.stop()


def ok(reply, status=200):
    assert reply.status_code == status, reply.text
    return reply.json() if reply.content else None


def error(reply, status, field=None):
    assert reply.status_code == status, reply.text
    body = reply.json()["error"]
    if field is not None:
        assert body["field"] == field, body
    return body


@pytest.fixture(autouse=True)
def _own_spice_dir(tmp_path_factory, monkeypatch):
    """Enrolments here run as root with throwaway CAs: keep them out of the SPICE
    certificates real QEMU reads (/etc/pki/libvirt-spice), which integration tests use."""
    monkeypatch.setenv("MULTICONSOLE_SPICE_DIR", str(tmp_path_factory.mktemp("spice")))
