"""The engine's certificate authority and the certificates of the engine and its hosts.

The engine makes its CA on first start (`<data dir>/pki`: ca-cert.pem, ca-key.pem) and,
with it, its own client certificate (engine-cert.pem, engine-key.pem). A host makes its
key and a certificate request itself; the engine signs the request at enrolment, so a
host's private key never leaves the host. Engine and agents speak TLS with client
certificates: the agent accepts clients whose certificate this CA issued for client
authentication (only the engine's), the engine accepts an agent whose certificate is
the one that host enrolled with (pinned by its SHA-256 fingerprint).

Keys are ECDSA P-256. Private keys are written mode 0600, atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Usage = Literal["server", "client", "both"]
CA_CERT, CA_KEY = "ca-cert.pem", "ca-key.pem"
ENGINE_CERT, ENGINE_KEY = "engine-cert.pem", "engine-key.pem"
ENGINE_CN = "multiconsole engine"
CA_DAYS = 3650
CERT_DAYS = 397  # what browsers accept for server certificates; hosts' are renewed by the engine
RENEW_BEFORE = timedelta(days=30)  # the engine renews its own certificate this long before it ends
MAX_SANS = 16
_USAGES = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "both": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
}


class PkiError(ValueError):
    """A certificate, key or request that cannot be used."""


# --- small helpers --------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _bytes(pem: bytes | str) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


def load_cert(pem: bytes | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_bytes(pem))
    except ValueError as err:
        raise PkiError(f"not a PEM certificate: {err}") from None


def fingerprint_der(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def fingerprint(pem: bytes | str) -> str:
    """'sha256:<hex>' of the certificate's DER form (what `openssl x509 -fingerprint -sha256` shows)."""
    return fingerprint_der(load_cert(pem).public_bytes(serialization.Encoding.DER))


def same_fingerprint(a: str, b: str) -> bool:
    """Fingerprints compared as users type them: any case, with or without colons."""

    def norm(f: str) -> str:
        f = f.strip().lower()
        f = f.removeprefix("sha256:")
        return f.replace(":", "")

    return norm(a) == norm(b)


def general_names(sans: Iterable[str]) -> list[x509.GeneralName]:
    """IP addresses and DNS names as subjectAltName entries."""
    out: list[x509.GeneralName] = []
    for san in sans:
        san = san.strip().strip("[]")
        if not san:
            continue
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            if not all(c.isalnum() or c in ".-_*" for c in san) or len(san) > 253:
                raise PkiError(f"{san!r} is neither an IP address nor a DNS name") from None
            out.append(x509.DNSName(san.lower()))
    if len(out) > MAX_SANS:
        raise PkiError(f"at most {MAX_SANS} names and addresses")
    return list(dict.fromkeys(out))


def san_strings(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.get_values_for_type(x509.IPAddress)] + ext.get_values_for_type(x509.DNSName)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def describe(pem: bytes | str) -> dict:
    """What a person wants to know about a certificate."""
    cert = load_cert(pem)
    return {
        "subject": common_name(cert),
        "issuer": ", ".join(str(a.value) for a in cert.issuer),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "names": san_strings(cert),
        "fingerprint": fingerprint(pem),
    }


def key_matches(cert: bytes | str | x509.Certificate, key: bytes | str) -> bool:
    """Whether the private key `key` (PEM) is the key of `cert`."""
    if not isinstance(cert, x509.Certificate):
        cert = load_cert(cert)
    try:
        private = serialization.load_pem_private_key(_bytes(key), password=None)
    except (ValueError, TypeError):
        return False
    return private.public_key().public_numbers() == cert.public_key().public_numbers()


def issued_by(cert: bytes | str, ca: bytes | str) -> bool:
    """Whether the CA certificate `ca` signed `cert` (signature only; not dates or usage)."""
    try:
        load_cert(cert).verify_directly_issued_by(load_cert(ca))
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def write_file(path: Path, data: bytes, mode: int, gid: int | None = None) -> None:
    """Write atomically (a temporary file renamed over `path`), with `mode` (and group `gid`)
    from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    write_file(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    write_file(path, data, 0o644)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One process at a time makes a directory's CA and engine certificate."""
    with open(directory / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_csr(common_name_: str, sans: Iterable[str] = ()) -> tuple[bytes, bytes]:
    """A new private key and a certificate request for it: (csr_pem, key_pem)."""
    key = new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name_[:64] or "multiconsole host")])
    )
    names = general_names(sans)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM), key_pem(key)


def _check_public_key(key) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise PkiError(f"elliptic curve {key.curve.name} is not accepted (P-256, P-384, P-521)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise PkiError(f"an RSA key of {key.key_size} bits is too small (2048 at least)")
    else:
        raise PkiError(f"{type(key).__name__} keys are not accepted (ECDSA or RSA)")


# --- SPICE server certificates -------------------------------------------------------------
#
# remote-viewer checks the SPICE server's certificate against the `.vv`'s `ca` and compares
# its subject with `host-subject`: "key=value" pairs joined by ",", in the certificate's
# order, compared as an X.509 name (spice-gtk: spice-common/common/ssl_verify.c). We give
# hosts a simple subject, O=multiconsole,CN=<host name>, whose values need no escaping.

SPICE_ORGANIZATION = "multiconsole"
_SUBJECT_KEYS = {NameOID.COUNTRY_NAME: "C", NameOID.ORGANIZATION_NAME: "O", NameOID.COMMON_NAME: "CN"}
_SUBJECT_FORBIDDEN = set(',=\\+"<>#;/\r\n\x00')


def spice_subject_name(host_name: str) -> x509.Name:
    """The subject of the SPICE certificate of the host `host_name`."""
    if (
        not host_name
        or len(host_name) > 64
        or _SUBJECT_FORBIDDEN & set(host_name)
        or host_name != host_name.strip()
    ):
        raise PkiError(f"host name {host_name!r} cannot be a certificate subject")
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SPICE_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, host_name),
        ]
    )


# Every host certificate's only name: never a real server's (RFC 6761 reserves .invalid).
HOST_NAME_SUFFIX = ".host.multiconsole.invalid"


def host_subject(host_name: str) -> x509.Name:
    """The subject of a host's certificates (agent and SPICE): O=multiconsole,CN=<host name>."""
    return spice_subject_name(host_name)


def host_dns_name(host_name: str) -> str:
    """The one subjectAltName of a host's certificates: <host name>.host.multiconsole.invalid."""
    spice_subject_name(host_name)  # the same names are accepted
    return host_name.lower() + HOST_NAME_SUFFIX


def subject_string(name: x509.Name) -> str:
    """An X.509 name as remote-viewer's `host-subject` reads it: "O=multiconsole,CN=kvm1"
    (the certificate's order, unlike RFC 4514's reversed one)."""
    parts = []
    for attr in name:
        key = _SUBJECT_KEYS.get(attr.oid)
        value = str(attr.value)
        if key is None or _SUBJECT_FORBIDDEN & set(value):
            raise PkiError(
                f"subject attribute {attr.oid.dotted_string}={value!r} cannot be written as a host-subject"
            )
        parts.append(f"{key}={value}")
    return ",".join(parts)


def cert_subject_string(pem: bytes | str) -> str:
    return subject_string(load_cert(pem).subject)


def not_after(pem: bytes | str) -> datetime:
    return load_cert(pem).not_valid_after_utc


# --- the CA ---------------------------------------------------------------------------------


class CertificateAuthority:
    """The engine's CA: a self-signed certificate and its key, in one directory."""

    def __init__(self, cert: x509.Certificate, key, directory: Path | None = None):
        self.cert, self.key, self.directory = cert, key, directory

    @classmethod
    def create(cls, name: str | None = None, days: int = CA_DAYS) -> CertificateAuthority:
        """A new CA in memory (tests; `load_or_create` for the engine's)."""
        key = new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "multiconsole"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, name or f"multiconsole CA {socket.gethostname()}"[:64]
                ),
            ]
        )
        start = datetime.now(UTC) - timedelta(minutes=5)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, directory: Path | str, name: str | None = None) -> CertificateAuthority:
        """The CA in `directory` (ca-cert.pem, ca-key.pem), made there if it has none."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        cert_path, key_path = directory / CA_CERT, directory / CA_KEY
        with _locked(directory):
            if not key_path.exists() or not cert_path.exists():
                if key_path.exists() or cert_path.exists():
                    raise PkiError(f"{directory} has only one of {CA_CERT} and {CA_KEY}: restore the other")
                ca = cls.create(name)
                write_private(key_path, key_pem(ca.key))
                write_public(cert_path, ca.cert_pem)
            ca = cls.load(directory)
        return ca

    @classmethod
    def load(cls, directory: Path | str) -> CertificateAuthority:
        directory = Path(directory)
        cert = load_cert((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise PkiError(f"{directory / CA_KEY} is not the key of {directory / CA_CERT}")
        return cls(cert, key, directory)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert_pem)

    @property
    def cert_path(self) -> Path:
        assert self.directory is not None
        return self.directory / CA_CERT

    def issue(
        self,
        common_name_: str,
        sans: Iterable[str] = (),
        usage: Usage = "server",
        days: int = CERT_DAYS,
        public_key=None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        subject: x509.Name | None = None,
    ) -> tuple[bytes, bytes | None]:
        """A certificate signed by this CA: (cert_pem, key_pem), key_pem None when `public_key`
        was given (the holder has the private key). The subject is CN=`common_name_` unless
        `subject` is given."""
        key = None
        if public_key is None:
            key = new_key()
            public_key = key.public_key()
        _check_public_key(public_key)
        if usage not in _USAGES:
            raise PkiError(f"usage must be server, client or both, not {usage!r}")
        start = not_before or datetime.now(UTC) - timedelta(minutes=5)
        end = not_after or start + timedelta(days=days)
        end = min(end, self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name_[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(_USAGES[usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        names = general_names(sans)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert_pem(cert), key_pem(key) if key is not None else None

    def sign_csr(
        self,
        csr_pem: bytes | str,
        common_name_: str | None = None,
        usage: Usage = "server",
        days: int = CERT_DAYS,
        sans: Iterable[str] = (),
        subject: x509.Name | None = None,
    ) -> bytes:
        """Sign the public key of a certificate request whose signature checks out. Only the
        key is taken from the request: the subject is `subject`, else CN=`common_name_`, else
        CN=multiconsole host, the names are `sans`, and the extensions are this CA's. A request
        never chooses what the certificate says (it could ask for the engine's own names)."""
        try:
            csr = x509.load_pem_x509_csr(_bytes(csr_pem))
        except ValueError as err:
            raise PkiError(f"not a PEM certificate request: {err}") from None
        if not csr.is_signature_valid:
            raise PkiError("the certificate request's signature does not match its key")
        cn = common_name_ or "multiconsole host"
        pem, _ = self.issue(cn, sans, usage=usage, days=days, public_key=csr.public_key(), subject=subject)
        return pem

    def sign_host_csr(self, csr_pem: bytes | str, host_name: str, days: int = CERT_DAYS) -> bytes:
        """A host's certificate (its agent's or its SPICE one) for the key of `csr_pem`:
        subject O=multiconsole,CN=<host name>, one name, <host name>.host.multiconsole.invalid,
        server authentication. The engine pins an agent's certificate by fingerprint and
        remote-viewer checks the SPICE one by its subject, so neither needs a real server
        name; with a DNS name that no server can have (RFC 6761 `.invalid`) and no IP address,
        no client takes it for the engine or any other server, nor falls back to the CN."""
        return self.sign_csr(
            csr_pem,
            usage="server",
            days=days,
            sans=[host_dns_name(host_name)],
            subject=host_subject(host_name),
        )

    def issued(self, pem: bytes | str) -> bool:
        """Whether this CA signed `pem` (signature only; not dates or usage)."""
        return issued_by(pem, self.cert_pem)

    def engine_identity(self) -> tuple[Path, Path]:
        """The engine's client certificate (engine-cert.pem, engine-key.pem beside the CA),
        made or renewed when missing, not from this CA, or ending within RENEW_BEFORE."""
        assert self.directory is not None, "a CA kept in a directory"
        cert_path, key_path = self.directory / ENGINE_CERT, self.directory / ENGINE_KEY
        with _locked(self.directory):
            if not self._engine_identity_ok(cert_path, key_path):
                pem, key = self.issue(ENGINE_CN, usage="client")
                assert key is not None
                write_private(key_path, key)
                write_public(cert_path, pem)
        return cert_path, key_path

    def _engine_identity_ok(self, cert_path: Path, key_path: Path) -> bool:
        if not cert_path.exists() or not key_path.exists():
            return False
        pem = cert_path.read_bytes()
        try:
            cert = load_cert(pem)
        except PkiError:
            return False
        if not key_matches(cert, key_path.read_bytes()) or not self.issued(pem):
            return False
        return cert.not_valid_after_utc - datetime.now(UTC) > RENEW_BEFORE
