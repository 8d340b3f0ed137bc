"""`multiconsole agent enroll`: get this host's certificate from the engine, with a one-time token.

The key is made here and stays here: the engine gets a certificate request and signs it.
Written to the PKI directory: agent-key.pem (0600), agent-cert.pem and ca-cert.pem, the
files `multiconsole agent --pki-dir` serves TLS with.

The engine is checked when its URL is https: against --ca-file, or against the CA whose
fingerprint --ca-fingerprint pins (what `multiconsole host token` prints), or else the
system's CAs. Whatever the URL, a pinned fingerprint must match the CA the engine sends
back, or nothing is written.

SPICE over TLS: when QEMU has SPICE TLS on (qemu.conf) and its certificate directory is
writable, a second key and request go along; the engine signs it as this host's SPICE
certificate (subject O=multiconsole,CN=<host name>) and ca-cert.pem, server-cert.pem and
server-key.pem are written there for QEMU (see multiconsole.agent.certs). VMs started
afterwards offer SPICE over TLS with them.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from multiconsole import pki
from multiconsole.agent import certs

AGENT_CERT, AGENT_KEY, CA_CERT = "agent-cert.pem", "agent-key.pem", "ca-cert.pem"
ENROLL_PATH = "/api/v1/hosts/enroll"
CA_PATH = "/api/v1/pki/ca.pem"


class EnrollError(Exception):
    pass


@dataclass
class Enrolled:
    host: str
    fingerprint: str
    not_after: object
    names: list[str]
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    spice_subject: str | None = None


def default_names() -> list[str]:
    """The names this host puts in its request when none are given: its host names (the engine
    ignores them: its certificate names <host>.host.multiconsole.invalid only)."""
    names = [socket.getfqdn(), socket.gethostname()]
    return [n for n in dict.fromkeys(names) if n and n != "localhost"]


def _verify(
    url: str, ca_file: Path | None, ca_fingerprint: str | None, timeout: float
) -> ssl.SSLContext | bool:
    """How to check an https:// engine before the token goes to it."""
    if ca_file is not None:
        return ssl.create_default_context(cafile=str(ca_file))
    if ca_fingerprint is None:
        return True  # the system's CAs
    # Fetch the CA unchecked, accept it only if it is the pinned one, then check the engine with it.
    try:
        reply = httpx.get(url + CA_PATH, verify=False, timeout=timeout)  # noqa: S501 (checked below)
        reply.raise_for_status()
        ca_pem = reply.text
    except httpx.HTTPError as err:
        raise EnrollError(f"cannot get the engine's CA from {url}: {err}") from None
    if not pki.same_fingerprint(pki.fingerprint(ca_pem), ca_fingerprint):
        raise EnrollError(f"the engine at {url} has another CA than {ca_fingerprint}: not enrolling")
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=ca_pem)
    return context


def enroll(
    engine_url: str,
    token: str,
    pki_dir: Path,
    names: list[str] | None = None,
    ca_file: Path | None = None,
    ca_fingerprint: str | None = None,
    timeout: float = 30.0,
    spice_dir: Path | None | bool = True,
) -> Enrolled:
    """`spice_dir`: where QEMU reads its SPICE certificates; True: where qemu.conf says
    (multiconsole.agent.certs.spice_cert_dir); False or None: no SPICE certificate."""
    url = engine_url.rstrip("/")
    warnings: list[str] = []
    if url.startswith("https://"):
        verify = _verify(url, ca_file, ca_fingerprint, timeout)
    elif url.startswith("http://"):
        verify = True
        warnings.append(
            f"{url} is plain HTTP: the token travels unencrypted"
            + ("" if ca_fingerprint else "; pass --ca-fingerprint to check the CA the engine sends back")
        )
    else:
        raise EnrollError(f"{engine_url!r}: the engine's URL starts with https:// or http://")
    names = names or default_names()
    csr, key = pki.make_csr(names[0] if names else socket.gethostname(), names)
    body_out = {"token": token, "csr": csr.decode()}
    if spice_dir is True:
        spice_dir = certs.spice_cert_dir()
    spice_key = None
    if isinstance(spice_dir, Path):
        if certs.writable(spice_dir):
            spice_csr, spice_key = pki.make_csr(names[0] if names else socket.gethostname())
            body_out["spice_csr"] = spice_csr.decode()
        else:
            warnings.append(f"cannot write {spice_dir}: no SPICE certificate (enrol as root for SPICE TLS)")
    try:
        reply = httpx.post(url + ENROLL_PATH, json=body_out, verify=verify, timeout=timeout)
    except httpx.HTTPError as err:
        raise EnrollError(f"cannot reach the engine at {url}: {err}") from None
    if reply.status_code != 200:
        try:
            reason = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = reply.text[:200] or reply.reason_phrase
        raise EnrollError(f"the engine refused: {reason}")
    body = reply.json()
    cert_pem, ca_pem = body["certificate"].encode(), body["ca_certificate"].encode()
    if ca_fingerprint and not pki.same_fingerprint(pki.fingerprint(ca_pem), ca_fingerprint):
        raise EnrollError(f"the engine sent another CA than {ca_fingerprint}: nothing written")
    try:
        cert = pki.load_cert(cert_pem)
        pki.load_cert(ca_pem)
    except pki.PkiError as err:
        raise EnrollError(f"the engine's answer is not a certificate ({err}): nothing written") from None
    if not pki.issued_by(cert_pem, ca_pem):
        raise EnrollError("the engine's certificate is not signed by its CA: nothing written")
    if not pki.key_matches(cert, key):
        raise EnrollError("the engine's certificate is not for this host's key: nothing written")
    spice_pem = (body.get("spice_certificate") or "").encode() if spice_key is not None else b""
    if spice_key is not None and not spice_pem:
        warnings.append("the engine signed no SPICE certificate: SPICE TLS keeps its present certificates")
    spice_files: list[Path] = []
    if spice_pem:
        assert isinstance(spice_dir, Path) and spice_key is not None
        try:
            spice_files = certs.install_spice(spice_dir, ca_pem, spice_pem, spice_key)
        except (certs.CertificateError, pki.PkiError, OSError) as err:
            raise EnrollError(f"SPICE certificates: {err}") from None
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki.write_private(pki_dir / AGENT_KEY, key)
    pki.write_public(pki_dir / AGENT_CERT, cert_pem)
    pki.write_public(pki_dir / CA_CERT, ca_pem)
    return Enrolled(
        host=body["host"],
        fingerprint=pki.fingerprint(cert_pem),
        not_after=cert.not_valid_after_utc,
        names=pki.san_strings(cert),
        files=[pki_dir / AGENT_CERT, pki_dir / AGENT_KEY, pki_dir / CA_CERT, *spice_files],
        warnings=warnings,
        spice_subject=pki.cert_subject_string(spice_pem) if spice_pem else None,
    )
