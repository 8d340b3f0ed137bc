"""Random XML on the oVirt API's writing routes: never a 500, every refusal a 4xx `<fault>`
whose detail says why. One engine on SQLite, a host on libvirt's test driver, one stopped
and one running VM, a template."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from tests.engine.conftest import FakeHost, engine_client, ok
from tests.engine.test_api import setup_cluster
from tests.engine.test_ovirt_api import SPICE, VNC, A, Ovirt, new_vm, start, template

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
TAGS = [
    "vm", "name", "cluster", "template", "memory", "cpu", "topology", "sockets", "cores", "threads",
    "os", "type", "display", "graphics_console", "protocol", "action", "ticket", "value", "expiry", "id",
]  # fmt: skip
TEXTS = st.one_of(
    st.sampled_from(
        ["spice", "vnc", "rdp", "prod", "tpl", "Blank", "-1", "0", "99999999999999999999", "", " "]
    ),
    # What XML can carry: no control characters, no lone surrogates.
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


@st.composite
def documents(draw, roots):
    def grow(el, depth):
        for _ in range(draw(st.integers(0, 4 if depth < 3 else 0))):
            child = etree.SubElement(el, draw(st.sampled_from(TAGS)))
            if draw(st.booleans()):
                child.set("id", draw(TEXTS))
            if draw(st.booleans()):
                grow(child, depth + 1)
            else:
                child.text = draw(TEXTS)

    root = etree.Element(draw(st.sampled_from(roots)))
    grow(root, 0)
    return etree.tostring(root)


RAW = st.one_of(
    st.binary(max_size=200), st.sampled_from([b"", b"<", b"<vm>", b"<?xml version='1.0'?>", b"\xff\xfe"])
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ovirt-fuzz")
    host = FakeHost(tmp)
    with engine_client(f"sqlite:///{tmp / 'engine.db'}") as api:
        ov = Ovirt(api)
        setup_cluster(api, host)
        t = template(api, consoles=("spice", "vnc"))
        stopped = new_vm(ov, "stopped").get("id")
        running = new_vm(ov, "running").get("id")
        start(api, ov, running)
        yield api, ov, {"stopped": stopped, "running": running, "template": t["id"]}
    host.stop()


def paths(ids):
    out = ["/vms"]
    for vm in (ids["stopped"], ids["running"]):
        out += [f"/vms/{vm}/graphicsconsoles", f"/vms/{vm}/start", f"/vms/{vm}/ticket"]
        out += [
            f"/vms/{vm}/graphicsconsoles/{c}/{a}"
            for c in (SPICE, VNC)
            for a in ("ticket", "remoteviewerconnectionfile")
        ]
    out.append(f"/templates/{ids['template']}/graphicsconsoles")
    return out


@FUZZ
@given(data=st.data())
def test_random_xml_never_breaks_the_engine(world, data):
    api, ov, ids = world
    path = data.draw(st.sampled_from(paths(ids)))
    body = data.draw(st.one_of(documents(["vm", "graphics_console", "action"]), RAW))
    reply = api.post(A + path, content=body, headers=ov.headers(), auth=None)
    assert reply.status_code < 500, reply.text
    if reply.status_code == 204:
        return
    assert reply.headers["content-type"].startswith("application/xml"), reply.text
    root = etree.fromstring(reply.content)
    if reply.status_code >= 400:
        assert root.tag == "fault" and root.findtext("detail").strip("[]"), reply.text
    # Whatever it added is within the rules: the VMs and the template are still readable.
    for vm in (ids["stopped"], ids["running"]):
        ok(api.get(f"/api/v1/vms/{vm}"))
