"""The agent's HTTP face: JSON-RPC at POST /jsonrpc, its schema, and an event stream.

The transport (plain HTTP, or TLS with client certificates) is chosen by `serve`;
the app itself does not care.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

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
        """Server-sent events: lifecycle and console (graphics) events as JSON."""
        sub = manager.events.subscribe()

        async def stream():
            try:
                yield ": multiconsole agent events\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_SECONDS)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
            finally:
                manager.events.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app


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
    uvicorn.Server(config).run()
