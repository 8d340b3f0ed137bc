"""A host's SPICE certificate at enrolment, and renewing a host's certificates over its TLS
connection without re-enrolling, on libvirt's test driver (tests/engine/test_tls.py's helpers)."""

from __future__ import annotations

import pytest

from multiconsole import pki
from multiconsole.agent.enroll import enroll
from tests.engine.conftest import error, ok
from tests.engine.test_tls import Engine, TlsHost

VM = {"name": "renew1", "cluster": "prod", "memory_mib": 64, "video": "qxl", "consoles": ["spice", "vnc"]}


@pytest.fixture
def engine(tmp_path):
    e = Engine(tmp_path)
    ok(e.api.post("/api/v1/clusters", json={"name": "prod"}), 201)
    yield e
    e.stop()


@pytest.fixture
def host(tmp_path, engine):
    """Host node1: enrolled with a SPICE request (its SPICE directory in tmp), serving TLS, added."""
    t = ok(engine.api.post("/api/v1/hosts/enrollment-tokens", json={"host": "node1"}), 201)
    pki_dir, spice_dir = tmp_path / "host-pki", tmp_path / "spice"
    done = enroll(
        engine.url,
        t["token"],
        pki_dir,
        ["127.0.0.1"],
        ca_fingerprint=t["ca_fingerprint"],
        spice_dir=spice_dir,
    )
    h = TlsHost(tmp_path, pki_dir)
    h.manager.certs.pki_dir, h.manager.certs.spice_dir = pki_dir, spice_dir
    h.pki_dir, h.spice_dir, h.enrolled = pki_dir, spice_dir, done
    ok(engine.add_host("node1", h.port), 201)
    yield h
    h.stop()


def test_enrolment_signs_a_spice_certificate_and_the_host_keeps_its_subject(engine, host):
    assert host.enrolled.spice_subject == "O=multiconsole,CN=node1"
    assert host.spice_dir / "server-key.pem" in host.enrolled.files
    cert = (host.spice_dir / "server-cert.pem").read_bytes()
    assert engine.ca.issued(cert) and pki.cert_subject_string(cert) == "O=multiconsole,CN=node1"
    assert (host.spice_dir / "ca-cert.pem").read_bytes() == engine.ca.cert_pem
    assert ok(engine.api.get("/api/v1/hosts/node1"))["spice_subject"] == "O=multiconsole,CN=node1"


def test_a_bad_spice_request_is_refused_with_its_field(engine, tmp_path):
    t = ok(engine.api.post("/api/v1/hosts/enrollment-tokens", json={"host": "node2"}), 201)
    csr, _key = pki.make_csr("node2")
    reply = engine.api.post(
        "/api/v1/hosts/enroll", json={"token": t["token"], "csr": csr.decode(), "spice_csr": "not a csr"}
    )
    error(reply, 422, "spice_csr")


def test_renewal_pins_the_new_certificate(engine, host):
    old = ok(engine.api.get("/api/v1/hosts/node1"))["cert_fingerprint"]
    old_spice = (host.spice_dir / "server-cert.pem").read_bytes()
    r = ok(engine.api.post("/api/v1/hosts/node1/certificate"))
    assert r["previous_fingerprint"] == old and r["fingerprint"] != old and r["spice_renewed"]
    assert pki.fingerprint((host.pki_dir / "agent-cert.pem").read_bytes()) == r["fingerprint"]
    new_spice = (host.spice_dir / "server-cert.pem").read_bytes()
    assert new_spice != old_spice and pki.cert_subject_string(new_spice) == "O=multiconsole,CN=node1"
    # The agent serves its new certificate (a real agent reloads it in place): the engine
    # reaches it with the new pin only.
    host.serve(host.pki_dir)
    vm = ok(engine.api.post("/api/v1/vms", json=VM), 201)
    assert ok(engine.api.post(f"/api/v1/vms/{vm['id']}/start"))["status"] == "Up"
    ok(engine.api.post(f"/api/v1/vms/{vm['id']}/stop"))


def test_renewal_refusals(engine, host, fake_host):
    error(engine.api.post("/api/v1/hosts/nosuch/certificate"), 404, "host")
    ok(engine.add_host("plain", fake_host.port, insecure=True), 201)
    reply = engine.api.post("/api/v1/hosts/plain/certificate")
    error(reply, 409, "host")
    assert "plain HTTP" in reply.json()["error"]["reason"]
    ok(
        engine.api.post(
            "/api/v1/users", json={"name": "op", "password": "op-password-1", "roles": ["vm_operator"]}
        ),
        201,
    )
    reply = engine.api.post("/api/v1/hosts/node1/certificate", auth=("op", "op-password-1"))
    assert reply.status_code == 403, reply.text
    # The agent without its TLS directory (an --insecure agent) says so; the pin stays.
    before = ok(engine.api.get("/api/v1/hosts/node1"))["cert_fingerprint"]
    host.manager.certs.pki_dir = None
    reply = engine.api.post("/api/v1/hosts/node1/certificate")
    error(reply, 409, "host")
    assert "enrol it instead" in reply.json()["error"]["reason"]
    assert ok(engine.api.get("/api/v1/hosts/node1"))["cert_fingerprint"] == before


def test_renew_due_renews_hosts_near_their_end(engine, host):
    from datetime import timedelta

    from multiconsole.engine.enrollment import renew_due

    state = engine.app.state
    before = ok(engine.api.get("/api/v1/hosts/node1"))["cert_fingerprint"]
    # 397-day certificates: nothing is due within 30 days, everything within 400.
    assert renew_due(state.sessions, state.agents, state.ca) == {}
    done = renew_due(state.sessions, state.agents, state.ca, within=timedelta(days=400))
    assert set(done) == {"node1"} and done["node1"].startswith("sha256:") and done["node1"] != before
    assert ok(engine.api.get("/api/v1/hosts/node1"))["cert_fingerprint"] == done["node1"]


def test_the_engine_renews_due_certificates_by_itself(tmp_path):
    """An engine that checks often, with everything due: the host's pin changes with no call."""
    import time

    (tmp_path / "e2").mkdir()
    e = Engine(tmp_path / "e2", cert_renew_interval=0.3, cert_renew_within_days=400)
    try:
        ok(e.api.post("/api/v1/clusters", json={"name": "prod"}), 201)
        t = e.token("node2")
        pki_dir, spice_dir = tmp_path / "node2-pki", tmp_path / "node2-spice"
        enroll(
            e.url, t["token"], pki_dir, ["127.0.0.1"], ca_fingerprint=t["ca_fingerprint"], spice_dir=spice_dir
        )
        h = TlsHost(tmp_path, pki_dir)
        h.manager.certs.pki_dir, h.manager.certs.spice_dir = pki_dir, spice_dir
        try:
            first = ok(e.add_host("node2", h.port), 201)["cert_fingerprint"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if ok(e.api.get("/api/v1/hosts/node2"))["cert_fingerprint"] != first:
                    break
                time.sleep(0.2)
            else:
                pytest.fail("the engine did not renew the host's certificate")
        finally:
            h.stop()
    finally:
        e.stop()
