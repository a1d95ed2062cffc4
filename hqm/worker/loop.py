"""The worker: claims stored requests, replays them to the app, records the answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from hqm.ops.metrics import WorkerMetrics
from hqm.proto.envelope import ResponseRecord
from hqm.proto.headers import ForwardedInfo, header_value, upstream_request_headers
from hqm.queue.base import Delivery, Queue, QueueError
from hqm.worker.fleet import FleetGate
from hqm.worker.outcomes import Outcomes
from hqm.worker.retry import (
    RETRY_ANY_METHOD,
    RETRY_IDEMPOTENT,
    Failure,
    may_retry,
    parse_retry_after,
)
from hqm.worker.sender import Sender
from hqm.worker.settings import WorkerSettings
from hqm.worker.upstream import UpstreamError, UpstreamPool

log = logging.getLogger("hqm.worker.loop")

_RETRY_STATUSES = RETRY_ANY_METHOD | RETRY_IDEMPOTENT
#: Upper bound on the pause after a queue error (Redis down): reconnect backoff.
_MAX_QUEUE_BACKOFF_S = 5.0


class QueueUnreachable(Exception):
    """Burst mode gave up on a queue that stayed unreachable."""


class Worker:
    """Runs until ``stop()`` (or, in burst mode, until the queue is empty)."""

    def __init__(
        self,
        *,
        queue: Queue,
        pool: UpstreamPool,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        wall_clock: Callable[[], float] = time.time,
        fleet: FleetGate | None = None,
    ) -> None:
        self._queue = queue
        self._app_host = str(pool.upstream).encode()
        self._settings = settings
        self._metrics = metrics
        self._now = wall_clock
        #: Every delivery being worked on, until its outcome is recorded.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Those holding a --concurrency slot: on their way to the app or at it. A slot
        #: frees up when the app has answered, so the next claim can share the round trip
        #: that records the answer.
        self._at_app: set[str] = set()
        #: Set when a slot frees up and by stop(): what every wait of the loop waits on.
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_maintenance = 0.0
        # In flight read at scrape; labelled children looked up once (in Outcomes).
        metrics.in_flight.set_function(lambda: len(self._at_app))
        self._fleet = fleet or FleetGate(None)
        self._sender = Sender(
            pool=pool,
            rate=settings.rate,
            fleet=self._fleet,
            max_retry_duration_s=settings.max_retry_duration_s,
            metrics=metrics,
            on_breaker_change=self._wake.set,
        )
        self._outcomes = Outcomes(
            queue=queue, settings=settings, metrics=metrics, wall_clock=wall_clock
        )

    @property
    def in_flight(self) -> int:
        """Deliveries being worked on (at the app, or their outcome being recorded)."""
        return len(self._tasks)

    def stop(self) -> None:
        """Stop claiming; ``run`` returns once in-flight requests finished (or drain ran out)."""
        self._stopping = True
        self._wake.set()
        self._sender.stop()

    async def run(self) -> None:
        """Claim and process until stopped. In burst mode, return once the queue is
        empty, or raise QueueUnreachable once it stayed unreachable for the burst
        timeout (a batch job must end, not retry forever)."""
        backoff = 0.1
        unreachable_since: float | None = None
        try:
            while not self._stopping:
                try:
                    if not await self._step():
                        break
                    backoff, unreachable_since = 0.1, None
                except QueueError as exc:
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    limit = self._settings.burst_queue_timeout_s
                    if self._settings.burst and now - unreachable_since >= limit:
                        raise QueueUnreachable(
                            f"queue unreachable for {limit:g} s in burst mode: {exc}"
                        ) from None
                    log.warning("queue unavailable: %s; retrying in %.1f s", exc, backoff)
                    await self._pause(backoff)
                    backoff = min(_MAX_QUEUE_BACKOFF_S, backoff * 2)
                except Exception:  # a bug, never entry content: log, back off, go on
                    log.exception("worker step failed; retrying in %.1f s", backoff)
                    await self._pause(backoff)
                    backoff = min(_MAX_QUEUE_BACKOFF_S, backoff * 2)
        finally:
            await self._drain()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless stopped first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while not self._stopping:
                    self._wake.clear()
                    await self._wake.wait()

    async def _wait_slot(self, limit_s: float | None = None) -> None:
        """Until a slot frees up or stop(), bounded by the maintenance period: claims
        on in-flight entries must be renewed well within the visibility timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self._block_s, limit_s or self._block_s)):
                await self._wake.wait()
        await self._maintain(0)

    async def _step(self) -> bool:
        """One claim round; False when burst mode found nothing left to do."""
        concurrency = self._settings.concurrency
        # (at most as many again still being recorded: Redis slow means claims wait too)
        free = min(concurrency - len(self._at_app), 2 * concurrency - len(self._tasks))
        allowed = self._sender.breaker.allowed()
        if allowed is not None:  # open: claim nothing; half-open: one probe, if none held
            free = min(free, 0 if self._sender.held else allowed)
        if free <= 0:
            self._wake.clear()
            if not self._stopping:
                await self._wait_slot()
            return True
        deliveries = await self._maintain(free)
        if not deliveries:
            # Never block past the maintenance period: claims on in-flight entries must be
            # renewed well within the visibility timeout, or a slow request is redelivered.
            # Burst mode never blocks in Redis: it is done as soon as the queue is empty.
            block = 0.0 if self._settings.burst else self._block_s
            deliveries = await self._queue.claim(self._settings.consumer, free, block)
        if not deliveries and self._settings.burst:
            if self._tasks:  # the last ones finishing: wait for one, then look again
                self._wake.clear()
                await self._wait_slot(0.05)
            elif await self._queue.depth() == 0:
                return False
            else:
                await self._pause(0.05)  # entries held elsewhere or scheduled: wait
        for delivery in deliveries:
            self._start(delivery)
        return True

    @property
    def _period_s(self) -> float:
        """Maintenance period: a third of the visibility timeout, at most 1 s."""
        return min(1.0, self._settings.visibility_timeout_s / 3)

    @property
    def _block_s(self) -> float:
        """Longest one wait (claim or free slot) may last before maintenance runs again."""
        return min(self._settings.claim_block_s, self._period_s)

    async def _maintain(self, free: int) -> list[Delivery]:
        """Periodic work: due retries back in, claims renewed, dead consumers' entries taken."""
        now = time.monotonic()
        if now - self._last_maintenance < self._period_s:
            return []
        self._last_maintenance = now
        await self._queue.promote_due(self._now())
        if self._tasks:
            await self._queue.touch(self._settings.consumer, list(self._tasks))
            await self._fleet.refresh()
        if free <= 0:
            return []
        return await self._queue.reclaim(
            self._settings.consumer, self._settings.visibility_timeout_s, free
        )

    def _start(self, delivery: Delivery) -> None:
        if delivery.entry_id in self._tasks:
            return  # reclaimed our own entry that is still in progress
        self._at_app.add(delivery.entry_id)
        self._tasks[delivery.entry_id] = asyncio.create_task(self._process(delivery))

    async def _process(self, delivery: Delivery) -> None:
        try:
            await self._attempt(delivery)
        except QueueError as exc:
            # The entry stays pending under our name and is reclaimed later: not lost.
            log.warning("could not record %s: %s", delivery.record.id, exc)
        except Exception:
            log.exception("worker failed on %s", delivery.record.id)
        finally:
            self._tasks.pop(delivery.entry_id, None)
            self._at_app.discard(delivery.entry_id)
            self._wake.set()

    def _answered(self, entry_id: str) -> None:
        """The app is done with this delivery: its slot is free."""
        self._at_app.discard(entry_id)
        self._wake.set()

    async def _attempt(self, delivery: Delivery) -> None:
        record = delivery.record
        if delivery.deliveries > self._settings.max_deliveries:
            self._answered(delivery.entry_id)
            error = f"delivered {delivery.deliveries - 1} times without finishing"
            await self._outcomes.dead_letter(delivery, error, delivery.attempt)
            return
        if delivery.attempt == 0 and delivery.deliveries == 1:
            self._metrics.queue_wait_seconds.observe(max(0.0, self._now() - record.received_at))
        attempt = delivery.attempt + 1
        headers = upstream_request_headers(
            record.headers,
            body_length=len(record.body),
            request_id=record.id,
            forwarded=ForwardedInfo(
                client=record.client, proto=record.scheme, policy=self._settings.forwarding
            ),
            default_host=self._app_host,
        )
        try:
            response = await self._sender.send(delivery, headers)
        except UpstreamError as exc:
            self._answered(delivery.entry_id)
            failure = Failure(str(exc), reached=exc.reached, permanent=exc.permanent)
            await self._outcomes.failed(delivery, failure, attempt)
            return
        self._answered(delivery.entry_id)
        if response is None:
            return  # stopping while the app was unreachable: left pending, not lost
        retry_after = None
        if response.status in _RETRY_STATUSES:
            retry_after = parse_retry_after(
                header_value(response.headers, b"retry-after"), now=self._now()
            )
        if response.status in RETRY_ANY_METHOD:  # "come back later": slow everyone down
            await self._fleet.throttled(retry_after)
        else:
            self._fleet.succeeded()
        if response.status in _RETRY_STATUSES:
            failure = Failure(
                f"app answered {response.status}",
                reached=True,
                status=response.status,
                retry_after_s=retry_after,
            )
            if may_retry(failure, record.method, record.headers):
                await self._outcomes.retry_or_give_up(delivery, failure, attempt)
                return
        # A real answer (also a 5xx that is not safe to ask again) goes to the client.
        # (Built directly: dataclasses.replace costs several µs per message.)
        response = ResponseRecord(
            response.status,
            response.reason,
            response.headers,
            response.body,
            response.http_version,
            attempt,
            self._now(),
            response.error,
            record.method,
        )
        await self._outcomes.complete(delivery, response)

    async def _drain(self) -> None:
        """Let in-flight requests finish (bounded); what is cut off stays pending, not lost."""
        if self._tasks:
            _, pending = await asyncio.wait(
                list(self._tasks.values()), timeout=self._settings.drain_timeout_s
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("drain timeout: %d requests left pending for reclaim", len(pending))
        with contextlib.suppress(QueueError):
            await self._queue.release(self._settings.consumer)
