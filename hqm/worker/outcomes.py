"""What happens to a delivery once the app answered or could not be asked: recorded,
retried later, or dead-lettered (docs/architecture.md §5)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from hqm.ops.metrics import WorkerMetrics
from hqm.proto.envelope import ResponseRecord
from hqm.queue.base import Delivery, Queue
from hqm.worker.retry import Failure, backoff_s, may_retry
from hqm.worker.settings import WorkerSettings

log = logging.getLogger("hqm.worker.loop")


class Outcomes:
    def __init__(
        self,
        *,
        queue: Queue,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        wall_clock: Callable[[], float],
    ) -> None:
        self._queue = queue
        self._settings = settings
        self._metrics = metrics
        self._now = wall_clock
        self._done = metrics.processed.labels("done")
        self._dead = metrics.processed.labels("dead")

    async def failed(self, delivery: Delivery, failure: Failure, attempt: int) -> None:
        record = delivery.record
        if may_retry(failure, record.method, record.headers):
            await self.retry_or_give_up(delivery, failure, attempt)
        else:
            await self.dead_letter(delivery, f"{failure.error} (attempt {attempt})", attempt)

    async def retry_or_give_up(self, delivery: Delivery, failure: Failure, attempt: int) -> None:
        if attempt >= self._settings.max_attempts:
            tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
            error = f"{failure.error}; gave up after {tries}"
            await self.dead_letter(delivery, error, attempt)
        else:
            await self._retry(delivery, failure, attempt)

    async def _retry(self, delivery: Delivery, failure: Failure, attempt: int) -> None:
        delay = backoff_s(
            attempt, base_s=self._settings.retry_base_s, max_s=self._settings.retry_max_s
        )
        if failure.retry_after_s is not None:
            delay = min(max(delay, failure.retry_after_s), self._settings.retry_max_s)
        await self._queue.retry_later(delivery, self._now() + delay, failure.error)
        self._metrics.retries.inc()

    async def complete(self, delivery: Delivery, response: ResponseRecord) -> None:
        await self._queue.complete(delivery, response)
        self._done.inc()

    async def dead_letter(self, delivery: Delivery, error: str, attempts: int) -> None:
        log.warning("dead-lettering %s: %s", delivery.record.id, error)
        await self._queue.dead_letter(delivery, error, attempts)
        self._metrics.dead_letters.inc()
        self._dead.inc()
