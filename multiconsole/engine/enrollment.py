"""Host enrolment: one-time tokens, and the engine's CA signing a host's certificate request.

1. An administrator makes a token for a host name: ``POST /api/v1/hosts/enrollment-tokens``
   (``multiconsole host token NAME``). The token is 32 random bytes, good for one hour and
   one use; the database keeps its SHA-256 only.
2. On the host, ``multiconsole agent enroll --engine URL --token TOKEN`` makes a key and a
   certificate request and sends the request with the token to ``POST /api/v1/hosts/enroll``
   (no login: the token is the credential). The engine signs it (subject: the host name;
   server authentication only, so a host's certificate cannot drive another host) and
   answers with the certificate and the CA's. The private key never leaves the host.
3. ``host add NAME`` then finds the certificate that host name enrolled with, keeps it on
   the host, and talks to the agent over TLS, pinning it. Enrolling a host that is
   already added renews its certificate.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from multiconsole import pki
from multiconsole.engine import api, auth, service
from multiconsole.engine.db import EnrollmentToken, Host, User, now, utc
from multiconsole.engine.errors import EngineError

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


def enrol(session: Session, ca: pki.CertificateAuthority, token: str, csr_pem: str) -> EnrollmentToken:
    """Spend `token` on a certificate for the request `csr_pem`. A host of that name already
    added gets the new certificate at once (renewal)."""
    refused = EngineError("token", "this enrolment token is unknown, used or expired", 403)
    if not token or len(token) > 256:
        raise refused
    row = session.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == _hash(token)))
    if row is None or row.used_at is not None or utc(row.expires_at) <= now():
        raise refused
    try:
        cert = ca.sign_csr(csr_pem, common_name_=row.host_name, usage="server").decode()
    except pki.PkiError as err:
        raise EngineError("csr", str(err), 422) from None
    fingerprint = pki.fingerprint(cert)
    # Claim the token: of two requests with it, one wins.
    claimed = session.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.id == row.id,
            EnrollmentToken.used_at.is_(None),
            EnrollmentToken.expires_at > now(),
        )
        .values(used_at=now(), certificate=cert, cert_fingerprint=fingerprint)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise refused
    session.refresh(row)
    host = session.scalar(select(Host).where(Host.name == row.host_name))
    if host is not None and host.certificate is not None:
        host.certificate, host.cert_fingerprint = cert, fingerprint
    return row


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


class EnrollOut(BaseModel):
    host: str
    certificate: str
    fingerprint: str
    ca_certificate: str
    ca_fingerprint: str


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
    row = enrol(session, ca, body.token, body.csr)
    assert row.certificate is not None and row.cert_fingerprint is not None
    return EnrollOut(
        host=row.host_name,
        certificate=row.certificate,
        fingerprint=row.cert_fingerprint,
        ca_certificate=ca.cert_pem.decode(),
        ca_fingerprint=ca.fingerprint,
    )


@public.get("/pki/ca.pem", response_class=Response)
def ca_certificate(request: Request) -> Response:
    """The engine's CA certificate (public), for a host to check against a fingerprint."""
    return Response(_ca(request).cert_pem, media_type=PEM_TYPE)
