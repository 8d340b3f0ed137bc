"""Host enrolment: one-time tokens, and the engine's CA signing a host's certificate request.

1. An administrator makes a token for a host name: ``POST /api/v1/hosts/enrollment-tokens``
   (``multiconsole host token NAME``). The token is 32 random bytes, good for one hour and
   one use; the database keeps its SHA-256 only.
2. On the host, ``multiconsole agent enroll --engine URL --token TOKEN`` makes a key and a
   certificate request and sends the request with the token to ``POST /api/v1/hosts/enroll``
   (no login: the token is the credential). The engine signs the request's key only: the
   subject (O=multiconsole,CN=<host name>), the one name (<host name>.host.multiconsole.invalid,
   never a real server's, so a host cannot pose as the engine) and the usage (server
   authentication only, so a host's certificate cannot drive another host) are the engine's,
   whatever the request asks. The private key never leaves the host.
3. ``host add NAME`` then finds the certificate that host name enrolled with, keeps it on
   the host, and talks to the agent over TLS, pinning it. Enrolling a host that is
   already added renews its certificate.

SPICE over TLS: the enrolment request may carry a second request, for the host's SPICE
certificate (QEMU's, a key of its own). The engine signs it with the subject
O=multiconsole,CN=<host name> and keeps that subject on the host: `.vv` files carry it
as `host-subject` with the CA as `ca`, and remote-viewer accepts only that server.

Renewal without re-enrolling (``POST /api/v1/hosts/{host}/certificate``, ``multiconsole
host renew-cert HOST``): over the host's existing mutual-TLS connection the engine asks
the agent for new requests (``Host.certificateRequest``; the agent makes new keys), signs
them, sends the certificates (``Host.installCertificate``), and pins the new one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from datetime import datetime, timedelta

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from multiconsole import pki
from multiconsole.engine import api, auth, db, service
from multiconsole.engine.broker import AgentCallError
from multiconsole.engine.db import EnrollmentToken, Host, User, now, utc
from multiconsole.engine.errors import EngineError, HostUnreachable
from multiconsole.engine.hosts import Agents

log = logging.getLogger(__name__)
TOKEN_TTL = 3600
TOKEN_BYTES = 32
MAX_CSR = 16384
PEM_TYPE = "application/x-pem-file"

public = APIRouter(prefix="/api/v1", tags=["enrolment"])
admin = APIRouter(prefix="/api/v1", tags=["enrolment"])


# --- the service -------------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, host_name: str, created_by: str | None = None, ttl: int = TOKEN_TTL
) -> tuple[str, EnrollmentToken]:
    """A new one-time token for the host `host_name`: (the token, its row)."""
    service.check_name(host_name, "host")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = EnrollmentToken(
        token_hash=_hash(token),
        host_name=host_name,
        created_by=created_by,
        expires_at=now() + timedelta(seconds=ttl),
    )
    session.add(row)
    session.flush()
    return token, row


def sign_spice(ca: pki.CertificateAuthority, host_name: str, csr_pem: str) -> tuple[str, str]:
    """The SPICE certificate of the host `host_name` for its request: (PEM, subject string)."""
    pem = ca.sign_host_csr(csr_pem, host_name).decode()
    return pem, pki.subject_string(pki.host_subject(host_name))


def enrol(
    session: Session,
    ca: pki.CertificateAuthority,
    token: str,
    csr_pem: str,
    spice_csr_pem: str | None = None,
) -> tuple[EnrollmentToken, str | None]:
    """Spend `token` on a certificate for the request `csr_pem` (and a SPICE certificate for
    `spice_csr_pem`): (the token's row, the SPICE certificate). A host of that name already
    added gets the new certificates at once (renewal)."""
    refused = EngineError("token", "this enrolment token is unknown, used or expired", 403)
    if not token or len(token) > 256:
        raise refused
    row = session.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == _hash(token)))
    if row is None or row.used_at is not None or utc(row.expires_at) <= now():
        raise refused
    try:
        cert = ca.sign_host_csr(csr_pem, row.host_name).decode()
    except pki.PkiError as err:
        raise EngineError("csr", str(err), 422) from None
    spice_cert = spice_subject = None
    if spice_csr_pem:
        try:
            spice_cert, spice_subject = sign_spice(ca, row.host_name, spice_csr_pem)
        except pki.PkiError as err:
            raise EngineError("spice_csr", str(err), 422) from None
    fingerprint = pki.fingerprint(cert)
    # Claim the token: of two requests with it, one wins.
    claimed = session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.id == row.id,
            EnrollmentToken.used_at.is_(None),
            EnrollmentToken.expires_at > now(),
        )
        .values(used_at=now(), certificate=cert, cert_fingerprint=fingerprint, spice_subject=spice_subject)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise refused
    session.refresh(row)
    host = session.scalar(select(Host).where(Host.name == row.host_name))
    if host is not None and host.certificate is not None:
        host.certificate, host.cert_fingerprint = cert, fingerprint
        if spice_subject:
            host.spice_subject = spice_subject
    return row, spice_cert


def renew(session: Session, agents: Agents, ca: pki.CertificateAuthority, host: Host) -> dict:
    """New certificates for an added host over its mutual-TLS connection, pinned at once."""
    if host.certificate is None:
        raise EngineError(
            "host",
            f"host {host.name} is reached over plain HTTP (added as insecure): enrol it instead",
            409,
        )
    client = agents.for_host(host)
    db.release(session)  # no database connection held while the host answers
    try:
        request = client.call("Host.certificateRequest")
        try:
            cert = ca.sign_host_csr(request["csr"], host.name).decode()
            spice_cert = spice_subject = None
            if request.get("spiceCsr"):
                spice_cert, spice_subject = sign_spice(ca, host.name, request["spiceCsr"])
        except (pki.PkiError, KeyError, TypeError) as err:
            reason = f"host {host.name} sent an unusable certificate request: {err}"
            raise EngineError("host", reason, 502) from None
        result = client.call(
            "Host.installCertificate",
            certificate=cert,
            caCertificate=ca.cert_pem.decode(),
            spiceCertificate=spice_cert,
        )
    except AgentCallError as err:
        raise EngineError("host", f"host {host.name} refused: {err.message}", 409) from None
    except httpx.HTTPError as err:
        raise HostUnreachable("host", f"host {host.name} did not answer: {type(err).__name__}") from None
    fingerprint = pki.fingerprint(cert)
    if not pki.same_fingerprint(str(result.get("fingerprint", "")), fingerprint):
        raise EngineError("host", f"host {host.name} installed another certificate than the one signed", 502)
    previous = host.cert_fingerprint
    host.certificate, host.cert_fingerprint = cert, fingerprint
    if spice_subject:
        host.spice_subject = spice_subject
    session.flush()
    # Connections pinned to the old certificate go; the next call pins the new one.
    agents.forget(host.address, host.port)
    info = pki.describe(cert)
    return {
        "host": host.name,
        "fingerprint": fingerprint,
        "previous_fingerprint": previous,
        "not_after": info["not_after"],
        "spice_subject": host.spice_subject,
        "spice_renewed": spice_cert is not None,
    }


def renew_due(
    sessions, agents: Agents, ca: pki.CertificateAuthority, within: timedelta = pki.RENEW_BEFORE
) -> dict[str, str]:
    """Renew every host whose certificate ends within `within` (for a periodic task):
    {host name: new fingerprint, or why it failed}. One host's failure stops no other."""
    out: dict[str, str] = {}
    names = []
    with sessions() as session:
        for h in session.scalars(select(Host).where(Host.certificate.is_not(None))):
            try:
                if pki.not_after(h.certificate) - now() < within:
                    names.append(h.name)
            except pki.PkiError:
                out[h.name] = "failed: its certificate cannot be read"
    for name in names:
        with sessions() as session:
            host = session.scalar(select(Host).where(Host.name == name))
            try:
                out[name] = renew(session, agents, ca, host)["fingerprint"]
                session.commit()
            except EngineError as err:
                session.rollback()
                out[name] = f"failed: {err}"
                log.warning("certificate renewal failed host=%s reason=%s", name, err)
    return out


class Renewer:
    """Checks the hosts' certificates every `interval` seconds (the first time at start, for
    an engine that was down a while) and renews those ending within `within`."""

    def __init__(
        self, sessions, agents: Agents, ca: pki.CertificateAuthority, interval: float, within: timedelta
    ):
        self.sessions, self.agents, self.ca = sessions, agents, ca
        self.interval, self.within = interval, within
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cert-renewer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for name, result in renew_due(self.sessions, self.agents, self.ca, self.within).items():
                    if not result.startswith("failed"):
                        log.info("host certificate renewed host=%s fingerprint=%s", name, result)
            except Exception as err:  # a bad round must not end the renewals to come
                log.warning("certificate renewal round failed: %s", type(err).__name__)
            self._stop.wait(self.interval)


def purge(session: Session, keep: timedelta = timedelta(days=1)) -> None:
    """Forget tokens that expired unused a while ago."""
    session.execute(
        EnrollmentToken.__table__.delete().where(
            EnrollmentToken.used_at.is_(None), EnrollmentToken.expires_at < now() - keep
        )
    )


# --- the API ---------------------------------------------------------------------------------


class TokenIn(BaseModel):
    host: str = Field(min_length=1, max_length=64, description="the name the host will be added as")
    ttl: int = Field(TOKEN_TTL, ge=60, le=TOKEN_TTL, description="seconds the token is good for")


class TokenOut(BaseModel):
    token: str
    host: str
    expires: datetime
    ca_fingerprint: str


class EnrollIn(BaseModel):
    token: str = Field(min_length=1, max_length=256)
    csr: str = Field(min_length=1, max_length=MAX_CSR, description="PEM certificate request")
    spice_csr: str | None = Field(
        None, min_length=1, max_length=MAX_CSR, description="PEM certificate request for QEMU's SPICE TLS"
    )


class EnrollOut(BaseModel):
    host: str
    certificate: str
    fingerprint: str
    ca_certificate: str
    ca_fingerprint: str
    spice_certificate: str | None = None
    spice_subject: str | None = None


class RenewOut(BaseModel):
    host: str
    fingerprint: str
    previous_fingerprint: str | None
    not_after: datetime
    spice_subject: str | None
    spice_renewed: bool


def _ca(request: Request) -> pki.CertificateAuthority:
    return request.app.state.ca


@admin.post("/hosts/enrollment-tokens", response_model=TokenOut, status_code=201)
def create_enrollment_token(
    body: TokenIn,
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User = Depends(api.current_user),
):
    """A one-time token with which the host `host` gets its certificate (administrators)."""
    if not auth.has_role(user, auth.ROLE_ADMIN):
        raise EngineError(None, f"{user.name} is not an administrator", 403)
    purge(session)
    token, row = create_token(session, body.host, user.name, body.ttl)
    return TokenOut(
        token=token, host=row.host_name, expires=row.expires_at, ca_fingerprint=_ca(request).fingerprint
    )


@public.post("/hosts/enroll", response_model=EnrollOut)
def enroll_host(body: EnrollIn, request: Request, session: Session = Depends(api.db, scope="function")):
    """A host's certificate for its request; the one-time token is the credential."""
    ca = _ca(request)
    row, spice_cert = enrol(session, ca, body.token, body.csr, body.spice_csr)
    assert row.certificate is not None and row.cert_fingerprint is not None
    return EnrollOut(
        host=row.host_name,
        certificate=row.certificate,
        fingerprint=row.cert_fingerprint,
        ca_certificate=ca.cert_pem.decode(),
        ca_fingerprint=ca.fingerprint,
        spice_certificate=spice_cert,
        spice_subject=row.spice_subject,
    )


@admin.post("/hosts/{key}/certificate", response_model=RenewOut)
def renew_host_certificate(
    key: str,
    request: Request,
    session: Session = Depends(api.db, scope="function"),
    user: User = Depends(api.current_user),
):
    """Renew a host's certificates (its agent's and its SPICE one) over its TLS connection,
    without re-enrolling (administrators)."""
    if not auth.has_role(user, auth.ROLE_ADMIN):
        raise EngineError(None, f"{user.name} is not an administrator", 403)
    host = service.get_host(session, key)
    return RenewOut(**renew(session, request.app.state.agents, _ca(request), host))


@public.get("/pki/ca.pem", response_class=Response)
def ca_certificate(request: Request) -> Response:
    """The engine's CA certificate (public), for a host to check against a fingerprint."""
    return Response(_ca(request).cert_pem, media_type=PEM_TYPE)
