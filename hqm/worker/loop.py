"""The worker: claims stored requests from its queues, replays them to the apps they
name, records the answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from hqm.io.budget import ByteBudget
from hqm.ops.access_log import AccessLog
from hqm.ops.metrics import WorkerMetrics
from hqm.queue.base import Delivery, Queue, QueueError
from hqm.worker.attempt import Attempts
from hqm.worker.claims import Claimed, Claimer, Lane
from hqm.worker.fleet import FleetGate
from hqm.worker.heartbeat import Heartbeat
from hqm.worker.outage import Outage, QueueUnreachable
from hqm.worker.outcomes import Outcomes, log_ids
from hqm.worker.queues import ClaimOrder
from hqm.worker.ratelimit import RateLimiter
from hqm.worker.sender import Sender
from hqm.worker.settings import WorkerSettings
from hqm.worker.slots import Seat, Slots
from hqm.worker.upstream import ANSWER_HOLD, UpstreamPool

log = logging.getLogger("hqm.worker.loop")
__all__ = ["QueueUnreachable", "Worker"]  # (QueueUnreachable: hqm.worker.outage's)

#: A queue may have this many deliveries per --concurrency slot parked for an app that
#: is down (then it is not claimed from): enough for a queue that mixes apps to go on
#: for the others through an outage, and the memory they hold stays bounded.
_PARKED_PER_SLOT = 4
#: Stopping: a blocking read ends within its block time, plus this for its round trip;
#: a Redis that has not answered by then is hung (what its read claimed stays pending
#: under our name and is reclaimed): Ctrl-C on an idle worker must not wait on it.
_SETTLE_MARGIN_S = 0.5
#: Stopping: a claim round still waiting on Redis this long after stop() is cut short
#: (a hung Redis; one that answers ends it at once): what it claimed stays pending.
_STOP_GRACE_S = 0.5
#: Stopping: the consumer's removal is best effort (XPENDING + XGROUP DELCONSUMER per
#: queue, well under a second on a Redis that answers); a hung one is not waited for.
_RELEASE_S = 1.0


class Worker:
    """Runs until ``stop()`` (or, in burst mode, until every queue is empty).

    ``queues`` in the order given: strict priority, or with ``weights`` (one per
    queue) claims shared by weight (``hqm.worker.queues``). ``pools``: the apps by
    upstream name ("default" is ``--upstream``); an entry naming another is
    dead-lettered, never dialled.
    """

    def __init__(
        self,
        *,
        queues: Sequence[Queue],
        pools: Mapping[str, UpstreamPool],
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        weights: Sequence[int] | None = None,
        wall_clock: Callable[[], float] = time.time,
        fleet: FleetGate | None = None,
        access_log: AccessLog | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self._settings = settings
        self._budget = budget or ByteBudget(settings.max_inflight_bytes)  # (hqm.io.budget)
        self._metrics = metrics
        self._now = wall_clock
        #: Every delivery being worked on, by (queue, entry id), until its outcome is
        #: recorded (entry ids repeat across streams).
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: Set when a slot frees up and by stop(): what every wait of the loop waits on.
        self._wake = asyncio.Event()
        #: --concurrency: requests on their way to an app or at it. A slot frees up when
        #: the app has answered, so the next claim can share the round trip that records
        #: the answer.
        self._slots = Slots(settings.concurrency, self._wake.set)
        self._stopping = False
        #: The task in ``run``, in a claim round, cut short by stop() (a hung Redis).
        self._runner: asyncio.Task[None] | None = None
        self._in_step = self._cut = False
        self._last_maintenance = 0.0
        self._heartbeat = Heartbeat(settings.heartbeat_s)
        self._maintained = 0  # rounds of maintenance done (each answered by the queue)
        # In flight read at scrape; labelled children looked up once (in Outcomes).
        metrics.in_flight.set_function(lambda: self._slots.taken)
        self._fleet = fleet or FleetGate(None)
        limiter = RateLimiter(settings.rate)  # --rate: this worker's, all apps together
        #: One per upstream name, made up front (no connection before the first use):
        #: each app its own pool and breaker.
        self._senders = {
            name: Sender(
                name=name,
                pool=pool,
                limiter=limiter,
                fleet=self._fleet,
                max_retry_duration_s=settings.max_retry_duration_s,
                metrics=metrics,
                on_breaker_change=self._wake.set,
            )
            for name, pool in pools.items()
        }
        outcomes = partial(Outcomes, settings=settings, metrics=metrics, wall_clock=wall_clock)
        lanes = [Lane(queue, outcomes(queue=queue, access_log=access_log)) for queue in queues]
        self._lanes = {lane.name: lane for lane in lanes}
        self._wait_seconds = {
            lane.name: metrics.queue_wait_seconds.labels(lane.name) for lane in lanes
        }
        self._attempts = Attempts(
            settings=settings,
            senders=self._senders,
            fleet=self._fleet,
            wall_clock=wall_clock,
            wait_seconds=self._wait_seconds,
        )
        order = ClaimOrder([lane.name for lane in lanes], weights)
        self._claims = Claimer(lanes, order, settings.consumer)

    @property
    def in_flight(self) -> int:
        """Deliveries being worked on (at the app, or their outcome being recorded)."""
        return len(self._tasks)

    def abandoned(self) -> str:
        """What exiting now leaves undone: its entries stay pending under the consumer."""
        return (
            f"{self.in_flight} requests in flight abandoned (pending under consumer "
            f"{self._settings.consumer!r}: reclaimed after --visibility-timeout "
            f"{self._settings.visibility_timeout_s:g} s)"
        )

    def stop(self) -> None:
        """Stop claiming; ``run`` returns once in-flight requests finished (or drain ran out)."""
        self._stopping = True
        self._wake.set()
        asyncio.get_running_loop().call_later(_STOP_GRACE_S, self._cut_step)
        for sender in self._senders.values():
            sender.stop()

    async def run(self) -> None:
        """Claim and process until stopped. In burst mode, return once every queue is
        empty, or raise QueueUnreachable once it stayed unreachable for the burst
        timeout (a batch job must end, not retry forever)."""
        burst = self._settings.burst
        self._runner = asyncio.current_task()
        outage = Outage(burst_timeout_s=self._settings.burst_queue_timeout_s if burst else None)
        try:
            while not self._stopping:
                answers = self._answers
                try:
                    if not await self._round():
                        break
                except QueueError as exc:  # logged once per outage (hqm.worker.outage)
                    await self._pause(outage.failed(exc))
                    continue
                except Exception:  # a bug, never entry content: log, back off, go on
                    pause = outage.pause_s()
                    log.exception("worker step failed; retrying in %.1f s", pause)
                    await self._pause(pause)
                    continue
                if self._answers != answers:  # the queue answered: any outage is over
                    outage.answered()
        finally:
            await self._drain()

    async def _round(self) -> bool | None:
        """One claim round (``_step``); None when stop() cut it short."""
        self._in_step = True
        try:
            return await self._step()
        except asyncio.CancelledError:
            if not self._cut:
                raise
            asyncio.current_task().uncancel()  # (ours: the worker drains)
            return None
        finally:
            self._in_step = False

    def _cut_step(self) -> None:
        """Stopping: a claim round still waiting on Redis is cancelled (a hung Redis
        must not hold Ctrl-C); ``run`` goes on to drain."""
        if self._in_step and self._runner is not None:
            self._cut = True
            self._runner.cancel()

    @property
    def _answers(self) -> int:
        """Calls the queue answered so far (claims, and rounds of maintenance)."""
        return self._claims.answers + self._maintained

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
        self._start_all(await self._maintain(0))

    def _free(self) -> int:
        """Deliveries the next claim may take."""
        concurrency = self._settings.concurrency
        parked = sum(lane.parked for lane in self._claims.lanes)
        # (at most as many again still being recorded: Redis slow means claims wait too;
        # parked ones wait for an app that is down: they hold no slot)
        free = min(self._slots.free, 2 * concurrency - (len(self._tasks) - parked))
        if self._budget.answers_over:
            return 0  # the answers in hand are recorded first (each release wakes us)
        # Every app's breaker open: claim nothing; half-open: one probe each, if none held.
        allowed = 0
        for sender in self._senders.values():
            one = sender.breaker.allowed()
            if one is None:
                return free
            allowed += 0 if sender.held else one
        return min(free, allowed) if self._senders else free

    async def _step(self) -> bool:
        """One claim round; False when burst mode found nothing left to do."""
        free = self._free()
        if free <= 0:
            self._wake.clear()
            if not self._stopping:
                await self._wait_slot()
            return True
        self._wake.clear()  # (a wake from here on ends the wait below)
        burst = self._settings.burst
        cap = self._park_cap
        started = self._start_all(self._claims.collect())
        started += self._start_all(await self._maintain(free))
        free = self._free()
        if free > 0:
            started += self._start_all(await self._claims.claim(free, park_cap=cap, burst=burst))
        if burst:
            # Burst mode never blocks in Redis: it is done as soon as every queue is empty.
            if not started:
                if self._tasks:  # the last ones finishing: wait for one, then look again
                    self._wake.clear()
                    await self._wait_slot(0.05)
                elif await self._depth() == 0:
                    return False
                else:
                    await self._pause(0.05)  # entries held elsewhere or scheduled: wait
            return True
        # Never block past the maintenance period: claims on in-flight entries must be
        # renewed well within the visibility timeout, or a slow request is redelivered.
        if not self._stopping:
            self._claims.watch(self._block_s, max(1, self._free()), park_cap=cap)
            if not started:
                await self._claims.wait(self._wake, self._block_s)
        return True

    @property
    def _park_cap(self) -> int:
        """A queue with this many deliveries parked (their app is down) is not claimed
        from until they go: memory stays bounded, and the other queues go on."""
        return _PARKED_PER_SLOT * self._settings.concurrency

    async def _depth(self) -> int:
        return sum([await lane.queue.depth() for lane in self._claims.lanes])

    @property
    def _period_s(self) -> float:
        """Maintenance period: a third of the visibility timeout, at most 1 s."""
        return min(1.0, self._settings.visibility_timeout_s / 3)

    @property
    def _block_s(self) -> float:
        """Longest one wait (claim or free slot) may last before maintenance runs again."""
        return min(self._settings.claim_block_s, self._period_s)

    async def _maintain(self, free: int) -> Claimed:
        """Periodic work, per queue: due retries back in, claims renewed, dead
        consumers' entries taken (up to ``free`` in all)."""
        now = time.monotonic()
        if now - self._last_maintenance < self._period_s:
            return []
        self._last_maintenance = now
        consumer = self._settings.consumer
        beat = self._heartbeat.due()  # (this worker is alive: hqm status)
        for lane in self._claims.lanes:
            await lane.queue.promote_due(self._now())
            if beat:
                await lane.queue.heartbeat(consumer, self._heartbeat.ttl_s)
        if beat:
            self._heartbeat.written()
        if self._tasks:
            held: dict[str, list[str]] = {}
            for name, entry_id in self._tasks:
                held.setdefault(name, []).append(entry_id)
            for name, entry_ids in held.items():
                await self._lanes[name].queue.touch(consumer, entry_ids)
            await self._fleet.refresh()
        out: Claimed = []
        for lane in self._claims.lanes:
            if free - len(out) <= 0:
                break
            if lane.parked < self._park_cap:
                got = await lane.queue.reclaim(
                    consumer, self._settings.visibility_timeout_s, free - len(out)
                )
                out += [(lane, delivery) for delivery in got]
        self._maintained += 1
        return out

    def _start_all(self, claimed: Claimed) -> int:
        for lane, delivery in claimed:
            key = (lane.name, delivery.entry_id)
            if key in self._tasks:
                continue  # reclaimed our own entry that is still in progress
            seat = Seat(self._slots, on_park=lane.count_parked)
            self._tasks[key] = asyncio.create_task(self._process(lane, delivery, seat))
        return len(claimed)

    async def _process(self, lane: Lane, delivery: Delivery, seat: Seat) -> None:
        record = delivery.record
        hold = self._budget.hold()  # (this task's own context: its answer is charged to it)
        ANSWER_HOLD.set(hold)
        try:
            await seat.acquire()
            await self._attempts.run(lane, delivery, seat)
        except QueueError as exc:
            # The entry stays pending under our name and is reclaimed later: not lost.
            log.warning("could not record %s: %s", record.id, exc, extra=log_ids(record))
        except Exception:
            log.exception("worker failed on %s", record.id, extra=log_ids(record))
        finally:
            hold.release()  # the answer is recorded (or given up): its bytes are free
            self._tasks.pop((lane.name, delivery.entry_id), None)
            seat.finish()
            self._wake.set()

    async def _drain(self) -> None:
        """Let in-flight requests finish (bounded); what is cut off stays pending, not
        lost. What the idle queues' blocking reads claim meanwhile is worked on too."""
        self._start_all(await self._claims.settle(self._block_s + _SETTLE_MARGIN_S))
        if self._tasks:
            _, pending = await asyncio.wait(
                list(self._tasks.values()), timeout=self._settings.drain_timeout_s
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("drain timeout: %d requests left pending for reclaim", len(pending))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_RELEASE_S):
                for lane in self._claims.lanes:
                    with contextlib.suppress(QueueError):
                        await lane.queue.release(self._settings.consumer)
