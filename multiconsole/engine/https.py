"""The engine's HTTPS: the server certificate of the API, the web UI and the websocket proxy (wss).

Either the admin gives a certificate and its key (`--tls-cert/--tls-key`, e.g. from the
company's CA; used as is, never renewed here), or the engine serves one issued by its own CA
(`<pki dir>/https-cert.pem`, `https-key.pem`), made on first start for the names browsers and
the CLI reach it by, and made again at start when it ends within `pki.RENEW_BEFORE`, when a
name is missing, or when another CA issued it. Clients trust it through the CA certificate
(`GET /api/v1/pki/ca.pem`, `<data dir>/pki/ca-cert.pem`, `~/.config/multiconsole/ca.pem`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from multiconsole import pki

log = logging.getLogger(__name__)

SERVER_CERT, SERVER_KEY = "https-cert.pem", "https-key.pem"
SERVER_CN = "multiconsole engine (https)"
LOCAL_NAMES = ("127.0.0.1", "localhost")


class HttpsSetupError(ValueError):
    """A certificate or key the engine cannot serve with; the message says which file and why."""


@dataclass(frozen=True)
class ServerTls:
    cert_path: Path
    key_path: Path
    ours: bool  # issued by the engine's CA (and renewed by it)
    names: list[str]
    not_after: datetime
    fingerprint: str

    def server_context(self) -> ssl.SSLContext:
        """A server-side context with this certificate (the websocket proxy's wss)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def spki_sha256_b64(self) -> str:
        """base64(SHA-256(SubjectPublicKeyInfo)): what Chromium's
        --ignore-certificate-errors-spki-list pins (browser tests)."""
        return spki_pin(self.cert_path.read_bytes())


def spki_pin(cert_pem: bytes) -> str:
    import base64
    import hashlib

    spki = (
        pki.load_cert(cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _valid_name(name: str) -> bool:
    try:
        pki.general_names([name])
        return True
    except pki.PkiError:
        return False


def default_names(listen_host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names of the engine's own certificate: 127.0.0.1, localhost, the host's names, the
    listen address (unless a wildcard), then `extra` (e.g. --tls-name, the public origins)."""
    names = list(LOCAL_NAMES)
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and _valid_name(name):  # an odd host name is left out, not fatal
            names.append(name)
    host = listen_host.strip("[]")
    if host and host not in ("0.0.0.0", "::"):
        names.append(host)
    names.extend(extra)
    seen: dict[str, None] = {}
    for name in names:
        name = name.strip().strip("[]")
        try:
            name = str(ipaddress.ip_address(name))
        except ValueError:
            name = name.lower()
        if name:
            seen.setdefault(name, None)
    return list(seen)


def _describe(cert_path: Path, key_path: Path, ours: bool) -> ServerTls:
    pem = cert_path.read_bytes()
    cert = pki.load_cert(pem)
    return ServerTls(
        cert_path, key_path, ours, pki.san_strings(cert), cert.not_valid_after_utc, pki.fingerprint(pem)
    )


def _ours_ok(ca: pki.CertificateAuthority, cert_path: Path, key_path: Path, names: list[str]) -> bool:
    if not cert_path.exists() or not key_path.exists():
        return False
    pem = cert_path.read_bytes()
    try:
        cert = pki.load_cert(pem)
    except pki.PkiError:
        return False
    if not ca.issued(pem) or not pki.key_matches(cert, key_path.read_bytes()):
        return False
    if cert.not_valid_after_utc - datetime.now(UTC) <= pki.RENEW_BEFORE:
        return False
    have = {str(n) for n in pki.general_names(pki.san_strings(cert))}
    return all(str(n) in have for n in pki.general_names(names))


def own_certificate(ca: pki.CertificateAuthority, names: list[str]) -> ServerTls:
    """The engine's server certificate from its CA, made or renewed as the module says."""
    assert ca.directory is not None, "a CA kept in a directory"
    cert_path, key_path = ca.directory / SERVER_CERT, ca.directory / SERVER_KEY
    try:
        pki.general_names(names)
    except pki.PkiError as err:
        raise HttpsSetupError(f"the engine's certificate names: {err}") from None
    # One engine process at a time renews (two engines may share a data directory in tests).
    with open(ca.directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _ours_ok(ca, cert_path, key_path, names):
            renewing = cert_path.exists()
            pem, key = ca.issue(SERVER_CN, names, usage="server")
            assert key is not None
            pki.write_private(key_path, key)
            pki.write_public(cert_path, pem)
            log.warning(
                "engine https certificate %s names=%s", "renewed" if renewing else "created", ",".join(names)
            )
    return _describe(cert_path, key_path, ours=True)


def admin_certificate(cert_file: str | Path, key_file: str | Path) -> ServerTls:
    """The admin's certificate (first of the chain) and key, checked before serving with them."""
    cert_path, key_path = Path(cert_file), Path(key_file)
    try:
        pem, key = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as err:
        raise HttpsSetupError(f"cannot read {err.filename}: {err.strerror}") from None
    try:
        cert = pki.load_cert(pem)
    except pki.PkiError:
        raise HttpsSetupError(f"{cert_path} is not a PEM certificate") from None
    if not pki.key_matches(cert, key):
        raise HttpsSetupError(
            f"{key_path} is not the private key of {cert_path} (or not an unencrypted PEM key)"
        )
    left = cert.not_valid_after_utc - datetime.now(UTC)
    if left.total_seconds() <= 0:
        raise HttpsSetupError(f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if left <= pki.RENEW_BEFORE:
        log.warning(
            "engine https certificate ends soon file=%s not_after=%s (yours to renew, not the engine CA's)",
            cert_path,
            f"{cert.not_valid_after_utc:%Y-%m-%d}",
        )
    return _describe(cert_path, key_path, ours=False)
