"""The ``hqm_queue_*`` gauges, kept current by one background task per process: a read
of the queues' figures from Redis every ``--stats-interval`` seconds. A scrape reads
what the last refresh set and never waits on Redis; while Redis cannot be read the
gauges keep their last values (a scaler then holds its replicas rather than drop them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from hqm.ops.metrics import QueueMetrics
from hqm.ops.periodic import Periodic
from hqm.queue.base import QueueError

if TYPE_CHECKING:  # (redis-py is imported only where Redis is used)
    from hqm.queue.redis_stats import QueueStats, StatsReader

log = logging.getLogger("hqm.ops.queue_gauges")

#: One refresh may take at most this long: the reader's commands have 5 s timeouts.
_REFRESH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsSettings:
    #: Seconds between two reads of the queues' figures; 0: no gauges.
    interval_s: float
    #: A consumer idle this long is not counted alive (the workers' visibility timeout).
    alive_within_s: float


class QueueGauges:
    """Sets ``metrics`` from ``reader`` for ``queues`` every interval, from ``start()``
    until ``close()``; ``depth`` (the proxy's ``hqm_queue_depth``) is set as well."""

    def __init__(
        self,
        *,
        reader: StatsReader,
        queues: Sequence[str],
        metrics: QueueMetrics,
        settings: StatsSettings,
        depth: Gauge | None = None,
    ) -> None:
        self._reader = reader
        self._queues = tuple(queues)
        self._metrics = metrics
        self._settings = settings
        self._depth = depth
        self._periodic = Periodic(
            self.refresh, settings.interval_s, what="queue figures refresh", logger=log
        )
        self._failing = False

    async def refresh(self) -> bool:
        """One read; False (logged once until a read works again) when it failed."""
        try:
            async with asyncio.timeout(_REFRESH_TIMEOUT_S):
                read = await self._reader.read(
                    self._queues, alive_within_s=self._settings.alive_within_s
                )
        except (QueueError, TimeoutError) as exc:
            if not self._failing:
                log.warning("cannot read the queue figures for /metrics: %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("queue figures for /metrics readable again")
        self._failing = False
        for stats in read:
            self._set(stats)
        return True

    def _set(self, stats: QueueStats) -> None:
        m, q = self._metrics, stats.queue
        m.backlog.labels(q).set(stats.backlog)
        m.pending.labels(q).set(stats.pending)
        m.scheduled.labels(q).set(stats.scheduled)
        m.dead_letters.labels(q).set(stats.dead_letters)
        m.oldest_age.labels(q).set(stats.oldest_age_s)
        m.consumers.labels(q).set(stats.alive)
        if stats.results is not None:
            m.results.labels(q).set(stats.results.count)
            m.results_bytes.labels(q).set(stats.results.memory_bytes)
        if self._depth is not None:
            self._depth.labels(q).set(stats.depth)

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()
        with contextlib.suppress(Exception):
            await self._reader.close()
