"""The agent's HTTP face: JSON-RPC at POST /jsonrpc, its schema, and an event stream.

The transport (plain HTTP, or TLS with client certificates) is chosen by `serve`;
the app itself does not care.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from multiconsole import streaming
from multiconsole.agent import api, jsonrpc
from multiconsole.agent.vms import VmManager

log = logging.getLogger(__name__)
KEEPALIVE_SECONDS = 15.0


def make_app(manager: VmManager) -> FastAPI:
    app = FastAPI(title="multiconsole agent", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/jsonrpc")
    async def rpc(request: Request) -> Response:
        body = await request.body()
        reply = await run_in_threadpool(jsonrpc.handle, manager, body)
        if reply is None:
            return Response(status_code=204)
        return JSONResponse(reply)

    @app.get("/jsonrpc/schema")
    async def rpc_schema() -> dict:
        return api.schema()

    @app.get("/events")
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: lifecycle and console (graphics) events as JSON, each with its
        id. A reader that sends Last-Event-ID gets what it missed first; a `reset` event
        (no id) tells it when that is not everything (the agent restarted, or the id is too old)."""
        sub, replay = manager.events.subscribe(request.headers.get("last-event-id"))

        async def stream():
            try:
                yield f": multiconsole agent events, boot {manager.events.boot}\n\n"
                if replay.lost:
                    reset = {"event": "reset", "boot": manager.events.boot, "reason": replay.lost}
                    yield f"event: reset\ndata: {json.dumps(reset)}\n\n"
                for event in replay.events:
                    yield _sse(event)
                while True:
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keepalive\n\n"
                        continue
                    yield _sse(event)
            finally:
                manager.events.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.put("/images/{sha256}")
    async def put_image(sha256: str, request: Request) -> Response:
        """An image from the engine for the cache: hashed while it is written, kept only if
        it hashes to `sha256` (the same mutual TLS as /jsonrpc guards it)."""
        from multiconsole.agent.images import SHA256_RE, HashMismatch, StorageError

        if not SHA256_RE.fullmatch(sha256):
            return _refused(400, "the name must be a sha256 (64 lower-case hex digits)")
        try:
            incoming = await run_in_threadpool(manager.storage.incoming, sha256)
        except (StorageError, OSError) as err:
            return _refused(507 if isinstance(err, OSError) else 400, str(err))
        try:
            await streaming.drain(request.stream(), incoming.write)
            await run_in_threadpool(incoming.finish)
        except HashMismatch as err:
            return _refused(422, str(err))
        except OSError as err:
            incoming.discard()
            return _refused(507, f"could not store the image: {err.strerror or err}")
        except BaseException:
            incoming.discard()
            raise
        return JSONResponse({"sha256": sha256, "size": incoming.size}, status_code=201)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app


def _sse(event: dict) -> str:
    return f"id: {event['id']}\nevent: {event['event']}\ndata: {json.dumps(event)}\n\n"


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)


class TlsSetupError(Exception):
    """The agent's certificates are missing or unusable."""


def tls_options(pki_dir: Path) -> dict:
    """uvicorn's TLS settings from an enrolled host's files: serve with agent-cert.pem and
    agent-key.pem; require every client to present a certificate that ca-cert.pem (the
    engine's CA) issued for client authentication and that is within its dates (OpenSSL
    checks these in the handshake). Refuses to start on a missing or expired certificate."""
    import ssl as _ssl
    from datetime import UTC, datetime

    from multiconsole import pki

    cert, key, ca = (pki_dir / n for n in ("agent-cert.pem", "agent-key.pem", "ca-cert.pem"))
    missing = [str(p) for p in (cert, key, ca) if not p.exists()]
    if missing:
        raise TlsSetupError(
            f"no certificates ({', '.join(missing)} missing): enrol this host "
            "(multiconsole agent enroll) or pass --insecure to serve plain HTTP"
        )
    try:
        pem = cert.read_bytes()
        info = pki.describe(pem)
        if not pki.key_matches(pem, key.read_bytes()):
            raise TlsSetupError(f"{key} is not the key of {cert}")
        if not pki.issued_by(pem, ca.read_bytes()):
            raise TlsSetupError(f"{cert} is not signed by {ca}")
    except (OSError, pki.PkiError) as err:
        raise TlsSetupError(str(err)) from None
    left = info["not_after"] - datetime.now(UTC)
    if left.total_seconds() <= 0:
        raise TlsSetupError(f"{cert} expired on {info['not_after']:%Y-%m-%d}: enrol this host again")
    if left.days < 30:
        log.warning("the agent's certificate expires in %d days: enrol this host again", left.days)
    return {
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "ssl_ca_certs": str(ca),
        "ssl_cert_reqs": _ssl.CERT_REQUIRED,
    }


def serve(manager: VmManager, host: str, port: int, ssl: dict | None = None) -> None:
    import uvicorn

    config = uvicorn.Config(
        make_app(manager),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        # Event streams never end by themselves: don't let them hold a shutdown.
        timeout_graceful_shutdown=3,
        **(ssl or {}),
    )
    if ssl:
        cert, key = ssl["ssl_certfile"], ssl["ssl_keyfile"]

        def reload() -> None:
            # OpenSSL hands the context's new certificate to every later handshake.
            if config.ssl is not None:
                config.ssl.load_cert_chain(cert, key)

        manager.certs.pki_dir = Path(cert).parent
        manager.certs.reload = reload
        if not manager.certs.spice_from_ca():
            log.warning(
                "QEMU's SPICE certificates in %s are not from the engine's CA: SPICE clients cannot "
                "check this host; renew them (multiconsole host renew-cert) or enrol again",
                manager.certs.spice_dir,
            )
    uvicorn.Server(config).run()
