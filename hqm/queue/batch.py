"""Coalesce calls made in one event-loop turn into one backend round trip.

``Batcher.submit(item)`` queues ``item`` and waits for its outcome. The first submit
of a turn starts a flush task; it runs once every callback already ready in that turn
(other connections' requests, other finished replays) has submitted too, and hands
them all to ``flush`` at once. One flush is in flight at a time: items submitted
meanwhile wait for the next one, so batches grow with the load instead of the round
trips multiplying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: ``flush(items)`` returns one outcome per item, in order: a value for its caller, or
#: an exception instance to raise in its caller.
Flush = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class Batcher(Generic[T, R]):
    def __init__(
        self,
        flush: Flush[T, R],
        *,
        failed: Callable[[BaseException], BaseException],
        max_items: int = 512,
        max_bytes: int = 4 << 20,
        size: Callable[[T], int] = lambda _item: 0,
    ) -> None:
        """``failed(exc)`` builds the exception each caller of a failed flush gets."""
        self._flush_items = flush
        self._failed = failed
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._size = size
        self._items: list[tuple[T, asyncio.Future[R] | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending = False
        #: Flushes made (one round trip each).
        self.flushes = 0

    @property
    def busy(self) -> bool:
        """A flush is in flight: what is submitted now waits for it to come back."""
        return self._sending

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._add(item, future)
        return await future

    def post(self, item: T, within_s: float = 0.0) -> None:
        """Send ``item`` with the next flush, at the latest ``within_s`` from now;
        nobody waits for its outcome."""
        if within_s <= 0:
            self._add(item, None)
            return
        self._items.append((item, None))
        if self._task is not None:
            return  # the flush in flight takes it with the next batch
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if self._timer.when() <= loop.time() + within_s:
                return  # a timer goes off in time for this one too
            self._timer.cancel()  # due later than this one: move it up
        self._timer = loop.call_later(within_s, self._kick)

    def _kick(self) -> None:
        self._timer = None
        if self._items and self._task is None:
            self._task = asyncio.create_task(self._run())

    def _add(self, item: T, future: asyncio.Future[R] | None) -> None:
        self._items.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._items:
                size, cut, limit = 0, 0, min(len(self._items), self._max_items)
                while cut < limit and size < self._max_bytes:
                    size += self._size(self._items[cut][0])
                    cut += 1
                batch, self._items = self._items[:cut], self._items[cut:]
                self._sending = True
                await self._send(batch)
                self._sending = False
        finally:
            self._task = None
            self._sending = False

    async def _send(self, batch: list[tuple[T, asyncio.Future[R] | None]]) -> None:
        self.flushes += 1
        try:
            outcomes = await self._flush_items([item for item, _ in batch])
        except BaseException as exc:  # never strand a caller
            self._fail(batch, exc)
            if not isinstance(exc, Exception):
                raise  # cancelled (close): stop flushing
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future is None or future.done():
                continue  # posted, or the caller went away: the outcome stands regardless
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    def _fail(self, batch: list[tuple[T, asyncio.Future[R] | None]], exc: BaseException) -> None:
        for _, future in batch:
            if future is not None and not future.done():
                future.set_exception(self._failed(exc))

    async def close(self, timeout_s: float, exc: BaseException) -> None:
        """Let the flush in flight land (up to ``timeout_s``); fail what is left with
        ``failed(exc)``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None:
            await asyncio.wait((task,), timeout=timeout_s)
            task.cancel()
            await asyncio.wait((task,))
        self._fail(self._items, exc)
        self._items.clear()
