"""Random query strings and path segments on every route the engine serves: never a 500
(issue 11, finding 7: `?max=100000000000000000000` on the oVirt lists overflowed).

The routes are read from the application itself (REST, oVirt, SSO, web pages, static files,
those outside the OpenAPI schema), each with the query parameters it declares, fed huge,
negative, fractional, non-numeric and unicode values, plus parameters it does not know.
One engine on SQLite, then one on PostgreSQL, serves the run, with a host on libvirt's test
driver, one stopped and one running VM, a template."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Mount, Route

from tests.engine.conftest import FakeHost, _pg_database, engine_client, ok
from tests.engine.test_api import setup_cluster
from tests.engine.test_ovirt_api import SPICE, VNC, Ovirt, new_vm, start, template

PER_ROUTE = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
NUMBERS = [
    "100000000000000000000",
    str(2**63),
    str(2**64 + 1),
    str(-(2**63) - 1),
    "9" * 400,
    "-1",
    "0",
    "1e400",
    "1e30",
    "-0",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "1_000",
    "١٢٣",  # Arabic-Indic digits: int() takes them
    "",
    " 5 ",
    "true",
    "9999-12-31T23:59:59",
    "0001-01-01",
    "99999-01-01",
]
VALUES = st.one_of(
    st.sampled_from(NUMBERS),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
)
UNKNOWN = st.sampled_from(
    ["max", "limit", "offset", "page", "ttl", "width", "follow", "all_content", "zz", "ä"]
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("query-fuzz")
    pg = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'engine.db'}"
    else:
        pg = _pg_database()
        url = pg[2]
    host = FakeHost(tmp)
    with engine_client(url) as api:
        ov = Ovirt(api)
        setup_cluster(api, host)
        t = template(api, consoles=("spice", "vnc"))
        stopped = new_vm(ov, "stopped").get("id")
        running = new_vm(ov, "running").get("id")
        start(api, ov, running)
        cluster = ok(api.get("/api/v1/clusters"))[0]["id"]
        host_id = ok(api.get("/api/v1/hosts"))[0]["id"]
        ids = {
            "vm": [stopped, running, "running"],
            "template": [t["id"], "tpl"],
            "cluster": [cluster, "prod"],
            "host": [host_id],
            "console": [SPICE, VNC],
            "protocol": ["spice", "vnc"],
        }
        yield api, ids
    host.stop()
    api.app.state.db_engine.dispose()
    if pg is not None:
        admin, name, _ = pg
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def query_params(dependant) -> set[str]:
    """The query parameters a route reads, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_params(sub)
    return names


def _all_routes(app):
    """(path, route) of every route, those of included routers (which FastAPI resolves
    lazily) with their full path."""
    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):
            for ctx in route.effective_route_contexts():
                yield ctx.path, ctx.original_route
        else:
            yield getattr(route, "path", ""), route


def routes(app) -> list[tuple[str, str, set[str], list[str]]]:
    """(method, path template, query parameters, path parameters) of every route; DELETE
    left out (the fuzz would delete its own world)."""
    out = []
    for path, route in _all_routes(app):
        path_params = re.findall(r"\{(\w+)(?::path)?\}", path)
        if isinstance(route, Mount):
            out.append(("GET", path + "/{path}", set(), ["path"]))
        elif isinstance(route, APIRoute):
            params = query_params(route.dependant)
            out += [(m, path, params, path_params) for m in sorted(route.methods) if m != "DELETE"]
        elif isinstance(route, Route):
            out += [(m, path, set(), path_params) for m in sorted(route.methods or ()) if m != "HEAD"]
    return out


def path_values(ids: dict, name: str) -> list[str]:
    for kind in ("vm", "template", "cluster", "host", "console", "protocol"):
        if kind in name or (kind == "vm" and name == "key"):
            return ids[kind]
    return ["x", "admin@internal"]


def test_every_route_is_found(world):
    api, _ = world
    found = {(m, p) for m, p, _, _ in routes(api.app)}
    # The oVirt lists (finding 7), the REST API, the web UI and its static files.
    for expected in [
        ("GET", "/ovirt-engine/api/vms"),
        ("GET", "/ovirt-engine/api/clusters"),
        ("GET", "/ovirt-engine/api/hosts"),
        ("GET", "/ovirt-engine/api/templates"),
        ("GET", "/api/v1/audit"),
        ("GET", "/ui/audit"),
        ("POST", "/ovirt-engine/sso/oauth/token"),
        ("GET", "/static/ui/{path}"),
    ]:
        assert expected in found


def fuzz_route(api, ids, method, template_path, known, path_params, seen):
    @PER_ROUTE
    @given(data=st.data())
    def one(data):
        path = template_path
        for name in path_params:
            value = data.draw(
                st.one_of(st.sampled_from(path_values(ids, name)), VALUES.filter(bool)), label=name
            )
            path = re.sub(r"\{" + name + r"(:path)?\}", quote(value, safe="").replace("\\", "\\\\"), path)
        names = data.draw(st.lists(st.sampled_from(sorted(known)), max_size=3) if known else st.just([]))
        names += data.draw(st.lists(st.one_of(UNKNOWN, st.text(max_size=8)), max_size=2))
        params = [(n, data.draw(VALUES, label=n)) for n in names]
        reply = api.request(method, path, params=params)
        seen.append(reply.status_code)
        assert reply.status_code < 500, (method, path, params, reply.text[:500])

    return one


def test_no_query_string_or_path_segment_is_a_500(world):
    api, ids = world
    seen: list[int] = []
    for method, template_path, known, path_params in routes(api.app):
        # Each known parameter with the values that broke it once, then random ones.
        path = template_path
        for name in path_params:
            path = re.sub(r"\{" + name + r"(:path)?\}", quote(path_values(ids, name)[0], safe=""), path)
        for name in sorted(known):
            for value in ("100000000000000000000", "-1", "1e400", "x", "\x00"):
                reply = api.request(method, path, params={name: value})
                seen.append(reply.status_code)
                assert reply.status_code < 500, (method, path, name, value, reply.text[:500])
        fuzz_route(api, ids, method, template_path, known, path_params, seen)()
    assert len(seen) > 300


@pytest.mark.parametrize("collection", ["vms", "clusters", "hosts", "templates"])
@pytest.mark.parametrize("value", ["100000000000000000000", str(2**63), "-1", "x"])
def test_a_huge_max_is_a_400_naming_it(world, collection, value):
    api, _ = world
    reply = api.get(f"/ovirt-engine/api/{collection}", params={"max": value})
    assert reply.status_code == 400, reply.text
    assert "max" in reply.text


def test_the_largest_max_lists_everything(world):
    api, _ = world
    reply = api.get("/ovirt-engine/api/vms", params={"max": str(2**31 - 1)})
    assert reply.status_code == 200 and reply.text.count("<vm ") == 2


def test_a_nul_in_the_url_is_a_400_naming_it(world):
    """PostgreSQL refuses NUL in text: it reached the database as a 500."""
    api, _ = world
    body = api.get("/api/v1/audit", params={"event": "a\x00"}).json()["error"]
    assert body["status"] == 400 and body["field"] == "event", body
    body = api.get("/api/v1/vms/a%00b").json()["error"]
    assert body["status"] == 400 and body["field"] == "path", body
    fault = api.get("/ovirt-engine/api/vms", params={"search": "name=\x00"})
    assert fault.status_code == 400 and b"<fault>" in fault.content and b"search" in fault.content
