"""A NUL character in any text a request sends is a 400 naming the field, on both databases:
PostgreSQL cannot store or compare one, and every such form field, JSON string and login
name was a 500 there."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from tests.engine.conftest import ADMIN, engine_client, ok

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def client(db_url):
    with engine_client(db_url) as api:
        # Server errors as 500 answers (what a client sees), not as exceptions in the test.
        yield TestClient(api.app, raise_server_exceptions=False), api
    api.app.state.db_engine.dispose()


def refused(reply, field=None):
    assert reply.status_code == 400, reply.text
    if field is not None:
        assert reply.json()["error"]["field"] == field, reply.text


def test_nul_in_json_text_is_a_400_naming_the_field(client):
    c, api = client
    c.auth = ADMIN
    refused(c.post("/api/v1/clusters", json={"name": "c1", "description": "a\u0000b"}), "description")
    ok(api.post("/api/v1/clusters", json={"name": "c1"}), 201)  # nothing was made
    refused(c.post("/api/v1/templates", json={"name": "t1", "cluster": "c\u0000"}))
    refused(c.post("/api/v1/permissions", json={"user": "u\u0000", "role": "admin"}))


def test_nul_in_a_login_name_is_a_400_on_every_way_of_logging_in(client, caplog):
    c, _ = client
    caplog.set_level(logging.ERROR)
    refused(c.post("/api/v1/login", json={"name": "adm\u0000", "password": "x"}), "name")
    refused(c.get("/api/v1/me", auth=("admin\x00", "x")), "name")
    sso = c.post(
        "/ovirt-engine/sso/oauth/token", content=b"grant_type=password&username=a%00&password=b", headers=FORM
    )
    assert sso.status_code == 400 and sso.json()["error"] == "invalid_request", sso.text
    page = c.post("/ui/login", content=b"name=a%00&password=b", headers={**FORM, "origin": str(c.base_url)})
    assert page.status_code == 400, page.text
    assert "unexpected error" not in caplog.text
