"""hqm.queue.batch.Batcher: calls of one loop turn share one flush, one flush in flight."""

from __future__ import annotations

import asyncio

import pytest

from hqm.queue.batch import Batcher


class Boom(Exception):
    pass


def _failed(exc: BaseException) -> Exception:
    return RuntimeError(f"failed: {exc!r}")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


#: Loop turns that are plenty for a flush to start: a submit's task runs in the next
#: turn, the flush task it creates in the one after (see the first test). Counting turns,
#: unlike sleeping, does not depend on how fast the machine is.
TURNS = 10


async def turns(n: int = TURNS) -> None:
    """Let every ready callback run, ``n`` times over (no wall-clock wait)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Flushes:
    """A flush function that records its batches and signals each one."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self._changed = asyncio.Event()

    async def __call__(self, items: list) -> list[None]:
        self.batches.append(items)
        self._changed.set()
        return [None] * len(items)

    async def wait_for(self, count: int) -> None:
        """Until ``count`` flushes were made (the caller's wait_for bounds it)."""
        while len(self.batches) < count:
            self._changed.clear()
            await self._changed.wait()


def test_one_flush_per_loop_turn_and_one_in_flight() -> None:
    async def body() -> None:
        flushed: list[list[int]] = []
        gate = asyncio.Event()

        async def flush(items: list[int]) -> list[int]:
            flushed.append(items)
            await gate.wait()
            return [i * 10 for i in items]

        batcher: Batcher[int, int] = Batcher(flush, failed=_failed)
        first = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert flushed == [[0, 1, 2, 3, 4]]  # two turns: the submits, then the flush
        assert batcher.busy
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(5, 8)]
        await turns()  # many times what the first flush needed to start
        assert len(flushed) == 1  # the first flush is still in flight: no second one
        assert not any(f.done() for f in [*first, *later])
        gate.set()
        assert await asyncio.gather(*first, *later) == [i * 10 for i in range(8)]
        assert flushed == [[0, 1, 2, 3, 4], [5, 6, 7]]
        assert batcher.flushes == 2

    run(body())


def test_batches_are_cut_by_count_and_bytes() -> None:
    async def body() -> None:
        sizes: list[int] = []

        async def flush(items: list[bytes]) -> list[None]:
            sizes.append(len(items))
            return [None] * len(items)

        by_count: Batcher[bytes, None] = Batcher(flush, failed=_failed, max_items=3)
        await asyncio.gather(*(by_count.submit(b"x") for _ in range(7)))
        assert sizes == [3, 3, 1]
        sizes.clear()
        by_bytes: Batcher[bytes, None] = Batcher(flush, failed=_failed, max_bytes=10, size=len)
        await asyncio.gather(*(by_bytes.submit(b"x" * 4) for _ in range(5)))
        assert sizes == [3, 2]  # stops once 10 bytes are reached

    run(body())


def test_per_item_exceptions_and_failed_flush() -> None:
    async def body() -> None:
        broken = False

        async def flush(items: list[int]) -> list[int | BaseException]:
            if broken:
                raise Boom("down")
            return [ValueError(i) if i % 2 else i for i in items]

        batcher: Batcher[int, int] = Batcher(flush, failed=_failed)
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(4)), return_exceptions=True
        )
        assert outcomes[0] == 0 and outcomes[2] == 2
        assert isinstance(outcomes[1], ValueError) and isinstance(outcomes[3], ValueError)
        broken = True
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) and "Boom" in str(o) for o in outcomes)
        assert len({id(o) for o in outcomes}) == 3  # one exception per caller
        broken = False
        assert await batcher.submit(4) == 4  # the batcher recovers

    run(body())


def test_close_fails_what_is_left() -> None:
    async def body() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def flush(items: list[int]) -> list[int]:
            started.set()
            try:
                await asyncio.Event().wait()  # never lands by itself
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return items

        batcher: Batcher[int, int] = Batcher(flush, failed=_failed)
        calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await started.wait()
        waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(3, 5)]
        await turns()  # queued behind the flush in flight
        await batcher.close(0, Boom("closed"))
        assert cancelled.is_set()  # the flush in flight was cut off: its callers fail ...
        for call in calls:
            with pytest.raises(RuntimeError, match="CancelledError"):
                await call
        for call in waiting:  # ... and so do those queued behind it, with close's reason
            with pytest.raises(RuntimeError, match="Boom"):
                await call
        assert batcher.flushes == 1

    run(body())


def test_close_lets_the_flush_in_flight_land() -> None:
    async def body() -> None:
        gate = asyncio.Event()

        async def flush(items: list[int]) -> list[int]:
            await gate.wait()
            return items

        batcher: Batcher[int, int] = Batcher(flush, failed=_failed)
        call = asyncio.ensure_future(batcher.submit(7))
        await turns()
        closing = asyncio.ensure_future(batcher.close(30, Boom("closed")))
        await turns()
        assert not closing.done()  # waits for the flush, well within its 30 s
        gate.set()
        await closing
        assert await call == 7

    run(body())


def test_posted_items_ride_with_the_next_flush_or_go_when_due() -> None:
    async def body() -> None:
        flushes = Flushes()
        batcher: Batcher[str, None] = Batcher(flushes, failed=_failed)
        batcher.post("now")  # no delay: flushed at the next loop turn
        await flushes.wait_for(1)
        assert flushes.batches == [["now"]]
        # With a delay, the item waits for the next flush: it rides with a submit ...
        batcher.post("p1", 30)
        await turns()
        assert flushes.batches == [["now"]]  # nothing to ride with, and not due
        await batcher.submit("c1")
        assert flushes.batches == [["now"], ["p1", "c1"]]  # rode along, first
        # ... or, with nothing to ride with, goes on its own once due.
        batcher.post("p2", 0.001)
        await flushes.wait_for(3)
        assert flushes.batches[-1] == ["p2"]  # due: sent on its own
        batcher.post("p3", 10)
        assert batcher._timer is not None
        await batcher.close(1, Boom("closed"))  # the timer goes with it
        assert batcher._timer is None
        assert flushes.batches[-1] == ["p2"]  # and p3 was never sent

    run(body())


def test_a_posted_item_goes_when_due_not_before() -> None:
    """The delay, on a clock the test moves: the loop's own (``loop.time``)."""

    class ManualLoop(asyncio.SelectorEventLoop):
        offset = 0.0

        def time(self) -> float:
            return super().time() + self.offset

    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ManualLoop)
        flushes = Flushes()
        batcher: Batcher[str, None] = Batcher(flushes, failed=_failed)
        batcher.post("p", 60)
        await turns()
        assert flushes.batches == []  # 60 s are far from over
        loop.offset += 59.9
        await turns()
        assert flushes.batches == []  # not yet
        loop.offset += 0.2  # now they are: the timer runs at the next turn
        await turns()
        assert flushes.batches == [["p"]]
        # A shorter deadline than the timer pending moves it up.
        batcher.post("late", 60)
        batcher.post("soon", 1)
        loop.offset += 1.1
        await turns()
        assert flushes.batches == [["p"], ["late", "soon"]]

    # (no wait_for: its timeout would fire on the jumps; ``body`` only counts turns)
    with asyncio.Runner(loop_factory=ManualLoop) as runner:
        runner.run(body())
