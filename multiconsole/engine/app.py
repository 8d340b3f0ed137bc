"""The engine's web application: REST API, monitor, and errors in one JSON shape."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from multiconsole.engine import (
    api,
    auth,
    browser,
    consoles,
    db,
    dbfaults,
    early_auth,
    enrollment,
    headers,
    https,
    images,
    images_api,
    limits,
)
from multiconsole.engine.errors import EngineError
from multiconsole.engine.hosts import HOST_CALLS, Agents, EngineTls
from multiconsole.engine.monitor import Monitor
from multiconsole.engine.ovirt import router as ovirt_api
from multiconsole.engine.web import pages
from multiconsole.pki import CertificateAuthority
from multiconsole.proxy import tickets

log = logging.getLogger(__name__)


@dataclass
class Settings:
    db_url: str
    admin_password: str | None = None
    monitor_interval: float = 3.0
    monitor: bool = True
    # The browser console's websocket proxy, inside the engine (None: no proxy here).
    proxy_port: int | None = 6100
    proxy_host: str = "127.0.0.1"
    proxy_key_file: str | None = None
    allowed_origins: list[str] = field(default_factory=list)
    # Seconds a login token (POST /api/v1/login) is valid.
    token_ttl: int = auth.TOKEN_TTL_DEFAULT
    # Console tickets (ticket, .vv, proxy ticket) a user may get per minute.
    ticket_rate_limit: int = 30
    # Screenshots a user may get per minute (the web UI's VM list asks one per VM every 10 s).
    screenshot_rate_limit: int = 120
    # Screenshots one user may wait on at once (beyond: 429 at once).
    screenshots_at_once: int = 8
    # Texts or key combinations a user may type into VMs per minute (POST /vms/{vm}/keys).
    keys_rate_limit: int = 20
    # The CA, the engine's client certificate: made on first start; default <data dir>/pki.
    pki_dir: str | None = None
    # HTTPS for the API and web UI, wss for the proxy: the admin's tls_cert + tls_key, else with
    # `https` a certificate from the engine's CA for `tls_names` (made, and renewed, at start).
    https: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_names: list[str] = field(default_factory=lambda: list(https.LOCAL_NAMES))
    # Failed password checks before a user name / a client address gets 429 for `login_window`
    # seconds (0: no limit).
    login_failures_per_user: int = 5
    login_failures_per_address: int = 20
    login_window: float = 300.0
    # Hosts' certificates are checked this often (seconds; 0: never) and renewed over their
    # mutual TLS when they end within `cert_renew_within_days`.
    cert_renew_interval: float = 12 * 3600
    cert_renew_within_days: int = 30
    # Uploaded images (engine/images.py): where (default <data dir>/images) and how large
    # one may be (POST /api/v1/images refuses more while it streams).
    images_dir: str | None = None
    image_max_bytes: int = 64 << 30
    # Request bodies (bytes), capped while they stream (engine/limits.py): every route, the
    # public ones (logins, enrolment), and path prefixes that take more (e.g. image uploads).
    max_body: int = limits.MAX_BODY_DEFAULT
    max_public_body: int = limits.MAX_PUBLIC_BODY_DEFAULT
    body_limits: dict[str, int] = field(default_factory=dict)


def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    reason = first.get("msg", "invalid")
    return JSONResponse(EngineError(field, reason, 422).body(), status_code=422)


def _engine_error(_request: Request, exc: EngineError) -> JSONResponse:
    headers = getattr(exc, "headers", None)
    if exc.status == 401 and not headers:
        headers = {"WWW-Authenticate": 'Basic realm="multiconsole"'}
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(
        EngineError(None, str(exc.detail), exc.status_code).body(), status_code=exc.status_code
    )


def _database_error(request: Request, exc: SQLAlchemyError) -> JSONResponse:
    """A database fault is a 503 (a conflict a 409), handled here and not by `_unexpected`, so
    the response is a normal one and the client's keep-alive connection stays open."""
    err = dbfaults.as_engine_error(exc)
    if err is None:
        return _unexpected(request, exc)
    log.warning("database error %s: %s", type(exc).__name__, err.reason)
    return _engine_error(request, err)


def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error %s", type(exc).__name__, exc_info=exc)
    return JSONResponse(
        EngineError(None, "internal error; see the engine's log", 500).body(), status_code=500
    )


def _certificate_authority(settings: Settings) -> CertificateAuthority:
    from multiconsole.paths import data_dir

    return CertificateAuthority.load_or_create(settings.pki_dir or data_dir() / "pki")


def _images_dir(settings: Settings):
    from pathlib import Path

    from multiconsole.paths import data_dir

    return Path(settings.images_dir) if settings.images_dir else data_dir(create=False) / "images"


def _server_tls(settings: Settings, ca: CertificateAuthority) -> https.ServerTls | None:
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise https.HttpsSetupError("give both the certificate and its key (--tls-cert and --tls-key)")
        return https.admin_certificate(settings.tls_cert, settings.tls_key)
    if settings.https:
        return https.own_certificate(ca, settings.tls_names)
    return None


class _ClientAddress:
    """Tells `auth.verify` the caller's address (the login throttle counts by it), for every
    route that checks a password, without each passing it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client")
        token = auth.client_address.set(client[0] if client else None)
        try:
            await self.app(scope, receive, send)
        finally:
            auth.client_address.reset(token)


def make_app(settings: Settings) -> FastAPI:
    engine = db.make_engine(settings.db_url)
    limits.refuse_nul_in_text(engine)
    db.migrate(engine)
    sessions = db.sessions(engine)
    with sessions() as session:
        generated = auth.ensure_admin(session, settings.admin_password)
    login_throttle = auth.LoginThrottle(
        settings.login_failures_per_user, settings.login_failures_per_address, settings.login_window
    )
    auth.install_throttle(engine, login_throttle)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.monitor:
            app.state.monitor.start()
        if settings.cert_renew_interval > 0:
            app.state.renewer = enrollment.Renewer(
                sessions,
                app.state.agents,
                app.state.ca,
                settings.cert_renew_interval,
                timedelta(days=settings.cert_renew_within_days),
            )
            app.state.renewer.start()
        if settings.proxy_port is not None:
            app.state.proxy = browser.make_proxy(
                sessions,
                app.state.proxy_key,
                settings.allowed_origins,
                settings.proxy_host,
                settings.proxy_port,
                ssl=app.state.tls.server_context() if app.state.tls else None,
            )
            await app.state.proxy.start()
        yield
        if app.state.proxy is not None:
            await app.state.proxy.stop()
        if app.state.renewer is not None:
            app.state.renewer.stop()
        app.state.monitor.stop()
        app.state.agents.close()
        monitor_engine.dispose()

    # /docs and /openapi.json: behind a login (engine/headers.py).
    app = FastAPI(
        title="multiconsole engine",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.db_engine = engine
    app.state.ca = _certificate_authority(settings)
    app.state.engine_tls = EngineTls.from_ca(app.state.ca)
    app.state.tls = _server_tls(settings, app.state.ca)
    app.state.login_throttle = login_throttle
    app.state.image_store = images.ImageStore(_images_dir(settings))
    app.state.agents = Agents(
        tls=app.state.engine_tls, per_host=HOST_CALLS, image_store=app.state.image_store
    )
    # The monitor has its own connections: requests that fill their pool cannot stall it.
    monitor_engine = db.make_engine(settings.db_url, pool_size=db.MONITOR_POOL_SIZE, max_overflow=0)
    monitor_sessions = db.sessions(monitor_engine)
    app.state.monitor_db_engine = monitor_engine
    app.state.monitor = Monitor(
        monitor_sessions,
        interval=settings.monitor_interval,
        agents=Agents(timeout=5.0, tls=app.state.engine_tls),
    )
    app.state.monitor.listeners.append(
        lambda host_id, event: consoles.on_agent_event(monitor_sessions, host_id, event)
    )
    app.state.generated_admin_password = generated
    app.state.proxy = None
    app.state.renewer = None
    app.state.ticket_limiter = auth.RateLimiter(settings.ticket_rate_limit, 60.0)
    app.state.screenshot_limiter = auth.RateLimiter(settings.screenshot_rate_limit, 60.0)
    app.state.screenshots_at_once = auth.AtOnce(settings.screenshots_at_once)
    app.state.keys_limiter = auth.RateLimiter(settings.keys_rate_limit, 60.0)
    app.state.proxy_key = tickets.load_or_create_key(settings.proxy_key_file or tickets.default_key_path())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
    # Image uploads stream far more than any other body (their route checks the limit too).
    larger = {"/api/v1/images": settings.image_max_bytes, **settings.body_limits}
    rules = limits.BodyRules(settings.max_body, settings.max_public_body, larger)
    app.add_middleware(
        limits.RequestGuard, rules=rules, authenticate=early_auth.authenticate, refusal=early_auth.refusal
    )
    app.add_middleware(_ClientAddress)  # outside RequestGuard: its password checks know the address
    app.add_middleware(headers.SecurityHeaders)  # outermost: refusals get the headers too
    app.include_router(api.public)
    app.include_router(api.router)
    app.include_router(images_api.router)  # /api/v1/images (engine/images_api.py)
    app.include_router(enrollment.admin)
    app.include_router(enrollment.public)
    app.include_router(browser.router)
    app.include_router(ovirt_api)  # oVirt's REST API v4 under /ovirt-engine (engine/ovirt/)
    app.include_router(pages.router)  # the web UI (engine/web/pages.py)
    app.include_router(headers.docs)
    app.mount(pages.STATIC_URL, StaticFiles(directory=pages.STATIC_DIR), name="ui")
    if browser.NOVNC_DIR.is_dir():
        app.mount("/static/novnc", StaticFiles(directory=browser.NOVNC_DIR), name="novnc")
    else:
        log.warning("noVNC is not installed (run scripts/setup.sh): no browser console")
    return app
