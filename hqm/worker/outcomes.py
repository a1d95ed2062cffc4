"""What happens to a delivery once the app answered or could not be asked: recorded,
retried later, or dead-lettered (docs/architecture.md §5)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from hqm.ops.access_log import AccessLog, worker_entry
from hqm.ops.metrics import WorkerMetrics, attempt_code
from hqm.proto.envelope import RequestRecord, ResponseRecord
from hqm.queue.base import Delivery, Queue, QueueError
from hqm.worker.retry import Failure, backoff_s, may_retry
from hqm.worker.settings import WorkerSettings

log = logging.getLogger("hqm.worker.loop")

#: Recording an outcome while the queue is unreachable: first retry after ..., doubling
#: up to ... (bounded by the visibility timeout).
_RECORD_RETRY_S = (0.1, 2.0)


def log_ids(record: RequestRecord) -> dict[str, str]:
    """The ``extra`` of a log line about one request: its id, and its trace id when it
    has one (so one grep follows a request from the proxy's line to the worker's)."""
    if record.trace_id:
        return {"request_id": record.id, "trace_id": record.trace_id}
    return {"request_id": record.id}


class Outcomes:
    def __init__(
        self,
        *,
        queue: Queue,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        wall_clock: Callable[[], float],
        access_log: AccessLog | None = None,
    ) -> None:
        self._queue = queue
        #: --access-log: a line per finished request (None: off).
        self._access = access_log if access_log is not None and access_log.enabled else None
        self._settings = settings
        self._metrics = metrics
        self._now = wall_clock
        # (labelled children looked up once: this queue's)
        self._done = metrics.processed.labels("done", queue.name)
        self._dead = metrics.processed.labels("dead", queue.name)
        self._retries = metrics.retries.labels(queue.name)
        self._dead_letters = metrics.dead_letters.labels(queue.name)
        self._attempts: dict[str, Counter] = {}  # by code label, looked up once

    def _attempted(self, status: int | None) -> None:
        """One attempt at the app ended: with ``status``, or None (no answer)."""
        code = attempt_code(status)
        child = self._attempts.get(code)
        if child is None:
            child = self._attempts[code] = self._metrics.attempts.labels(self._queue.name, code)
        child.inc()

    async def failed(self, delivery: Delivery, failure: Failure, attempt: int) -> None:
        self._attempted(failure.status)
        record = delivery.record
        if may_retry(failure, record.method, record.headers):
            await self._retry_or_give_up(delivery, failure, attempt)
        else:
            await self.dead_letter(delivery, f"{failure.error} (attempt {attempt})", attempt)

    async def retry_or_give_up(self, delivery: Delivery, failure: Failure, attempt: int) -> None:
        """The app answered ``failure.status``, a status worth asking again."""
        self._attempted(failure.status)
        await self._retry_or_give_up(delivery, failure, attempt)

    async def _retry_or_give_up(self, delivery: Delivery, failure: Failure, attempt: int) -> None:
        # the record's own limit (its route's), when it has one
        limit = delivery.record.max_attempts or self._settings.max_attempts
        if attempt >= limit:
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
        due = self._now() + delay
        await self._record(lambda: self._queue.retry_later(delivery, due, failure.error))
        self._retries.inc()

    async def complete(self, delivery: Delivery, response: ResponseRecord) -> None:
        self._attempted(response.status)
        await self._record(lambda: self._queue.complete(delivery, response))
        self._done.inc()
        if self._access is not None and self._access.wanted():
            self._access.add(
                worker_entry(
                    delivery.record,
                    now=self._now(),
                    queue=self._queue.name,
                    outcome="done",
                    status=response.status,
                    attempts=response.attempts,
                )
            )

    async def dead_letter(self, delivery: Delivery, error: str, attempts: int) -> None:
        record = delivery.record
        log.warning("dead-lettering %s: %s", record.id, error, extra=log_ids(record))
        await self._record(lambda: self._queue.dead_letter(delivery, error, attempts))
        self._dead_letters.inc()
        self._dead.inc()
        if self._access is not None and self._access.wanted():
            self._access.add(
                worker_entry(
                    record,
                    now=self._now(),
                    queue=self._queue.name,
                    outcome="dead",
                    status=None,
                    attempts=attempts,
                    error=error,
                )
            )

    async def _record(self, write: Callable[[], Awaitable[None]]) -> None:
        """Record an outcome. While the queue is unreachable (Redis restarting) keep it
        and try again rather than leave the entry to be redelivered: the app must not
        run a request twice because Redis blinked. Up to the visibility timeout: later,
        another worker may have taken the entry over, and of two outcomes only the first
        recorded counts (the scripts are XACK-guarded), so trying longer is pointless."""
        delay = _RECORD_RETRY_S[0]
        deadline = time.monotonic() + self._settings.visibility_timeout_s
        while True:
            try:
                await write()
                return
            except QueueError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("could not record an outcome (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(_RECORD_RETRY_S[1], delay * 2)
