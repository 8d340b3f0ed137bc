"""The host's certificates: the agent's own (TLS to the engine) and QEMU's SPICE ones.

SPICE over TLS: libvirt passes QEMU the directory `spice_tls_x509_cert_dir` of
/etc/libvirt/qemu.conf (ours: /etc/pki/libvirt-spice, set by scripts/setup.sh) and QEMU
reads ca-cert.pem, server-cert.pem and server-key.pem there at every VM start. QEMU runs
as libvirt-qemu:kvm, so the files belong to group kvm: the key 0640, the certificates
0644, the directory 0750. The SPICE key is its own key (not the agent's, which stays 0600
for root): it is made here and never leaves the host; the engine's CA signs it with the
subject O=multiconsole,CN=<host name>, which the engine puts in `.vv` files as
`host-subject`.

Renewal over the existing mutual-TLS connection: the engine asks for requests
(`Host.certificateRequest`: new keys kept in memory, their requests returned), signs
them and sends the certificates back (`Host.installCertificate`), which are installed
atomically; the agent serves the new certificate to new connections at once.
"""

from __future__ import annotations

import grp
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from multiconsole import pki

log = logging.getLogger(__name__)

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
LIBVIRT_DEFAULT_TLS_DIR = Path("/etc/pki/qemu")  # libvirt's default_tls_x509_cert_dir
SPICE_CA, SPICE_CERT, SPICE_KEY = "ca-cert.pem", "server-cert.pem", "server-key.pem"
SPICE_GROUP = "kvm"  # QEMU's group on Debian (user libvirt-qemu)
ENV_SPICE_DIR = "MULTICONSOLE_SPICE_DIR"
AGENT_CERT, AGENT_KEY, CA_CERT = "agent-cert.pem", "agent-key.pem", "ca-cert.pem"


class CertificateError(Exception):
    """A certificate the agent will not install (the message says why)."""


# --- where QEMU looks ------------------------------------------------------------------------


def _conf_value(text: str, key: str) -> str | None:
    match = re.search(rf"^\s*{key}\s*=\s*(.+?)\s*$", text, re.M)
    if match is None:
        return None
    return match.group(1).strip().strip('"')


def spice_tls_on(conf: Path = QEMU_CONF) -> bool:
    """Whether libvirt's QEMU driver has SPICE TLS on (``spice_tls = 1`` in qemu.conf)."""
    try:
        return _conf_value(conf.read_text(), "spice_tls") == "1"
    except OSError:
        return False


def spice_cert_dir(conf: Path = QEMU_CONF) -> Path | None:
    """Where QEMU reads its SPICE certificates: $MULTICONSOLE_SPICE_DIR, else qemu.conf's
    spice_tls_x509_cert_dir (or default_tls_x509_cert_dir) when spice_tls is on; else None."""
    if os.environ.get(ENV_SPICE_DIR):
        return Path(os.environ[ENV_SPICE_DIR])
    try:
        text = conf.read_text()
    except OSError:
        return None
    if _conf_value(text, "spice_tls") != "1":
        return None
    value = _conf_value(text, "spice_tls_x509_cert_dir") or _conf_value(text, "default_tls_x509_cert_dir")
    return Path(value) if value else LIBVIRT_DEFAULT_TLS_DIR


def spice_files_present(directory: Path | None) -> bool:
    return directory is not None and all((directory / n).is_file() for n in (SPICE_CA, SPICE_CERT, SPICE_KEY))


def writable(directory: Path) -> bool:
    """Whether the SPICE files can be written there (the directory or, if missing, its parent)."""
    target = directory if directory.exists() else directory.parent
    return os.access(target, os.W_OK | os.X_OK)


def _qemu_gid() -> int | None:
    if os.geteuid() != 0:
        return None  # only root may give files to another group
    try:
        return grp.getgrnam(SPICE_GROUP).gr_gid
    except KeyError:
        return None


def install_spice(directory: Path, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> list[Path]:
    """Write QEMU's SPICE files, each atomically, readable by QEMU's group, the key by it only.
    The certificate must be for the key and signed by the CA, or nothing is written."""
    if not pki.key_matches(cert_pem, key_pem):
        raise CertificateError("the SPICE certificate is not for the SPICE key: nothing written")
    if not pki.issued_by(cert_pem, ca_pem):
        raise CertificateError("the SPICE certificate is not signed by the CA: nothing written")
    gid = _qemu_gid()
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    if gid is not None:
        os.chown(directory, 0, gid)
        directory.chmod(0o750)
    # The key first, the CA last: a VM starting meanwhile at worst fails to verify a client
    # certificate it never asks for, and the next start reads the new set.
    pki.write_file(directory / SPICE_KEY, key_pem, 0o640 if gid is not None else 0o600, gid)
    pki.write_file(directory / SPICE_CERT, cert_pem, 0o644, gid)
    pki.write_file(directory / SPICE_CA, ca_pem, 0o644, gid)
    return [directory / SPICE_CA, directory / SPICE_CERT, directory / SPICE_KEY]


# --- renewal ---------------------------------------------------------------------------------


class Certificates:
    """The agent's side of renewal: new keys and requests, then installing what the engine signed.

    `pki_dir`: agent-cert.pem, agent-key.pem, ca-cert.pem (None: the agent serves plain HTTP);
    `spice_dir`: QEMU's SPICE directory (None: no SPICE TLS here); `reload`: makes the TLS
    server present the new certificate to new connections."""

    def __init__(
        self,
        pki_dir: Path | None,
        spice_dir: Path | None = None,
        reload: Callable[[], None] | None = None,
    ):
        self.pki_dir, self.spice_dir, self.reload = pki_dir, spice_dir, reload
        self._lock = threading.Lock()
        self._pending: tuple[bytes, bytes | None] | None = None  # (agent key, SPICE key)

    def status(self) -> dict:
        out: dict = {"agent": None, "spice": None}
        if self.pki_dir is not None and (self.pki_dir / AGENT_CERT).exists():
            info = pki.describe((self.pki_dir / AGENT_CERT).read_bytes())
            out["agent"] = {"fingerprint": info["fingerprint"], "notAfter": info["not_after"].isoformat()}
        if spice_files_present(self.spice_dir):
            assert self.spice_dir is not None
            pem = (self.spice_dir / SPICE_CERT).read_bytes()
            try:
                out["spice"] = {
                    "subject": pki.cert_subject_string(pem),
                    "notAfter": pki.not_after(pem).isoformat(),
                    "fingerprint": pki.fingerprint(pem),
                }
            except pki.PkiError:
                out["spice"] = {"subject": "", "notAfter": "", "fingerprint": pki.fingerprint(pem)}
        return out

    def spice_from_ca(self) -> bool:
        """Whether QEMU's SPICE files (if SPICE TLS is on here) come from this host's CA."""
        if self.spice_dir is None or self.pki_dir is None:
            return True
        try:
            ca = (self.pki_dir / CA_CERT).read_bytes()
            return pki.issued_by((self.spice_dir / SPICE_CERT).read_bytes(), ca)
        except OSError:
            return False

    def request(self) -> dict:
        """New keys (kept here, in memory) and their certificate requests."""
        if self.pki_dir is None or not (self.pki_dir / AGENT_CERT).exists():
            raise CertificateError("this agent serves plain HTTP (--insecure): enrol it instead")
        current = pki.load_cert((self.pki_dir / AGENT_CERT).read_bytes())
        csr, key = pki.make_csr(pki.common_name(current), pki.san_strings(current))
        spice_csr = spice_key = None
        if self.spice_dir is not None and writable(self.spice_dir):
            spice_csr, spice_key = pki.make_csr(pki.common_name(current) or "multiconsole host")
        with self._lock:
            self._pending = (key, spice_key)
        return {"csr": csr.decode(), "spiceCsr": spice_csr.decode() if spice_csr else None}

    def install(self, certificate: str, ca_certificate: str, spice_certificate: str | None) -> dict:
        """Install what the engine signed for the last request; the CA must be the one this
        host enrolled with (renewal does not move a host to another CA)."""
        assert self.pki_dir is not None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            raise CertificateError("no certificate request is pending: ask Host.certificateRequest first")
        key, spice_key = pending
        cert_pem, ca_pem = certificate.encode(), ca_certificate.encode()
        try:
            current_ca = (self.pki_dir / CA_CERT).read_bytes()
            if pki.fingerprint(ca_pem) != pki.fingerprint(current_ca):
                raise CertificateError("caCertificate is not the CA this host enrolled with")
            if not pki.issued_by(cert_pem, current_ca):
                raise CertificateError("certificate is not signed by this host's CA")
            if not pki.key_matches(cert_pem, key):
                raise CertificateError("certificate is not for the key of the pending request")
            spice_files: list[Path] = []
            if spice_certificate is not None:
                if spice_key is None or self.spice_dir is None:
                    raise CertificateError("spiceCertificate was not requested")
                spice_files = install_spice(self.spice_dir, ca_pem, spice_certificate.encode(), spice_key)
        except pki.PkiError as err:
            raise CertificateError(str(err)) from None
        pki.write_private(self.pki_dir / AGENT_KEY, key)
        pki.write_public(self.pki_dir / AGENT_CERT, cert_pem)
        if self.reload is not None:
            self.reload()
        info = pki.describe(cert_pem)
        log.info(
            "installed a renewed certificate %s (until %s)%s",
            info["fingerprint"],
            info["not_after"],
            f" and SPICE certificates in {self.spice_dir}" if spice_files else "",
        )
        return {
            "fingerprint": info["fingerprint"],
            "notAfter": info["not_after"].isoformat(),
            "spiceSubject": pki.cert_subject_string(spice_certificate) if spice_certificate else None,
        }
