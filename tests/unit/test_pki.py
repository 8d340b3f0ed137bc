"""The CA and certificates (multiconsole.pki): creation, chains, fingerprints, requests, file modes."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from multiconsole import pki


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify_server(ca: pki.CertificateAuthority, pem: bytes, name: str, at: datetime | None = None):
    """Verify `pem` as a TLS server certificate for `name` with cryptography's verifier (RFC 5280)."""
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    builder = PolicyBuilder().store(Store([ca.cert])).time(at or datetime.now(UTC))
    return builder.build_server_verifier(subject).verify(pki.load_cert(pem), [])


def verify_client(
    ca: pki.CertificateAuthority, pem: bytes, key: bytes | None = None, tmp: Path | None = None
):
    """Verify `pem` as a TLS client certificate the way the agent does: OpenSSL, in a handshake
    (in memory) with a server that requires client certificates from `ca`."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(dir=tmp))
    server_pem, server_key = ca.issue("server", ["127.0.0.1"])
    for name, data in (("ca", ca.cert_pem), ("s", server_pem), ("sk", server_key), ("c", pem), ("ck", key)):
        (tmp / name).write_bytes(data or b"")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp / "s", tmp / "sk")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(tmp / "ca")
    client_ctx = ssl.create_default_context(cafile=tmp / "ca")
    client_ctx.check_hostname = False
    if key is not None:
        client_ctx.load_cert_chain(tmp / "c", tmp / "ck")
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out)
    done = set()
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if side not in done:
                try:
                    obj.do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            return
    raise AssertionError("handshake did not finish")


def eku(pem: bytes) -> set:
    cert = pki.load_cert(pem)
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_is_made_once_with_private_key_files(tmp_path):
    d = tmp_path / "pki"
    ca = pki.CertificateAuthority.load_or_create(d)
    assert (d / "ca-cert.pem").exists() and (d / "ca-key.pem").exists()
    assert mode(d / "ca-key.pem") == 0o600
    assert mode(d) == 0o700
    again = pki.CertificateAuthority.load_or_create(d)
    assert again.fingerprint == ca.fingerprint
    assert (d / "ca-cert.pem").read_bytes() == ca.cert_pem

    cert = ca.cert
    assert pki.common_name(cert).startswith("multiconsole CA ")
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= timedelta(days=3649)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(cert)  # self-signed


def test_ca_with_only_one_file_is_an_error(tmp_path):
    d = tmp_path / "pki"
    pki.CertificateAuthority.load_or_create(d)
    (d / "ca-key.pem").unlink()
    with pytest.raises(pki.PkiError, match="only one"):
        pki.CertificateAuthority.load_or_create(d)


def test_ca_key_must_match_its_certificate(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    pki.CertificateAuthority.load_or_create(a)
    pki.CertificateAuthority.load_or_create(b)
    (a / "ca-key.pem").write_bytes((b / "ca-key.pem").read_bytes())
    with pytest.raises(pki.PkiError, match="not the key"):
        pki.CertificateAuthority.load(a)


def test_issued_server_certificate_verifies_for_its_names(tmp_path):
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "pki")
    pem, key = ca.issue("node1", ["10.0.0.5", "node1.example.org"], usage="server")
    assert key is not None and pki.key_matches(pem, key)
    verify_server(ca, pem, "10.0.0.5")
    verify_server(ca, pem, "node1.example.org")
    with pytest.raises(VerificationError):
        verify_server(ca, pem, "other.example.org")
    with pytest.raises(ssl.SSLError, match="unsuitable certificate purpose"):
        verify_client(ca, pem, key)  # server only: cannot act as the engine
    assert eku(pem) == {ExtendedKeyUsageOID.SERVER_AUTH}
    cert = pki.load_cert(pem)
    assert pki.common_name(cert) == "node1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=398)
    assert sorted(pki.san_strings(cert)) == ["10.0.0.5", "node1.example.org"]


def test_client_and_both_usages(tmp_path):
    ca = pki.CertificateAuthority.create()
    client, key = ca.issue("multiconsole engine", usage="client")
    verify_client(ca, client, key)
    with pytest.raises(ssl.SSLError, match="certificate"):
        verify_client(ca, b"", None)  # no certificate at all
    assert eku(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    both, key = ca.issue("x", ["127.0.0.1"], usage="both")
    verify_client(ca, both, key)
    verify_server(ca, both, "127.0.0.1")
    with pytest.raises(pki.PkiError, match="usage"):
        ca.issue("x", usage="bogus")  # type: ignore[arg-type]


def test_certificate_of_another_ca_or_out_of_dates_does_not_verify(tmp_path):
    ca, other = pki.CertificateAuthority.create(), pki.CertificateAuthority.create()
    pem, _ = other.issue("node", ["127.0.0.1"])
    with pytest.raises(VerificationError):
        verify_server(ca, pem, "127.0.0.1")
    assert not ca.issued(pem) and other.issued(pem)
    past = datetime.now(UTC) - timedelta(days=2)
    old, _ = ca.issue("node", ["127.0.0.1"], not_before=past - timedelta(days=10), not_after=past)
    with pytest.raises(VerificationError):
        verify_server(ca, old, "127.0.0.1")


def test_certificates_never_outlive_the_ca():
    ca = pki.CertificateAuthority.create(days=10)
    pem, _ = ca.issue("node", days=397)
    assert pki.load_cert(pem).not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_fingerprint_is_sha256_of_der_in_any_spelling():
    ca = pki.CertificateAuthority.create()
    pem, _ = ca.issue("node")
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert pki.fingerprint(pem) == expected == pki.fingerprint(pem.decode()) == pki.fingerprint_der(der)
    colons = ":".join(expected[7:][i : i + 2] for i in range(0, 64, 2)).upper()
    assert pki.same_fingerprint(expected, colons)
    assert pki.same_fingerprint(expected, expected[7:].upper())
    assert not pki.same_fingerprint(expected, pki.fingerprint(ca.issue("node")[0]))
    with pytest.raises(pki.PkiError):
        pki.fingerprint(b"not a certificate")


def test_csr_is_signed_with_the_engine_choosing_subject_names_and_usage():
    ca = pki.CertificateAuthority.create()
    csr, key = pki.make_csr("node1.example.org", ["node1.example.org", "192.0.2.7", "[2001:db8::1]"])
    parsed = x509.load_pem_x509_csr(csr)
    assert parsed.is_signature_valid
    pem = ca.sign_csr(csr, common_name_="node1", usage="server")
    cert = pki.load_cert(pem)
    assert pki.common_name(cert) == "node1"
    assert pki.san_strings(cert) == []  # the request's names are never copied
    assert pki.key_matches(cert, key)  # the key never left the "host"
    assert eku(pem) == {ExtendedKeyUsageOID.SERVER_AUTH}
    with pytest.raises(VerificationError):
        verify_server(ca, pem, "192.0.2.7")
    # Nor the request's subject when the engine gives none.
    assert pki.common_name(pki.load_cert(ca.sign_csr(csr))) == "multiconsole host"
    # A host's certificate: the engine's subject and its one name under .invalid.
    host = pki.load_cert(ca.sign_host_csr(csr, "node1"))
    assert pki.subject_string(host.subject) == "O=multiconsole,CN=node1"
    assert pki.san_strings(host) == ["node1.host.multiconsole.invalid"]
    assert eku(pki.cert_pem(host)) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_bad_requests_are_refused():
    ca = pki.CertificateAuthority.create()
    with pytest.raises(pki.PkiError, match="not a PEM"):
        ca.sign_csr(b"garbage")
    csr, _ = pki.make_csr("a")
    parsed = x509.load_pem_x509_csr(csr)
    weak = rsa.generate_private_key(65537, 1024)
    weak_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(parsed.subject)
        .sign(weak, pki.hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(pki.PkiError, match="too small"):
        ca.sign_csr(weak_csr)
    with pytest.raises(pki.PkiError, match="neither"):
        pki.make_csr("a", ["not a name!"])
    with pytest.raises(pki.PkiError, match="at most"):
        pki.make_csr("a", [f"10.0.0.{i}" for i in range(20)])


def test_csr_whose_signature_does_not_match_is_refused():
    ca = pki.CertificateAuthority.create()
    csr, _ = pki.make_csr("a", ["a.example"])
    der = bytearray(x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # flip a bit of the signature
    bad = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(pki.PkiError, match="signature"):
        ca.sign_csr(bad)


def test_engine_identity_is_made_kept_and_renewed(tmp_path):
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "pki")
    cert_path, key_path = ca.engine_identity()
    assert mode(key_path) == 0o600
    pem = cert_path.read_bytes()
    assert pki.common_name(pki.load_cert(pem)) == pki.ENGINE_CN
    assert eku(pem) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    verify_client(ca, pem, key_path.read_bytes())
    assert ca.engine_identity() == (cert_path, key_path)
    assert cert_path.read_bytes() == pem  # kept
    # Ending soon: renewed.
    soon, key = ca.issue(pki.ENGINE_CN, usage="client", days=10)
    pki.write_public(cert_path, soon)
    pki.write_private(key_path, key)
    ca.engine_identity()
    renewed = pki.load_cert(cert_path.read_bytes())
    assert renewed.not_valid_after_utc - datetime.now(UTC) > timedelta(days=300)
    # From another CA (the CA was replaced): renewed.
    other, key = pki.CertificateAuthority.create().issue(pki.ENGINE_CN, usage="client")
    pki.write_public(cert_path, other)
    pki.write_private(key_path, key)
    ca.engine_identity()
    assert ca.issued(cert_path.read_bytes())


def test_write_private_is_atomic_and_0600_from_the_start(tmp_path):
    path = tmp_path / "k.pem"
    path.write_text("old")
    path.chmod(0o644)
    pki.write_private(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_describe():
    ca = pki.CertificateAuthority.create(name="test CA")
    pem, _ = ca.issue("node", ["127.0.0.1"])
    info = pki.describe(pem)
    assert info["subject"] == "node" and "test CA" in info["issuer"]
    assert info["names"] == ["127.0.0.1"] and info["fingerprint"] == pki.fingerprint(pem)
