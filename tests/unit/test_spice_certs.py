"""SPICE over TLS, the pure parts: certificate subjects, QEMU's certificate directory, the
agent's side of renewal, `.vv` TLS keys and TLS-only SPICE in the domain XML."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID
from lxml import etree

from multiconsole import pki
from multiconsole.agent import certs, domxml
from multiconsole.agent.domxml import HostDisplay
from multiconsole.domain.errors import FieldError
from multiconsole.wire import vvfile
from multiconsole.wire.vmcreate import parse_vm_params

ALL = "smain,sdisplay,sinputs,scursor,splayback,srecord,ssmartcard,susbredir"


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.create("test CA")


# --- subjects ------------------------------------------------------------------------------------


def test_spice_subject_is_organization_then_host_name(ca):
    csr, _key = pki.make_csr("ignored")
    pem = ca.sign_csr(csr, usage="server", subject=pki.spice_subject_name("kvm-1.example"))
    cert = pki.load_cert(pem)
    assert [a.oid for a in cert.subject] == [NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME]
    # remote-viewer's host-subject: the certificate's order, comma separated.
    assert pki.cert_subject_string(pem) == "O=multiconsole,CN=kvm-1.example"
    assert pki.issued_by(pem, ca.cert_pem)


@pytest.mark.parametrize("name", ["", "a,b", "a=b", "x\\y", " lead", "new\nline", "a+b", "x" * 65])
def test_names_that_would_not_survive_a_host_subject_are_refused(name):
    with pytest.raises(pki.PkiError, match="certificate subject"):
        pki.spice_subject_name(name)


def test_subject_string_refuses_attributes_it_cannot_write(ca):
    pem, _ = ca.issue("a,b")  # CN with a comma: host-subject would split it
    with pytest.raises(pki.PkiError, match="host-subject"):
        pki.cert_subject_string(pem)


# --- where QEMU reads its certificates ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", None),
        ("#spice_tls = 1\n", None),
        ("spice_tls = 0\n", None),
        ("spice_tls = 1\n", Path("/etc/pki/qemu")),
        ('spice_tls = 1\ndefault_tls_x509_cert_dir = "/srv/tls"\n', Path("/srv/tls")),
        (
            'default_tls_x509_cert_dir = "/srv/tls"\n  spice_tls=1\n'
            'spice_tls_x509_cert_dir = "/etc/pki/libvirt-spice"\n',
            Path("/etc/pki/libvirt-spice"),
        ),
    ],
)
def test_spice_cert_dir_from_qemu_conf(tmp_path, monkeypatch, text, expected):
    monkeypatch.delenv(certs.ENV_SPICE_DIR, raising=False)
    conf = tmp_path / "qemu.conf"
    conf.write_text(text)
    assert certs.spice_cert_dir(conf) == expected
    assert certs.spice_tls_on(conf) is (expected is not None)


def test_spice_cert_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(certs.ENV_SPICE_DIR, str(tmp_path / "spice"))
    assert certs.spice_cert_dir(tmp_path / "missing.conf") == tmp_path / "spice"


def spice_pair(ca, subject="node1") -> tuple[bytes, bytes]:
    csr, key = pki.make_csr(subject)
    return ca.sign_csr(csr, usage="server", subject=pki.spice_subject_name(subject)), key


def test_install_spice_writes_files_qemu_can_read(tmp_path, ca):
    cert, key = spice_pair(ca)
    d = tmp_path / "spice"
    files = certs.install_spice(d, ca.cert_pem, cert, key)
    assert [f.name for f in files] == ["ca-cert.pem", "server-cert.pem", "server-key.pem"]
    assert (d / "server-cert.pem").read_bytes() == cert and (d / "ca-cert.pem").read_bytes() == ca.cert_pem
    gid = certs._qemu_gid()
    key_mode = stat.S_IMODE((d / "server-key.pem").stat().st_mode)
    assert key_mode == (0o640 if gid is not None else 0o600)
    assert stat.S_IMODE((d / "server-cert.pem").stat().st_mode) == 0o644
    if gid is not None:
        assert {(d / n).stat().st_gid for n in ("ca-cert.pem", "server-cert.pem", "server-key.pem")} == {gid}
        assert d.stat().st_gid == gid and stat.S_IMODE(d.stat().st_mode) == 0o750
    assert certs.spice_files_present(d)
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_install_spice_refuses_a_mismatch_and_writes_nothing(tmp_path, ca):
    cert, _key = spice_pair(ca)
    _other_cert, other_key = spice_pair(ca)
    with pytest.raises(certs.CertificateError, match="not for the SPICE key"):
        certs.install_spice(tmp_path / "a", ca.cert_pem, cert, other_key)
    cert, key = spice_pair(pki.CertificateAuthority.create("other"))
    with pytest.raises(certs.CertificateError, match="not signed by the CA"):
        certs.install_spice(tmp_path / "b", ca.cert_pem, cert, key)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- the agent's side of renewal ------------------------------------------------------------------


@pytest.fixture
def host_dirs(tmp_path, ca):
    pki_dir = tmp_path / "pki"
    cert, key = ca.issue("node1", ["127.0.0.1"])
    pki.write_public(pki_dir / "agent-cert.pem", cert)
    pki.write_private(pki_dir / "agent-key.pem", key)
    pki.write_public(pki_dir / "ca-cert.pem", ca.cert_pem)
    return pki_dir, tmp_path / "spice"


def test_renewal_request_then_install(host_dirs, ca):
    pki_dir, spice_dir = host_dirs
    reloads = []
    store = certs.Certificates(pki_dir, spice_dir, reload=lambda: reloads.append(1))
    old = (pki_dir / "agent-cert.pem").read_bytes()
    req = store.request()
    assert "PRIVATE" not in req["csr"] and req["spiceCsr"]
    new = ca.sign_csr(req["csr"], common_name_="node1").decode()
    spice = ca.sign_csr(req["spiceCsr"], subject=pki.spice_subject_name("node1")).decode()
    done = store.install(new, ca.cert_pem.decode(), spice)
    assert done["fingerprint"] == pki.fingerprint(new) != pki.fingerprint(old)
    assert done["spiceSubject"] == "O=multiconsole,CN=node1"
    assert pki.key_matches(new, (pki_dir / "agent-key.pem").read_bytes())
    assert stat.S_IMODE((pki_dir / "agent-key.pem").stat().st_mode) == 0o600
    assert (spice_dir / "server-cert.pem").read_text() == spice
    assert reloads == [1]
    # The request is spent.
    with pytest.raises(certs.CertificateError, match="no certificate request is pending"):
        store.install(new, ca.cert_pem.decode(), None)
    assert store.status()["spice"]["subject"] == "O=multiconsole,CN=node1"


def test_renewal_refuses_another_ca_another_key_and_unrequested_spice(host_dirs, ca):
    pki_dir, _spice = host_dirs
    before = (pki_dir / "agent-cert.pem").read_bytes()
    store = certs.Certificates(pki_dir, None)
    other = pki.CertificateAuthority.create("other")

    req = store.request()
    assert req["spiceCsr"] is None
    signed_by_other = other.sign_csr(req["csr"]).decode()
    with pytest.raises(certs.CertificateError, match="not the CA this host enrolled with"):
        store.install(signed_by_other, other.cert_pem.decode(), None)

    req = store.request()
    with pytest.raises(certs.CertificateError, match="not signed by this host's CA"):
        store.install(other.sign_csr(req["csr"]).decode(), ca.cert_pem.decode(), None)

    store.request()
    foreign_csr, _ = pki.make_csr("node1")
    with pytest.raises(certs.CertificateError, match="not for the key of the pending request"):
        store.install(ca.sign_csr(foreign_csr).decode(), ca.cert_pem.decode(), None)

    req = store.request()
    spice_csr, _ = pki.make_csr("node1")
    with pytest.raises(certs.CertificateError, match="spiceCertificate was not requested"):
        store.install(ca.sign_csr(req["csr"]).decode(), ca.cert_pem.decode(), ca.sign_csr(spice_csr).decode())
    assert (pki_dir / "agent-cert.pem").read_bytes() == before


def test_an_insecure_agent_has_nothing_to_renew(tmp_path):
    with pytest.raises(certs.CertificateError, match="plain HTTP"):
        certs.Certificates(None, tmp_path).request()


# --- .vv files -------------------------------------------------------------------------------------


def parsed(text: str) -> dict[str, str]:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    return dict(cp["virt-viewer"])


TICKET = {
    "protocol": "spice",
    "address": "10.0.0.5",
    "port": None,
    "password": "Ab3+/x9Q",
    "ttl": 120,
    "vm": "web",
    "tls_port": 5902,
}


def test_vv_from_a_tls_ticket_carries_ca_subject_and_the_vms_secure_channels(ca):
    pem = ca.cert_pem.decode()
    keys = parsed(
        vvfile.from_ticket(
            {
                **TICKET,
                "host_subject": "O=multiconsole,CN=kvm1",
                "ca": pem,
                "secure_channels": ["main", "inputs"],
            }
        )
    )
    assert keys["port"] == "-1" and keys["tls-port"] == "5902"
    assert keys["host-subject"] == "O=multiconsole,CN=kvm1"
    assert keys["ca"].replace("\\n", "\n") == pem.strip()
    assert keys["secure-channels"] == "main;inputs"
    # No channel chosen on the VM: all secure, the file can check the host.
    keys = parsed(vvfile.from_ticket({**TICKET, "host_subject": "O=multiconsole,CN=kvm1", "ca": pem}))
    assert keys["secure-channels"] == vvfile.SECURE_CHANNELS


def test_vv_without_a_ca_asks_for_no_secure_channel():
    # A host with SPICE TLS but no certificate from the engine: remote-viewer could not check it.
    keys = parsed(vvfile.from_ticket({**TICKET, "port": 5901, "host_subject": None, "ca": None}))
    assert keys["tls-port"] == "5902" and "secure-channels" not in keys and "ca" not in keys


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"ca": "[virt-viewer]\ntype=vnc"}, "ca"),
        ({"ca": "-----BEGIN CERTIFICATE-----\n[virt-viewer]\n"}, "ca"),
        ({"host_subject": "CN=x\nhost=evil"}, "host_subject"),
        ({"secure_channels": ["main", "x\nproxy=evil"]}, "secure_channels"),
    ],
)
def test_vv_refuses_values_that_would_add_keys(extra, field):
    with pytest.raises(FieldError) as err:
        vvfile.from_ticket({**TICKET, "ca": "-----BEGIN CERTIFICATE-----\nAA==\n", **extra})
    assert err.value.field == field


# --- domain XML --------------------------------------------------------------------------------------

TLS_HOST = HostDisplay(virt_type="qemu", spice_tls=True)


def spice_element(channels: str, host: HostDisplay = TLS_HOST) -> etree._Element:
    p = {
        "vmId": "6c1b7a8e-3f55-4a8b-9d2e-2f4c8a1e9b01",
        "vmName": "tls",
        "devices": [
            {"type": "video", "device": "qxl"},
            {"type": "graphics", "device": "spice", "specParams": {"spiceSecureChannels": channels}},
        ],
    }
    root = etree.fromstring(domxml.build(parse_vm_params(p), p, host).encode())
    return root.find("devices/graphics[@type='spice']")


def test_every_channel_secure_makes_a_tls_only_console():
    el = spice_element(ALL)
    assert el.get("defaultMode") == "secure"
    assert len(el.findall("channel[@mode='secure']")) == 8


def test_some_channels_secure_keep_the_plain_port():
    el = spice_element("smain,sinputs")
    assert el.get("defaultMode") is None and len(el.findall("channel")) == 2


def test_without_spice_tls_no_secure_mode_at_all():
    el = spice_element(ALL, HostDisplay(virt_type="qemu", spice_tls=False))
    assert el.get("defaultMode") is None and el.findall("channel") == []


def test_spice_files_from_another_ca_are_noticed(host_dirs, ca):
    pki_dir, spice_dir = host_dirs
    store = certs.Certificates(pki_dir, spice_dir)
    assert not store.spice_from_ca()  # nothing there yet
    other = pki.CertificateAuthority.create("placeholder")
    certs.install_spice(spice_dir, other.cert_pem, *spice_pair(other))
    assert not store.spice_from_ca()
    certs.install_spice(spice_dir, ca.cert_pem, *spice_pair(ca))
    assert store.spice_from_ca()
    assert certs.Certificates(pki_dir, None).spice_from_ca()  # no SPICE TLS: nothing to say
