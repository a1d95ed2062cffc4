"""The proxy moves due delayed requests (``HQM-Delay``) and retries into their streams.

Workers do this too (their maintenance), but a deployment scaled to zero has none:
a request that fell due would sit in the ``delayed`` set while the stream's lag, what
KEDA's redis-streams trigger (and the ``hqm_queue_backlog`` gauge) reads, stays 0, and
no worker would ever be started for it. Promotion is one atomic script per call
(``Queue.promote_due``: each member moved only by the call that removed it), so any
number of proxies and workers may do it at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from hqm.ops.periodic import Periodic
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
        self._periodic = Periodic(
            self.promote, PROMOTE_INTERVAL_S, what="promoting due requests", logger=log
        )
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

    def start(self) -> DuePromoter:
        self._periodic.start()
        return self

    async def close(self) -> None:
        await self._periodic.close()
