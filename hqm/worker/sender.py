"""Getting one request to one app (a named upstream): its circuit breaker and
keep-alive pool, the worker's rate and the fleet-wide limits. Connection failures
spend no attempt here (docs/architecture.md §5)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import Histogram

from hqm.ops.metrics import WorkerMetrics
from hqm.proto.envelope import RequestRecord, ResponseRecord
from hqm.proto.replay_token import HEADER as REPLAY_HEADER
from hqm.proto.replay_token import sign
from hqm.queue.base import Delivery
from hqm.worker.breaker import Breaker, State
from hqm.worker.fleet import FleetGate
from hqm.worker.ratelimit import RateLimiter
from hqm.worker.slots import Seat
from hqm.worker.upstream import UpstreamError, UpstreamPool

log = logging.getLogger("hqm.worker.loop")


def replay_stamp(
    key: bytes, record: RequestRecord, clock: Callable[[], float]
) -> Callable[[], tuple[bytes, bytes]]:
    """An HQM-Replay header minted anew for each write of ``record`` (bound to it; a
    proxy spends each once)."""

    def stamp() -> tuple[bytes, bytes]:
        request = {"method": record.method, "target": record.target, "body": record.body}
        return REPLAY_HEADER, sign(key, record.id, clock(), **request)

    return stamp


class Sender:
    """One per upstream name: one app down opens its breaker only."""

    def __init__(
        self,
        *,
        name: str,
        pool: UpstreamPool,
        limiter: RateLimiter,
        fleet: FleetGate,
        max_retry_duration_s: float,
        metrics: WorkerMetrics,
        on_breaker_change: Callable[[], None],
    ) -> None:
        self.name = name
        self._pool = pool
        #: The ``Host`` a request without one gets at replay.
        self.host = str(pool.upstream).encode()
        self._limiter = limiter
        self._fleet = fleet
        self._max_retry_s = max_retry_duration_s
        self._metrics = metrics
        self._on_change = on_breaker_change
        #: Opens while the app cannot be reached: its deliveries wait (parked).
        self.breaker = Breaker(time.monotonic, self._on_breaker)
        self._changed = asyncio.Event()
        self._breaker_gauge = metrics.breaker_state.labels(name)
        self._breaker_gauge.set(State.CLOSED.value)
        #: Deliveries waiting for the breaker's permission.
        self.held = 0
        self._stopping = False
        self._failed_probes = 0  # since the breaker opened (its log: open, then closed)
        self._app_seconds: dict[tuple[str, str], Histogram] = {}

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()

    async def send(
        self,
        delivery: Delivery,
        headers: list[tuple[bytes, bytes]],
        *,
        seat: Seat,
        queue: str,
        stamp: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> ResponseRecord | None:
        """Send until the app is reached; None when stopped first.

        A connection that cannot be made sent nothing: it spends no attempt. The
        delivery waits for the breaker (its claim renewed with the others, its slot
        given back: parked) and goes again, until --max-retry-duration has passed
        since its first such failure. The record's ``timeout_s`` (when > 0) replaces
        --read-timeout. ``stamp``: a header minted for each write (UpstreamPool.request).
        """
        record = delivery.record
        read_timeout_s = record.timeout_s if record.timeout_s > 0 else None
        holder = f"{queue}/{delivery.entry_id}"  # (entry ids repeat across streams)
        deadline: float | None = None  # set by the first connection failure
        last_error: UpstreamError | None = None
        while True:
            permitted = await self._permit(deadline, seat)
            if permitted is None:
                return None  # stopping: left pending, not lost
            if not permitted:
                assert last_error is not None
                raise UpstreamError(
                    f"{last_error}; unreachable for {self._max_retry_s:g} s (--max-retry-duration)",
                    reached=False,
                    permanent=True,
                )
            async with self._fleet.slot(holder):
                await self._limiter.acquire()
                started = time.perf_counter()
                try:
                    response = await self._pool.request(
                        record.method,
                        record.target,
                        headers,
                        record.body,
                        read_timeout_s=read_timeout_s,
                        stamp=stamp,
                    )
                except UpstreamError as exc:
                    self._observe(queue, "error", time.perf_counter() - started)
                    if exc.permanent:  # never sent (our side refused it): says nothing
                        self.breaker.abandon()
                        self._changed.set()
                        raise
                    self._outcome(reached=exc.reached)
                    if exc.reached:
                        raise
                    last_error = exc
                    deadline = deadline or time.monotonic() + self._max_retry_s
                    continue
            self._outcome(reached=True)
            self._observe(queue, f"{response.status // 100}xx", time.perf_counter() - started)
            return response

    async def _permit(self, deadline: float | None, seat: Seat) -> bool | None:
        """Wait until the breaker lets a request go (True; with a slot again), or
        ``deadline`` (monotonic) passes first (False), or the worker stops (None).
        Parked meanwhile: its slot serves the other apps."""
        self.held += 1
        try:
            while not self._stopping:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if self.breaker.start():
                    await seat.unpark()
                    return True
                seat.park()
                self._changed.clear()
                delay = self.breaker.retry_in_s() or None  # None: until the probe ends
                if deadline is not None:
                    left = deadline - time.monotonic()
                    delay = left if delay is None else min(delay, left)
                    if delay <= 0:
                        continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
            return None
        finally:
            self.held -= 1

    def _outcome(self, *, reached: bool) -> None:
        if reached:
            self.breaker.answered()
        else:
            self.breaker.unreachable()
        self._changed.set()  # a probe ended: the next may go

    def _on_breaker(self, old: State, new: State) -> None:
        """One line when the app is found down, one when it answers again: the probes
        between (open, half-open, open, ...) are debug lines."""
        extra = {"from": old.name.lower(), "upstream": self.name}
        extra["address"] = str(self._pool.upstream)
        if new is State.CLOSED:
            extra["failed_probes"] = self._failed_probes
            log.info("circuit breaker closed", extra=extra)
        elif old is State.CLOSED:
            self._failed_probes = 0
            log.warning("circuit breaker open", extra=extra)
        else:
            self._failed_probes += new is State.OPEN
            log.debug("circuit breaker %s", new.name.lower().replace("_", "-"), extra=extra)
        self._breaker_gauge.set(new.value)
        self._changed.set()
        self._on_change()

    def _observe(self, queue: str, status_class: str, seconds: float) -> None:
        histogram = self._app_seconds.get((queue, status_class))
        if histogram is None:
            histogram = self._metrics.app_seconds.labels(status_class, queue)
            self._app_seconds[queue, status_class] = histogram
        histogram.observe(seconds)
