"""Receiving a large request body in constant memory (the engine's uploads, the agent's images).

The body's chunks are gathered in one buffer allocated once, and each full buffer is handed
to `write` in a worker thread (hashing and disk writes must not stall the event loop). No
per-chunk copies are kept: memory stays one buffer whatever the size of the body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool

BUFFER = 1 << 20


async def drain(
    chunks: AsyncIterator[bytes], write: Callable[[memoryview], None], size: int = BUFFER
) -> None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    async for chunk in chunks:
        while chunk:
            n = min(len(chunk), size - filled)
            view[filled : filled + n] = chunk[:n]
            filled += n
            chunk = chunk[n:]
            if filled == size:
                await run_in_threadpool(write, view)
                filled = 0
    if filled:
        await run_in_threadpool(write, view[:filled])
