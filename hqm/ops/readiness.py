"""The proxy's /readyz: ready while it takes requests, which means the queue stores
them, not only that Redis answers a PING.

Not ready while draining; while an enqueue failed (refused by Redis: OOM at maxmemory,
READONLY, NOAUTH...; or no answer) within READY_HOLD_S and none succeeded since; and
while the queue refuses a harmless write of its own (``Queue.probe_write``, one per
call). The probe is what brings it back without client traffic, which stops reaching
a pod that is not ready. A backlog at --max-depth is not a failure here: its 503 +
Retry-After is the answer meant for clients, and every proxy of the queue shares it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hqm.proto.limits import READY_HOLD_S
from hqm.queue.base import Queue, QueueError, QueueFull, QueueRefused

log = logging.getLogger("hqm.ops")


class Readiness:
    __slots__ = ("_clock", "_draining", "_failed_at", "_hold_s", "_queue", "_reason", "_why")

    def __init__(
        self,
        queue: Queue,
        *,
        draining: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        hold_s: float = READY_HOLD_S,
    ) -> None:
        self._queue = queue
        self._draining = draining
        self._clock = clock
        self._hold_s = hold_s
        self._failed_at: float | None = None
        self._why = ""
        #: Why it was last reported not ready ("" when ready), for the log.
        self._reason = ""

    def enqueue_failed(self, exc: QueueError) -> None:
        if isinstance(exc, QueueFull) and not isinstance(exc, QueueRefused):
            return  # --max-depth: back-pressure, answered as such
        self._failed_at = self._clock()
        self._why = type(exc).__name__

    def enqueue_ok(self) -> None:
        self._failed_at = None

    async def __call__(self) -> bool:
        if self._draining():
            return self._report("draining")
        if self._failed_at is not None and self._clock() - self._failed_at < self._hold_s:
            return self._report(f"enqueues fail ({self._why})")
        try:
            await self._queue.probe_write()
        except QueueError as exc:
            return self._report(f"the queue takes no write ({type(exc).__name__}: {exc})")
        return self._report("")

    def _report(self, reason: str) -> bool:
        """Log each change: not ready and why (once per reason), ready again."""
        if reason != self._reason:
            if reason:
                log.warning("not ready: %s", reason)
            else:
                log.info("ready again")
            self._reason = reason
        return not reason
