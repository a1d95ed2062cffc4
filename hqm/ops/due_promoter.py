"""The proxy moves due delayed requests (``HQM-Delay``) and retries into their streams.

Workers do this too (their maintenance), but a deployment scaled to zero has none:
a request that fell due would sit in the ``delayed`` set while the stream's lag, what
KEDA's redis-streams trigger (and the ``hqm_queue_backlog`` gauge) reads, stays 0, and
no worker would ever be started for it. Promotion is one atomic script per call
(``Queue.promote_due``: each member moved only by the call that removed it), so any
number of proxies and workers may do it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from hqm.ops.trouble import Trouble
from hqm.queue.base import Queue, QueueError, distinct

log = logging.getLogger("hqm.ops.due_promoter")

#: Seconds between two promotions by a proxy: a due request reaches the stream (and a
#: scaler's view) within this; the workers' maintenance period is at most as long. One
#: ZRANGEBYSCORE per queue per proxy each time, an EVALSHA only when something is due.
PROMOTE_INTERVAL_S = 1.0


class DuePromoter:
    """Calls ``promote_due`` on each of ``queues`` every PROMOTE_INTERVAL_S from
    ``start()`` until ``close()``. A failure (Redis down) is logged once until a call
    works again; the next interval tries again."""

    def __init__(self, queues: Iterable[Queue], *, clock: Callable[[], float] = time.time):
        self._queues = distinct(queues)
        self._now = clock
        self._task: asyncio.Task[None] | None = None
        self._trouble = Trouble(
            "promotion of due requests", logger=log, effect="they wait for a worker", details=1
        )

    async def promote(self) -> int:
        """One round over the queues: how many entries were moved."""
        moved = 0
        try:
            for queue in self._queues:
                moved += await queue.promote_due(self._now())
        except QueueError as exc:
            self._trouble.failed(exc)
            return moved
        if self._trouble.failing:
            self._trouble.recovered()
        return moved

    async def _run(self) -> None:
        while True:
            try:
                await self.promote()
            except Exception:  # a bug: promotion waits for a worker, the proxy goes on
                log.exception("promoting due requests failed")
            await asyncio.sleep(PROMOTE_INTERVAL_S)

    def start(self) -> DuePromoter:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
