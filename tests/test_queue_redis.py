"""RedisQueue against a real redis-server (started per test on a free port)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
import pytest
import redis

from hqm.proto.envelope import RequestRecord, ResponseRecord
from hqm.queue.base import Enqueued, Queue, QueueFull, QueueUnavailable, RequestState, Status
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_conn import parse_sentinel_url
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisSentinel, RedisServer, free_port, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest

T = TypeVar("T")
BODY = bytes(range(256)) * 3


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 10.0) -> T:
    """Poll ``check`` until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)  # poll interval, inside the deadline above


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a plain predicate until it holds, with a deadline."""

    async def check() -> bool:
        return predicate()

    await eventually(check, timeout_s)


class ResettingListener:
    """A TCP port where "Redis" accepts every connection and closes it at once: each
    connection attempt a client makes is counted."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._sock.getsockname()[1]}/0"
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


def record(**overrides: Any) -> RequestRecord:
    fields: dict[str, Any] = {
        "id": secrets.token_hex(16),
        "method": b"POST",
        "target": b"/upload?x=%41&y=\xff",
        "headers": ((b"Content-Type", b"application/octet-stream"), (b"X-Bin", b"\xe9\x80")),
        "body": BODY,
        "received_at": 1.5,
    }
    fields.update(overrides)
    return RequestRecord(**fields)


def response(body: bytes = b"hello", status: int = 200) -> ResponseRecord:
    return ResponseRecord(status, b"OK", ((b"Content-Type", b"text/plain"),), body, attempts=1)


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, protocol=2)


async def _is(value: Awaitable[T], expected: T) -> bool:
    return await value == expected


def _state(status: Status, attempts: int = 0, error: str | None = None) -> RequestState:
    return RequestState(status, attempts, error)


async def state_of(q: Queue, request_id: str) -> RequestState | None:
    """The state without its times (tests that check them do so themselves)."""
    state = await q.state(request_id)
    return None if state is None else RequestState(state.status, state.attempts, state.error)


def test_group_exists_after_start_without_entries(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "g")
        await q.start()
        await q.start()  # idempotent
        await q.close()

    run(body())
    r = admin(redis_server)
    keys = QueueKeys("g")
    groups = r.xinfo_groups(keys.stream)
    assert [g["name"] for g in groups] == [b"hqm"]
    assert r.xlen(keys.stream) == 0


def test_keys_share_hash_tag() -> None:
    keys = QueueKeys("orders")
    names = [keys.stream, keys.dlq, keys.delayed, keys.result("i"), keys.state("i")]
    names += [keys.idem("k"), keys.reply_channel("p1")]
    assert all(name.startswith("hqm:{orders}:") for name in names)
    assert keys.group == "hqm"
    assert keys.result("abc") == "hqm:{orders}:res:abc"


def test_start_when_redis_down_raises_queue_unavailable() -> None:
    async def body() -> None:
        q = RedisQueue(f"redis://127.0.0.1:{free_port()}/0", "down")  # refused
        with pytest.raises(QueueUnavailable):
            await q.start()
        with pytest.raises(QueueUnavailable):
            await q.enqueue(record())
        with pytest.raises(QueueUnavailable):
            await q.claim("c", 1, 0.1)
        assert await q.ping() is False
        await q.close()

    run(body())


def test_calls_to_a_broken_redis_fail_after_one_retry_not_a_retry_loop() -> None:
    """Failing fast means a bounded number of connection attempts per call (one retry,
    no backoff loop), counted where "Redis" accepts them."""
    listener = ResettingListener()
    calls = 0

    async def body() -> None:
        nonlocal calls
        q = RedisQueue(listener.url, "broken")
        for call in (
            q.start,
            lambda: q.enqueue(record()),
            lambda: q.claim("c", 1, 0.1),
            q.depth,
            lambda: q.state("x"),
        ):
            calls += 1
            with pytest.raises(QueueUnavailable):
                await call()
        calls += 1
        assert await q.ping() is False
        await q.close()

    try:
        run(body())
    finally:
        listener.close()
    assert 0 < listener.accepted <= 2 * calls, (listener.accepted, calls)


def test_enqueue_claim_round_trip_binary(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "rt")
        await q.start()
        rec = record()
        await q.enqueue(rec)
        assert await state_of(q, rec.id) == _state(Status.QUEUED)
        assert await q.depth() == 1
        [delivery] = await q.claim("c1", 10, 0.5)
        assert delivery.record == rec
        assert delivery.record.body == BODY
        assert (delivery.deliveries, delivery.attempt) == (1, 0)
        processing = _state(Status.PROCESSING)  # posted with the next outcomes: not awaited
        assert await eventually(lambda: _is(state_of(q, rec.id), processing))
        assert await q.claim("c1", 10, 0.05) == []
        await q.close()

    run(body())


def test_concurrent_enqueues_share_round_trips(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "batch")
        await q.start()
        records = [record(body=bytes([i % 256]) * i) for i in range(200)]
        await asyncio.gather(*(q.enqueue(r) for r in records))
        assert q.batches_sent <= 2
        deliveries = await q.claim("c", 500, 0.5)
        assert sorted(d.record.id for d in deliveries) == sorted(r.id for r in records)
        assert {d.record.id: d.record for d in deliveries} == {r.id: r for r in records}
        await q.close()

    run(body())
    stats = admin(redis_server).info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 200


def test_blocking_claim_does_not_hold_up_enqueue(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "blk")
        await q.start()
        r = admin(redis_server)
        # Blocks for up to 20 s: it can only deliver the record below if the enqueue
        # reached Redis while it was blocked (held up behind it, the claim would time out
        # empty first, and the unpacking below fail).
        claim = asyncio.create_task(q.claim("c", 1, 20.0))
        await until(lambda: r.info("clients")["blocked_clients"] == 1)  # blocked in Redis
        rec = record()
        await q.enqueue(rec)
        [delivery] = await claim
        assert delivery.record == rec
        await q.close()

    run(body())


def test_complete_stores_result_and_empties_stream(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "done")
        await q.start()
        rec = record()
        await q.enqueue(rec)
        [delivery] = await q.claim("c", 1, 0.5)
        resp = response(body=BODY)
        await q.complete(delivery, resp)
        assert await q.fetch_result(rec.id) == resp
        assert await state_of(q, rec.id) == _state(Status.DONE, 1)
        assert await q.depth() == 0
        await q.complete(delivery, response(b"late duplicate"))  # already acked: no-op
        assert await q.fetch_result(rec.id) == resp
        await q.close()

    run(body())
    r = admin(redis_server)
    keys = QueueKeys("done")
    assert r.xlen(keys.stream) == 0
    assert r.xpending(keys.stream, "hqm")["pending"] == 0
    [result_key] = r.keys("hqm:{done}:res:*")
    assert 0 < r.pttl(result_key) <= 86400 * 1000


def test_fire_mode_keeps_no_result(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "fire")
        await q.start()
        rec = record(mode="fire")
        await q.enqueue(rec)
        [delivery] = await q.claim("c", 1, 0.5)
        await q.complete(delivery, response())
        assert await q.fetch_result(rec.id) is None
        assert (await q.state(rec.id)).status is Status.DONE
        assert await q.depth() == 0
        await q.close()

    run(body())
    assert admin(redis_server).keys("hqm:{fire}:res:*") == []


def test_retry_later_then_promote_due(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "retry", clock=lambda: 1000.0)
        await q.start()
        rec = record()
        await q.enqueue(rec)
        [first] = await q.claim("c", 1, 0.5)
        await q.retry_later(first, 1005.0, "app answered 503")
        assert await state_of(q, rec.id) == _state(Status.RETRYING, 1, "app answered 503")
        assert await q.depth() == 1  # scheduled, not in the stream
        assert await q.claim("c", 1, 0.05) == []
        assert await q.promote_due(1004.9) == 0
        assert await q.promote_due(1005.0) == 1
        assert await q.promote_due(1006.0) == 0
        assert await state_of(q, rec.id) == _state(Status.QUEUED, 1)
        [second] = await q.claim("c", 1, 0.5)
        assert second.record == rec
        assert (second.attempt, second.deliveries) == (1, 1)
        await q.retry_later(second, 1010.0, "again")
        assert await q.promote_due(1010.0) == 1
        [third] = await q.claim("c", 1, 0.5)
        assert third.attempt == 2
        await q.close()

    run(body())


def test_promote_due_is_bounded_per_call(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "many")
        await q.start()
        await asyncio.gather(*(q.enqueue(record(body=b"")) for _ in range(150)))
        for delivery in await q.claim("c", 200, 0.5):
            await q.retry_later(delivery, 1.0, "x")
        assert await q.depth() == 150
        assert await q.promote_due(2.0) == 100
        assert await q.promote_due(2.0) == 50
        assert len(await q.claim("c", 200, 0.5)) == 150
        await q.close()

    run(body())


def test_dead_letter_replay_and_purge(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "dlq", clock=lambda: 1234.5)
        await q.start()
        rec = record()
        await q.enqueue(rec)
        [delivery] = await q.claim("c", 1, 0.5)
        await q.dead_letter(delivery, "app down: connection refused", 5)
        assert await q.depth() == 0
        [letter] = await q.dead_letters()
        assert letter.record == rec
        assert (letter.error, letter.attempts, letter.dead_at) == (
            "app down: connection refused",
            5,
            1234.5,
        )
        assert await q.dead_letter_get(letter.entry_id) == letter
        assert await q.dead_letter_get("no-such-id") is None
        assert await q.dead_letter_get("1-1") is None
        result = await q.fetch_result(rec.id)
        assert result is not None and result.status == 502
        assert orjson.loads(result.body) == {"error": "app down: connection refused", "status": 502}
        assert (result.attempts, result.completed_at) == (5, 1234.5)
        assert await state_of(q, rec.id) == _state(Status.DEAD, 5, "app down: connection refused")

        assert await q.replay_dead_letter(letter.entry_id) is True
        assert await q.replay_dead_letter(letter.entry_id) is False
        assert await q.dead_letters() == []
        assert await q.fetch_result(rec.id) is None
        assert await state_of(q, rec.id) == _state(Status.QUEUED)
        [again] = await q.claim("c", 1, 0.5)
        assert (again.record, again.attempt) == (rec, 0)

        await q.dead_letter(again, "still down", 1)
        other = record(mode="fire")
        await q.enqueue(other)
        [fire] = await q.claim("c", 1, 0.5)
        await q.dead_letter(fire, "fire down", 1)
        assert await q.fetch_result(other.id) is None
        assert len(await q.dead_letters()) == 2
        assert len(await q.dead_letters(count=1)) == 1
        assert await q.purge_dead_letters() == 2
        assert await q.purge_dead_letters() == 0
        await q.close()

    run(body())


def test_corrupt_entry_is_dead_lettered_not_crashing(redis_server: RedisServer) -> None:
    keys = QueueKeys("bad")
    r = admin(redis_server)

    async def body() -> None:
        q = RedisQueue(redis_server.url, "bad")
        await q.start()
        r.xadd(keys.stream, {"r": b"\x00garbage\xff", "a": 0})
        good = record()
        await q.enqueue(good)
        deliveries = await q.claim("c", 10, 0.5)
        assert [d.record for d in deliveries] == [good]
        [letter] = await q.dead_letters()
        assert letter.error.startswith("corrupt entry:")
        assert letter.record.body == b"\x00garbage\xff"
        assert await q.replay_dead_letter(letter.entry_id) is False
        assert await q.depth() == 1  # only the good one, still pending
        await q.close()

    run(body())


def test_reclaim_from_dead_consumer_counts_deliveries(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "rc")
        await q.start()
        rec = record()
        await q.enqueue(rec)
        [held] = await q.claim("dead-worker", 1, 0.5)
        assert await q.reclaim("live", 60.0, 10) == []  # not idle long enough
        [taken] = await eventually(lambda: q.reclaim("live", 0.1, 10))
        assert (taken.entry_id, taken.record, taken.deliveries) == (held.entry_id, rec, 2)
        await q.complete(held, response())  # the slow original finishing: no harm
        await q.complete(taken, response(b"second"))
        assert (await q.fetch_result(rec.id)).body == b"hello"
        await q.close()

    run(body())


def test_reclaim_drops_deleted_entries(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "gone")
        await q.start()
        await q.enqueue(record())
        [held] = await q.claim("w1", 1, 0.5)
        admin(redis_server).xdel(QueueKeys("gone").stream, held.entry_id)
        assert await q.reclaim("w2", 0, 10) == []
        await q.close()

    run(body())


def test_touch_prevents_reclaim(redis_server: RedisServer) -> None:
    """Time is injected on Redis's side: XCLAIM ... IDLE sets how long an entry has been
    idle, so the entry is made 10 minutes old without waiting, against a visibility
    timeout of 60 s that no scheduling delay of this test comes near."""
    stream = QueueKeys("touch").stream
    r = admin(redis_server)

    def age(entry_id: str) -> None:  # 10 minutes since last delivered, owner unchanged
        r.xclaim(stream, "hqm", "w1", 0, [entry_id], idle=600_000, justid=True)

    def idle_ms(entry_id: str) -> int:
        [pending] = r.xpending_range(stream, "hqm", min=entry_id, max=entry_id, count=1)
        assert pending["consumer"] == b"w1"
        return pending["time_since_delivered"]

    async def body() -> None:
        q = RedisQueue(redis_server.url, "touch")
        await q.start()
        await q.enqueue(record())
        [held] = await q.claim("w1", 1, 0.5)
        for _ in range(3):
            age(held.entry_id)
            assert idle_ms(held.entry_id) >= 600_000  # reclaimable, were it not renewed
            await q.touch("w1", [held.entry_id])  # the owner renews
            assert idle_ms(held.entry_id) < 60_000
            assert await q.reclaim("w2", 60, 10) == []
        age(held.entry_id)
        await q.touch("w2", [held.entry_id])  # not ours: renews nothing, steals nothing
        assert idle_ms(held.entry_id) >= 600_000
        [taken] = await q.reclaim("w2", 60, 10)
        assert (taken.entry_id, taken.deliveries) == (held.entry_id, 2)
        await q.close()

    run(body())


def test_release_only_idle_consumer(redis_server: RedisServer) -> None:
    keys = QueueKeys("rel")
    r = admin(redis_server)

    def consumers() -> set[bytes]:
        return {c["name"] for c in r.xinfo_consumers(keys.stream, "hqm")}

    async def body() -> None:
        q = RedisQueue(redis_server.url, "rel")
        await q.start()
        await q.enqueue(record())
        [held] = await q.claim("busy", 1, 0.5)
        assert await q.claim("idle", 1, 0.01) == []
        await q.release("busy")
        await q.release("idle")
        assert consumers() == {b"busy"}
        await q.complete(held, response())
        await q.release("busy")
        assert consumers() == set()
        await q.close()

    run(body())


def test_max_depth_raises_queue_full(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "full", max_depth=3)
        await q.start()
        outcomes = await asyncio.gather(
            *(q.enqueue(record()) for _ in range(5)), return_exceptions=True
        )
        assert sum(isinstance(o, Enqueued) for o in outcomes) == 3
        assert sum(isinstance(o, QueueFull) for o in outcomes) == 2
        with pytest.raises(QueueFull):
            await q.enqueue(record())
        [delivery] = await q.claim("c", 1, 0.5)
        with pytest.raises(QueueFull):  # in flight still counts
            await q.enqueue(record())
        await q.retry_later(delivery, 1.0, "x")
        with pytest.raises(QueueFull):  # scheduled retries count too
            await q.enqueue(record())
        [other] = await q.claim("c", 1, 0.5)
        await q.complete(other, response())
        await q.enqueue(record())
        assert await q.depth() == 3
        await q.close()

    run(body())


async def _subscribers(q: RedisQueue, channel: str) -> int:
    return dict(await q._redis.pubsub_numsub(channel)).get(channel.encode(), 0)


def test_wait_result_notified_by_another_instance(redis_server: RedisServer) -> None:
    async def body() -> None:
        proxy = RedisQueue(redis_server.url, "wait")
        worker = RedisQueue(redis_server.url, "wait")
        await proxy.start()
        assert proxy.reply_channel.startswith("hqm:{wait}:reply:")
        assert proxy.reply_channel != worker.reply_channel
        rec = record(reply_to=proxy.reply_channel, mode="wait")
        await proxy.enqueue(rec)
        waiting = asyncio.create_task(proxy.wait_result(rec.id, 10))
        await eventually(lambda: _subscribers(proxy, proxy.reply_channel))
        [delivery] = await worker.claim("w", 1, 0.5)
        await worker.complete(delivery, response(BODY))
        result = await waiting
        assert result is not None and result.body == BODY
        assert proxy.notifications == 1
        assert worker.notifications == 0
        await proxy.close()
        await worker.close()

    run(body())


def test_wait_result_survives_lost_notification(redis_server: RedisServer) -> None:
    async def body() -> None:
        proxy = RedisQueue(redis_server.url, "lost")
        worker = RedisQueue(redis_server.url, "lost")
        await proxy.start()
        rec = record(reply_to="")  # the worker will not publish anything
        await proxy.enqueue(rec)
        waiting = asyncio.create_task(proxy.wait_result(rec.id, 10))
        [delivery] = await worker.claim("w", 1, 0.5)
        await worker.complete(delivery, response())
        result = await waiting
        assert result is not None and result.body == b"hello"
        assert proxy.notifications == 0
        assert await proxy.wait_result(rec.id, 0) == result  # already there
        assert await proxy.wait_result("unknown", 0.3) is None
        assert await proxy.state("unknown") is None
        assert await proxy.fetch_result("unknown") is None
        assert proxy._replies.waiters == {}
        await proxy.close()
        await worker.close()

    run(body())


def test_redis_killed_then_restarted_same_instance_recovers(redis_server: RedisServer) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "crash")
        await q.start()
        await q.enqueue(record())
        assert await q.wait_result("nothing", 0.01) is None  # starts the listener
        await eventually(lambda: _subscribers(q, q.reply_channel))

        redis_server.kill()
        # Each call fails while Redis is still down (it comes back only below): none
        # waits for it. (How many attempts a call makes: the broken-redis test above.)
        with pytest.raises(QueueUnavailable):
            await q.enqueue(record())
        with pytest.raises(QueueUnavailable):
            await q.claim("c", 1, 0.5)
        with pytest.raises(QueueUnavailable):
            await q.depth()
        assert await q.ping() is False

        redis_server.start()  # same port, empty: no persistence
        assert await q.ping() is True
        rec = record(reply_to=q.reply_channel)
        await q.enqueue(rec)
        [delivery] = await q.claim("c", 1, 0.5)  # the group is created again lazily
        assert delivery.record == rec
        await eventually(lambda: _subscribers(q, q.reply_channel), timeout_s=10)
        waiting = asyncio.create_task(q.wait_result(rec.id, 10))
        await asyncio.sleep(0)
        await q.complete(delivery, response())
        assert (await waiting).status == 200
        await q.close()

    run(body())


def test_aof_keeps_entries_across_kill() -> None:
    server = RedisServer(appendonly=True).start()
    try:

        async def body() -> None:
            q = RedisQueue(server.url, "aof")
            await q.start()
            rec = record()
            await q.enqueue(rec)
            server.kill()
            server.start()
            [delivery] = await q.claim("c", 1, 0.5)
            assert delivery.record == rec
            server.restart()  # graceful: the pending entry survives too
            [again] = await eventually(lambda: q.reclaim("c2", 0, 10))
            assert (again.entry_id, again.deliveries) == (delivery.entry_id, 2)
            await q.close()

        run(body())
    finally:
        server.cleanup()


def test_sentinel_url_parsing() -> None:
    hosts, master, options = parse_sentinel_url("redis+sentinel://:s%40cret@h1:26379,h2:26380/mq/2")
    assert hosts == [("h1", 26379), ("h2", 26380)]
    assert (master, options) == ("mq", {"password": "s@cret", "db": 2})
    hosts, master, options = parse_sentinel_url("redis+sentinel://h1/mq")
    assert (hosts, master, options) == ([("h1", 26379)], "mq", {"db": 0})
    with pytest.raises(ValueError):
        parse_sentinel_url("redis+sentinel://h1:1/")
    with pytest.raises(ValueError):
        RedisQueue("http://example.com/")


def _basic_flow(url: str) -> None:
    async def body() -> None:
        proxy = RedisQueue(url, "flow")
        worker = RedisQueue(url, "flow")
        await proxy.start()
        rec = record(reply_to=proxy.reply_channel)
        await asyncio.gather(proxy.enqueue(rec), *(proxy.enqueue(record()) for _ in range(9)))
        assert await proxy.depth() == 10
        waiting = asyncio.create_task(proxy.wait_result(rec.id, 10))
        await eventually(lambda: _subscribers(proxy, proxy.reply_channel))
        deliveries = await worker.claim("w", 10, 0.5)
        assert len(deliveries) == 10
        for delivery in deliveries:
            await worker.complete(delivery, response(delivery.record.id.encode()))
        assert (await waiting).body == rec.id.encode()
        assert proxy.notifications == 1
        assert await proxy.depth() == 0
        await proxy.close()
        await worker.close()

    run(body())


def test_redis_cluster_url() -> None:
    server = RedisServer(cluster=True).start()
    try:
        _basic_flow(f"redis+cluster://127.0.0.1:{server.port}")
    finally:
        server.cleanup()


def test_redis_sentinel_url(redis_server: RedisServer) -> None:
    sentinel = RedisSentinel(redis_server).start()
    try:
        _basic_flow(sentinel.url)
    finally:
        sentinel.cleanup()
