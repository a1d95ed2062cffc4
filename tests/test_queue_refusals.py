"""What an enqueue Redis refused tells its caller (issue 17, item 7), against a real
redis-server: QueueRefused (QueueOutOfMemory at maxmemory) only when nothing of the
write was stored, for every caller of a batch only when Redis refused the whole script;
QueueUnavailable (perhaps stored) when the outcome is unknown."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import BusyLoadingError, NoPermissionError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from hqm.queue.base import (
    IdempotencyClaim,
    QueueError,
    QueueFull,
    QueueOutOfMemory,
    QueueRefused,
    QueueUnavailable,
)
from hqm.queue.redis_refusals import refusals
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisServer, free_port, redis_server
from tests.test_queue_redis import admin, record, run

__all__ = ["redis_server"]


async def _outcomes(q: RedisQueue, n: int, **claims: IdempotencyClaim) -> list[object]:
    """``n`` enqueues submitted in one loop turn (one batch), each outcome or error."""
    records = [record() for _ in range(n)]
    calls = [q.enqueue(r, idempotency=claims.get(str(i))) for i, r in enumerate(records)]
    return list(await asyncio.gather(*calls, return_exceptions=True))


def test_a_batch_refused_at_maxmemory_is_refused_for_every_caller(
    redis_server: RedisServer,
) -> None:
    db = admin(redis_server)

    async def go() -> None:
        q = RedisQueue(redis_server.url, "t")
        await q.start()
        sent = q.batches_sent
        db.config_set("maxmemory", "1")
        try:
            outcomes = await _outcomes(q, 8)
            with pytest.raises(QueueOutOfMemory):
                await q.probe_write()
        finally:
            db.config_set("maxmemory", "0")
        assert q.batches_sent == sent + 1  # one script call, refused as a whole
        assert all(isinstance(o, QueueOutOfMemory) for o in outcomes), outcomes
        assert all(isinstance(o, QueueFull) and isinstance(o, QueueRefused) for o in outcomes)
        assert len({id(o) for o in outcomes}) == 8  # one exception each, not a shared one
        await q.probe_write()  # takes writes again
        await q.close()

    run(go())
    assert db.xlen("hqm:{t}:stream") == 0


def test_one_unreadable_idempotency_key_refuses_its_item_only(
    redis_server: RedisServer,
) -> None:
    """The key of one item of a batch is a hash (WRONGTYPE): the items before and after
    it are stored and answered; that one is refused and wrote nothing."""
    db = admin(redis_server)

    async def go() -> list[object]:
        q = RedisQueue(redis_server.url, "t")
        await q.start()
        claims = {str(i): IdempotencyClaim(key=f"k{i}", fingerprint="f", ttl_s=60) for i in (1, 2)}
        db.hset(q.keys.idem("k1"), "not", "a string")
        sent = q.batches_sent
        outcomes = await _outcomes(q, 4, **claims)
        assert q.batches_sent == sent + 1
        await q.close()
        return outcomes

    outcomes = run(go())
    assert isinstance(outcomes[1], QueueRefused) and not isinstance(outcomes[1], QueueFull)
    stored = [o for i, o in enumerate(outcomes) if i != 1]
    assert not any(isinstance(o, BaseException) for o in stored), outcomes
    assert db.xlen("hqm:{t}:stream") == 3
    assert {e[1][b"i"].decode() for e in db.xrange("hqm:{t}:stream")} == {
        o.request_id  # type: ignore[attr-defined]
        for o in stored
    }


def test_a_read_only_replica_refuses_and_a_lost_connection_is_unavailable(
    redis_server: RedisServer,
) -> None:
    master = RedisServer().start()
    try:
        db = admin(redis_server)
        db.replicaof("127.0.0.1", master.port)

        async def refused() -> list[object]:
            q = RedisQueue(redis_server.url, "t")
            outcomes = await _outcomes(q, 3)
            with pytest.raises(QueueRefused):
                await q.probe_write()
            await q.close()
            return outcomes

        outcomes = run(refused())
        assert all(type(o) is QueueRefused for o in outcomes), outcomes
        assert "ReadOnlyError" in str(outcomes[0])
    finally:
        master.cleanup()

    async def unreachable() -> QueueError:
        q = RedisQueue(f"redis://127.0.0.1:{free_port()}/0", "t", connect_timeout_s=0.5)
        try:
            await q.enqueue(record())
        except QueueError as exc:
            with pytest.raises(QueueUnavailable):
                await q.probe_write()
            return exc
        finally:
            await q.close()
        raise AssertionError("enqueued into nothing")

    error = run(unreachable())
    assert isinstance(error, QueueUnavailable) and not isinstance(error, QueueRefused)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (NoScriptError("No matching script"), QueueRefused),  # after the reload too
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), QueueRefused),
        (ResponseError("BUSY Redis is busy running a script"), QueueRefused),
        (BusyLoadingError("Redis is loading the dataset in memory"), QueueRefused),
        (ResponseError("ERR user_script:1: attempt to index a nil value"), QueueUnavailable),
        (
            NoPermissionError("this user has no permissions to access one of the keys"),
            QueueUnavailable,
        ),
        (RedisConnectionError("Connection reset by peer"), QueueUnavailable),
        (TimeoutError(), QueueUnavailable),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_the_errors_redis_py_raises_map_to_refused_only_when_nothing_ran(
    error: Exception, expected: type[QueueError]
) -> None:
    """The codes a real Redis is not easily made to answer (the others: above and in
    tests/test_drain_readiness.py): refused only where Redis refuses before the first
    write; a plain ERR, NOPERM (per key, possibly after a write) and a lost connection
    leave the outcome open."""
    with pytest.raises(QueueError) as raised, refusals("enqueue"):
        raise error
    assert type(raised.value) is expected
