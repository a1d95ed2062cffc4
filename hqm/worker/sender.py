"""Getting one request to the app: the circuit breaker, the per-worker rate, the
fleet-wide limits, the keep-alive pool. Connection failures spend no attempt here
(docs/architecture.md §5)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import Histogram

from hqm.ops.metrics import WorkerMetrics
from hqm.proto.envelope import ResponseRecord
from hqm.queue.base import Delivery
from hqm.worker.breaker import Breaker, State
from hqm.worker.fleet import FleetGate
from hqm.worker.ratelimit import RateLimiter
from hqm.worker.upstream import UpstreamError, UpstreamPool

log = logging.getLogger("hqm.worker.loop")


class Sender:
    def __init__(
        self,
        *,
        pool: UpstreamPool,
        rate: float,
        fleet: FleetGate,
        max_retry_duration_s: float,
        metrics: WorkerMetrics,
        on_breaker_change: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._limiter = RateLimiter(rate)
        self._fleet = fleet
        self._max_retry_s = max_retry_duration_s
        self._metrics = metrics
        self._on_change = on_breaker_change
        #: Opens while the app cannot be reached: nothing is claimed, held ones wait.
        self.breaker = Breaker(time.monotonic, self._on_breaker)
        self._changed = asyncio.Event()
        metrics.breaker_state.set(State.CLOSED.value)
        #: Deliveries waiting for the breaker's permission.
        self.held = 0
        self._stopping = False
        self._app_seconds: dict[str, Histogram] = {}

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()

    async def send(
        self, delivery: Delivery, headers: list[tuple[bytes, bytes]]
    ) -> ResponseRecord | None:
        """Send until the app is reached; None when stopped first.

        A connection that cannot be made sent nothing: it spends no attempt. The
        delivery waits for the breaker (its claim renewed with the others) and goes
        again, until --max-retry-duration has passed since its first such failure.
        """
        record = delivery.record
        unreachable_since: float | None = None
        while await self._permit():
            async with self._fleet.slot(delivery.entry_id):
                await self._limiter.acquire()
                started = time.perf_counter()
                try:
                    response = await self._pool.request(
                        record.method, record.target, headers, record.body
                    )
                except UpstreamError as exc:
                    self._observe("error", time.perf_counter() - started)
                    if exc.permanent:  # never sent (our side refused it): says nothing
                        self.breaker.abandon()
                        self._changed.set()
                        raise
                    self._outcome(reached=exc.reached)
                    if exc.reached:
                        raise
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since >= self._max_retry_s:
                        raise UpstreamError(
                            f"{exc}; unreachable for {self._max_retry_s:g} s "
                            "(--max-retry-duration)",
                            reached=False,
                            permanent=True,
                        ) from None
                    continue
            self._outcome(reached=True)
            self._observe(f"{response.status // 100}xx", time.perf_counter() - started)
            return response
        return None

    async def _permit(self) -> bool:
        """Wait until the breaker lets a request go; False once stopping."""
        self.held += 1
        try:
            while not self._stopping and not self.breaker.start():
                self._changed.clear()
                delay = self.breaker.retry_in_s()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay if delay > 0 else None):
                        await self._changed.wait()
        finally:
            self.held -= 1
        return not self._stopping

    def _outcome(self, *, reached: bool) -> None:
        if reached:
            self.breaker.answered()
        else:
            self.breaker.unreachable()
        self._changed.set()  # a probe ended: the next may go

    def _on_breaker(self, old: State, new: State) -> None:
        log.warning(
            "circuit breaker %s",
            new.name.lower().replace("_", "-"),
            extra={"from": old.name.lower(), "upstream": str(self._pool.upstream)},
        )
        self._metrics.breaker_state.set(new.value)
        self._changed.set()
        self._on_change()

    def _observe(self, status_class: str, seconds: float) -> None:
        histogram = self._app_seconds.get(status_class)
        if histogram is None:
            histogram = self._app_seconds[status_class] = self._metrics.app_seconds.labels(
                status_class
            )
        histogram.observe(seconds)
