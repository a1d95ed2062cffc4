"""Claiming from several queues (docs/architecture.md §5).

Each queue is claimed on its own (its keys share one hash tag, one Cluster slot; no
call reads two streams). A queue believed to have work is claimed without blocking,
in the ``ClaimOrder``; one found empty gets a blocking read of its own, a watcher,
which keeps running while the loop works on the others and marks the queue as having
work again when it returns an entry. So an idle worker blocks in Redis on every queue
at once instead of polling, and an entry arriving on any queue is seen at once.

With one queue the watcher claims as many entries as there are free slots, as a
single blocking claim would. With several it claims one: the queue then has work and
the next claims size its share; at most one entry per watcher can arrive while the
slots are full, and waits for one (``hqm.worker.slots``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from hqm.queue.base import Delivery, Queue
from hqm.worker.outcomes import Outcomes
from hqm.worker.queues import ClaimOrder

log = logging.getLogger("hqm.worker.loop")


class Lane:
    """One queue the worker consumes, and what the loop knows of it."""

    __slots__ = ("name", "outcomes", "parked", "queue", "ready", "watcher")

    def __init__(self, queue: Queue, outcomes: Outcomes) -> None:
        self.queue = queue
        self.name = queue.name
        self.outcomes = outcomes
        #: Believed to have work: claimed without blocking (else watched).
        self.ready = True
        #: Its unfinished deliveries that have waited for an app that cannot be reached.
        self.parked = 0
        #: The blocking claim watching it while it is empty.
        self.watcher: asyncio.Task[list[Delivery]] | None = None

    def count_parked(self, change: int) -> None:
        self.parked += change


Claimed = list[tuple[Lane, Delivery]]


class Claimer:
    def __init__(self, lanes: Sequence[Lane], order: ClaimOrder, consumer: str) -> None:
        self.lanes = tuple(lanes)
        self._order = order
        self._consumer = consumer
        #: A claim that failed while others of the same round succeeded: raised next.
        self._failed: BaseException | None = None
        #: Claims the queue answered so far (with entries or without): it is reachable.
        self.answers = 0

    def _raise_failed(self) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

    async def claim(self, free: int, *, park_cap: int, burst: bool) -> Claimed:
        """Up to ``free`` entries without blocking, from the queues with work, by the
        order's policy; a queue that returns fewer than asked is empty (watched next).
        A queue with ``park_cap`` deliveries parked is not claimed from."""
        self._raise_failed()
        if burst:  # no watchers: every queue is looked at each round
            for lane in self.lanes:
                lane.ready = True
        out: Claimed = []
        while free > 0:
            ready = [lane for lane in self.lanes if lane.ready and lane.parked < park_cap]
            by_name = {lane.name: lane for lane in ready}
            portions = [(by_name[n], k) for n, k in self._order.split(free, list(by_name))]
            if not portions:
                break
            results = await asyncio.gather(
                *(lane.queue.claim(self._consumer, count, 0.0) for lane, count in portions),
                return_exceptions=True,
            )
            for (lane, count), got in zip(portions, results, strict=True):
                if isinstance(got, BaseException):
                    if not isinstance(got, Exception):
                        raise got  # cancelled: stopping
                    self._failed = self._failed or got
                    continue
                self.answers += 1
                self._order.claimed(lane.name, len(got))
                out += [(lane, delivery) for delivery in got]
                free -= len(got)
                if len(got) < count:
                    lane.ready = False
            if self._failed is not None:
                break
        if not out:
            self._raise_failed()
        return out

    def watch(self, block_s: float, free: int, *, park_cap: int) -> None:
        """A blocking claim on every queue found empty that has none running yet."""
        count = free if len(self.lanes) == 1 else 1
        for lane in self.lanes:
            if not lane.ready and lane.watcher is None and lane.parked < park_cap:
                lane.watcher = asyncio.get_running_loop().create_task(
                    lane.queue.claim(self._consumer, count, block_s)
                )

    def collect(self) -> Claimed:
        """What finished watchers claimed; their queues have work again."""
        self._raise_failed()
        out: Claimed = []
        for lane in self.lanes:
            task = lane.watcher
            if task is None or not task.done():
                continue
            lane.watcher = None
            if task.cancelled():
                continue
            error = task.exception()
            if error is not None:
                self._failed = self._failed or error
                continue
            got = task.result()
            self.answers += 1
            if got:
                busy = (other.name for other in self.lanes if other.ready)
                self._order.resumed(lane.name, busy)
                lane.ready = True
                out += [(lane, delivery) for delivery in got]
        if not out:
            self._raise_failed()
        return out

    async def wait(self, wake: asyncio.Event, timeout_s: float) -> None:
        """Until a watcher is done, ``wake`` is set, or ``timeout_s``."""
        watchers = [lane.watcher for lane in self.lanes if lane.watcher is not None]
        if any(task.done() for task in watchers) or wake.is_set():
            return
        waker = asyncio.get_running_loop().create_task(wake.wait())
        try:
            await asyncio.wait(
                [*watchers, waker], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()

    async def settle(self, timeout_s: float) -> Claimed:
        """Stopping: the watchers still reading end within their block time; what
        they claimed is returned (to be worked on), not left pending."""
        watchers = [lane.watcher for lane in self.lanes if lane.watcher is not None]
        if watchers:
            _, pending = await asyncio.wait(watchers, timeout=timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        try:
            return self.collect()
        except Exception as exc:  # (QueueError: Redis went away meanwhile)
            log.warning("a claim failed while stopping: %s", exc)
            return []
