"""Stopping a proxy with an embedded queue: what was accepted is delivered first, or
counted as lost.

The embedded queue lives in this process only. On SIGTERM/SIGINT the in-process
worker keeps working on it until it is empty or --drain-timeout runs out; then it
stops, and the requests still unfinished (waiting, at the app, scheduled for a retry
or delayed) are logged as a warning with their count: the caller exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging

from hqm.queue.base import Queue
from hqm.worker.loop import Worker

log = logging.getLogger("hqm")

#: How often the draining proxy looks at the embedded queue's depth (an in-process
#: count, no I/O): often enough that an emptied queue ends the drain at once to the
#: eye, rarely enough to cost nothing.
_DRAIN_POLL_S = 0.02


async def drain_embedded(
    queue: Queue, worker: Worker | None, task: asyncio.Task[None] | None, deadline: float
) -> int:
    """Let ``worker`` work on ``queue`` until it is empty or the loop time
    ``deadline``; stop it; return the accepted requests left undelivered (no
    ``worker``, a proxy with --redis: 0, the queue is durable)."""
    if worker is None or task is None:
        return 0
    loop = asyncio.get_running_loop()
    while not task.done() and loop.time() < deadline and await queue.depth() > 0:
        await asyncio.sleep(min(_DRAIN_POLL_S, max(0.0, deadline - loop.time())))
    worker.stop()
    await task
    left = await queue.depth()
    if left:
        log.warning(
            "embedded queue: %d accepted requests not delivered by --drain-timeout; "
            "they are lost (pass --redis for a durable queue)",
            left,
            extra={"undelivered": left},
        )
    return left
