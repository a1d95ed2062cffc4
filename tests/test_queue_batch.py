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
        assert flushed == [[0, 1, 2, 3, 4]]
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(5, 8)]
        await asyncio.sleep(0.01)
        assert len(flushed) == 1  # the first flush is still in flight
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
        async def flush(items: list[int]) -> list[int]:
            await asyncio.sleep(10)
            return items

        batcher: Batcher[int, int] = Batcher(flush, failed=_failed)
        calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        await batcher.close(0.05, Boom("closed"))
        for call in calls:
            with pytest.raises(RuntimeError):
                await call

    run(body())


def test_posted_items_ride_with_the_next_flush_or_go_when_due() -> None:
    async def body() -> None:
        flushed: list[list[str]] = []

        async def flush(items: list[str]) -> list[None]:
            flushed.append(items)
            return [None] * len(items)

        batcher: Batcher[str, None] = Batcher(flush, failed=_failed)
        batcher.post("now")  # no delay: flushed at the next loop turn
        await asyncio.sleep(0.01)
        assert flushed == [["now"]]
        batcher.post("p1", 0.2)
        await asyncio.sleep(0.05)
        assert flushed == [["now"]]  # not due yet, and nothing to ride with
        await batcher.submit("c1")
        assert flushed == [["now"], ["p1", "c1"]]  # rode along, first
        batcher.post("p2", 0.05)
        await asyncio.sleep(0.15)
        assert flushed[-1] == ["p2"]  # due: sent on its own
        batcher.post("p3", 10)
        await batcher.close(1, Boom("closed"))  # the timer goes with it
        assert batcher._timer is None

    run(body())
