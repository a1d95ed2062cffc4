"""RedisQueue fast paths: batched outcomes, results carried by the notification,
waiters registered before the XADD. Real redis-server, as in tests/test_queue_redis.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest

from hqm.proto.envelope import ResponseRecord
from hqm.queue import redis_wait
from hqm.queue.base import QueueFull, QueueUnavailable, Status
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisServer, free_port, redis_server
from tests.test_queue_redis import (
    BODY,
    _subscribers,
    admin,
    eventually,
    record,
    response,
    run,
    until,
)

__all__ = ["redis_server"]


def _count_fetches(q: RedisQueue) -> list[tuple[str, int]]:
    """Record every result GET the waiters of ``q`` make: (request id, notifications
    ``q`` had received when it was made)."""
    calls: list[tuple[str, int]] = []
    fetch = q._replies._fetch

    async def counting(request_id: str) -> ResponseRecord | None:
        calls.append((request_id, q.notifications))
        return await fetch(request_id)

    q._replies._fetch = counting
    return calls


@pytest.fixture
def no_early_poll(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Waiters poll the result key only at the end of their wait (not after 0.25 s): a
    waiter answered before then, or a GET made before then, was set off by the
    notification, however slow the machine (instead of timing the answer)."""
    monkeypatch.setattr(redis_wait, "_FIRST_POLL_S", 60.0)
    monkeypatch.setattr(redis_wait, "_MAX_POLL_S", 60.0)
    yield


def test_concurrent_outcomes_share_one_round_trip(redis_server: RedisServer) -> None:
    keys = QueueKeys("outcomes")

    async def body() -> None:
        q = RedisQueue(redis_server.url, "outcomes", clock=lambda: 100.0)
        await q.start()
        await asyncio.gather(*(q.enqueue(record(body=b"")) for _ in range(30)))
        ds = await q.claim("c", 30, 0.5)
        assert len(ds) == 30
        # the "processing" states claim posted: written once nothing is left to flush
        await until(lambda: q._outcomes._task is None and not q._outcomes._items)
        assert {(await q.state(d.record.id)).status for d in ds} == {Status.PROCESSING}
        flushes = q._outcomes.flushes
        await asyncio.gather(
            *(q.complete(d, response(d.record.id.encode())) for d in ds[:20]),
            q.complete(ds[0], response(b"duplicate")),  # same batch, acked already: no-op
            *(q.retry_later(d, 200.0, "503") for d in ds[20:25]),
            *(q.dead_letter(d, "gone", 3) for d in ds[25:]),
        )
        assert q._outcomes.flushes == flushes + 1
        for d in ds[:20]:
            assert (await q.fetch_result(d.record.id)).body == d.record.id.encode()
            assert (await q.state(d.record.id)).status is Status.DONE
        for d in ds[20:25]:
            state = await q.state(d.record.id)
            assert (state.status, state.attempts, state.error) == (Status.RETRYING, 1, "503")
        for d in ds[25:]:
            assert (await q.fetch_result(d.record.id)).status == 502
            assert (await q.state(d.record.id)).status is Status.DEAD
        assert await q.depth() == 5  # the scheduled retries
        assert len(await q.dead_letters()) == 5
        assert await q.promote_due(200.0) == 5
        assert {d.attempt for d in await q.claim("c", 10, 0.5)} == {1}
        await q.close()

    run(body())
    r = admin(redis_server)
    assert r.xpending(keys.stream, "hqm")["pending"] == 5  # the promoted, claimed again


def test_outcome_batch_failure_reaches_every_caller(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "down")
        await q.start()
        await asyncio.gather(*(q.enqueue(record()) for _ in range(3)))
        ds = await q.claim("c", 3, 0.5)
        redis_server.kill()
        outcomes = await asyncio.gather(
            *(q.complete(d, response()) for d in ds), return_exceptions=True
        )
        assert all(isinstance(o, QueueUnavailable) for o in outcomes), outcomes
        await q.close()

    run(body())


async def _live_pair(url: str, name: str) -> tuple[RedisQueue, RedisQueue]:
    proxy, worker = RedisQueue(url, name), RedisQueue(url, name)
    await proxy.start()
    assert await proxy.wait_result("warm-up", 0) is None  # starts the listener
    await eventually(lambda: _subscribers(proxy, proxy.reply_channel))
    return proxy, worker


def test_notified_waiter_gets_the_result_without_a_get(
    redis_server: RedisServer, no_early_poll: None
) -> None:
    async def body() -> None:
        proxy, worker = await _live_pair(redis_server.url, "carry")
        fetches = _count_fetches(proxy)
        rec = record(reply_to=proxy.reply_channel, mode="wait")
        await proxy.enqueue(rec)
        assert rec.id in proxy._replies.waiters  # registered before the XADD
        waiting = asyncio.create_task(proxy.wait_result(rec.id, 10))
        [delivery] = await worker.claim("w", 1, 0.5)
        await worker.complete(delivery, response(BODY))
        result = await waiting
        assert result == response(BODY)
        assert fetches == []  # notified, not polled: the result came in the message
        assert proxy.notifications == 1
        assert proxy._replies.waiters == {}
        await proxy.close()
        await worker.close()

    run(body())


def test_dead_letter_notification_carries_the_502(
    redis_server: RedisServer, no_early_poll: None
) -> None:
    async def body() -> None:
        proxy, worker = await _live_pair(redis_server.url, "dead502")
        fetches = _count_fetches(proxy)
        rec = record(reply_to=proxy.reply_channel, mode="wait")
        await proxy.enqueue(rec)
        [delivery] = await worker.claim("w", 1, 0.5)
        await worker.dead_letter(delivery, "app down", 2)
        result = await proxy.wait_result(rec.id, 10)  # notified before we waited
        assert (result.status, result.error, result.attempts) == (502, "app down", 2)
        assert fetches == []
        await proxy.close()
        await worker.close()

    run(body())


def test_oversized_result_is_announced_by_id_and_fetched(
    redis_server: RedisServer, no_early_poll: None
) -> None:
    async def body() -> None:
        proxy, worker = await _live_pair(redis_server.url, "big")
        fetches = _count_fetches(proxy)
        rec = record(reply_to=proxy.reply_channel, mode="wait")
        await proxy.enqueue(rec)
        waiting = asyncio.create_task(proxy.wait_result(rec.id, 10))
        [delivery] = await worker.claim("w", 1, 0.5)
        big = response(b"x" * (redis_wait.NOTIFY_MAX_BYTES + 1))
        await worker.complete(delivery, big)
        assert await waiting == big
        assert fetches == [(rec.id, 1)]  # one GET, made on the notification, not a poll
        assert proxy.notifications == 1
        await proxy.close()
        await worker.close()

    run(body())


def test_corrupt_notification_falls_back_to_get(
    redis_server: RedisServer, no_early_poll: None
) -> None:
    async def body() -> None:
        proxy, worker = await _live_pair(redis_server.url, "corrupt")
        fetches = _count_fetches(proxy)
        rec = record(reply_to=proxy.reply_channel, mode="wait")
        await proxy.enqueue(rec)
        waiting = asyncio.create_task(proxy.wait_result(rec.id, 10))
        [delivery] = await worker.claim("w", 1, 0.5)
        # Stored without a notification, then a garbled one arrives.
        silent = replace(delivery, record=replace(delivery.record, reply_to=""))
        await worker.complete(silent, response(b"stored"))
        await worker._redis.publish(proxy.reply_channel, rec.id.encode() + b"\nHQM\x01garbage")
        assert (await waiting).body == b"stored"
        assert fetches == [(rec.id, 1)]  # the GET the garbled notification set off
        await proxy.close()
        await worker.close()

    run(body())


def test_expected_waiter_dropped_when_enqueue_fails(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "fullwait", max_depth=1)
        await q.start()
        await q.enqueue(record())
        with pytest.raises(QueueFull):
            await q.enqueue(record(reply_to=q.reply_channel, mode="wait"))
        assert q._replies.waiters == {} and q._replies._expected == {}
        down = RedisQueue(f"redis://127.0.0.1:{free_port()}/0", "down")
        with pytest.raises(QueueUnavailable):
            await down.enqueue(record(reply_to=down.reply_channel, mode="wait"))
        assert down._replies.waiters == {}
        await down.close()
        await q.close()

    run(body())


class JumpingLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock (``loop.time()``, which the waiters' horizon reads) the
    test moves forward by hand instead of waiting."""

    offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset


def test_uncollected_expected_waiters_are_forgotten(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    horizon = 60.0  # no real delay comes near it: only the jump below passes it
    monkeypatch.setattr(redis_wait, "_EXPECT_HORIZON_S", horizon)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        q = RedisQueue(redis_server.url, "orphans")
        await q.start()
        orphans = [record(reply_to=q.reply_channel, mode="wait") for _ in range(3)]
        for rec in orphans:  # their callers never wait
            await q.enqueue(rec)
        ids = {rec.id for rec in orphans}
        assert set(q._replies._expected) == ids  # within the horizon: all kept
        assert set(q._replies.waiters) == ids
        loop.offset += horizon + 1  # (jumped between calls: nothing was in flight)
        last = record(reply_to=q.reply_channel, mode="wait")
        await q.enqueue(last)  # registering the next one forgets those past the horizon
        assert set(q._replies._expected) == {last.id}
        assert set(q._replies.waiters) == {last.id}
        await q.close()

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(asyncio.wait_for(body(), 2 * horizon))  # (the jump uses up half)


def test_late_processing_state_never_overwrites_a_final_one(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "late")
        await q.start()
        rec = record()
        await q.enqueue(rec)
        [delivery] = await q.claim("c", 1, 0.5)
        await q.complete(delivery, response())
        # a reclaim racing the complete: its "processing" lands after "done"
        q._outcomes.post(("p", rec.id, [b'{"s":"processing","a":0}']))
        await until(lambda: q._outcomes._task is None and not q._outcomes._items)
        assert (await q.state(rec.id)).status is Status.DONE
        # ... or after "retrying"
        other = record()
        await q.enqueue(other)
        [delivery] = await q.claim("c", 1, 0.5)
        await q.retry_later(delivery, 1.0, "503")
        q._outcomes.post(("p", other.id, [b'{"s":"processing","a":0}']))
        await until(lambda: q._outcomes._task is None and not q._outcomes._items)
        assert (await q.state(other.id)).status is Status.RETRYING
        await q.close()

    run(body())


def test_claim_rides_with_the_outcomes_and_its_marks_with_the_next(
    redis_server: RedisServer,
) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "ride")
        await q.start()
        recs = [record(body=b"") for _ in range(4)]
        await asyncio.gather(*(q.enqueue(r) for r in recs))
        first = await q.claim("c", 2, 0.5)
        # The "processing" marks wait for the next round trip: the script that claims
        # cannot declare the state keys of entries it has not read yet.
        assert q._outcomes._task is None and len(q._outcomes._items) == 2
        flushes = q._outcomes.flushes
        _, second = await asyncio.gather(
            *(q.complete(d, response()) for d in first[:1]), q.claim("c", 2, 0.5)
        )
        assert q._outcomes.flushes == flushes + 1  # one round trip: marks, outcome, claim
        assert len(second) == 2
        assert {d.record.id for d in [*first, *second]} == {r.id for r in recs}
        assert (await q.state(first[0].record.id)).status is Status.DONE
        assert (await q.state(first[1].record.id)).status is Status.PROCESSING
        await q.close()

    run(body())


def test_entries_without_request_id_are_still_marked(redis_server: RedisServer) -> None:
    """Entries written by an older hqm (no 'i' field) are marked from Python."""
    keys = QueueKeys("old")

    async def body() -> None:
        from hqm.proto.envelope import encode_request

        q = RedisQueue(redis_server.url, "old")
        await q.start()
        rec = record()
        admin(redis_server).xadd(keys.stream, {"r": encode_request(rec), "a": 0})
        [delivery] = await q.claim("c", 5, 0.5)
        assert delivery.record == rec
        await eventually(lambda: _processing(q, rec.id))
        await q.close()

    run(body())


async def _processing(q: RedisQueue, request_id: str) -> bool:
    state = await q.state(request_id)
    return state is not None and state.status is Status.PROCESSING
