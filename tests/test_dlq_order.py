"""Dead letters come out oldest first, in the order they were dead-lettered, also when
many died within one millisecond; paging on ``after`` loses and repeats none.

Both backends through the Queue API (the Redis one against a real redis-server), and
``hqm dlq list`` as a user runs it, on letters a real worker wrote.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from hqm.proto.envelope import RequestRecord
from hqm.queue.base import Delivery, Queue
from hqm.queue.entry_ids import parse_entry_id
from hqm.queue.memory import MemoryQueue
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisServer, redis_server
from tests.support import Answer, Backend, Seen, request, wait_until
from tests.test_worker_redis import Spawner, dlq, log_records, spawn

__all__ = ["redis_server", "spawn"]  # fixtures, imported for pytest

T = TypeVar("T")
LETTERS = 150  # more than one page of `dlq list` (--count defaults to 100)
FROZEN = 1_700_000_000.0  # the embedded queue's clock: every letter in one millisecond


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


def record(n: int) -> RequestRecord:
    return RequestRecord(
        id=f"req-{n:04d}", method=b"POST", target=b"/dead/%d" % n, headers=(), body=b"%d" % n
    )


def key(entry_id: str) -> tuple[int, int]:
    """An entry id as a sortable (ms, seq) pair."""
    parsed = parse_entry_id(entry_id)
    assert parsed is not None, entry_id
    return parsed


def busiest_millisecond(ids: list[str]) -> int:
    """How many of these entry ids share the most common millisecond."""
    return max(Counter(entry_id.split("-")[0] for entry_id in ids).values())


async def claim_all(q: Queue, n: int) -> list[Delivery]:
    claimed: list[Delivery] = []
    while len(claimed) < n:
        got = await q.claim("c1", n - len(claimed), 0)
        assert got, f"claimed {len(claimed)} of {n}"
        claimed += got
    return claimed


async def dead_letter_shuffled(q: Queue, n: int = LETTERS) -> list[str]:
    """Queue ``n`` requests, claim them all, dead-letter them in an order that is not
    the order they were queued (nor its reverse): the first half in one go (one round
    trip on Redis, so within about one millisecond), the rest one call at a time.
    Returns the request ids in dead-letter order."""
    for i in range(n):
        await q.enqueue(record(i))
    deliveries = await claim_all(q, n)
    assert [d.record.id for d in deliveries] == [record(i).id for i in range(n)]
    random.Random(1).shuffle(deliveries)
    half = n // 2
    # Tasks start in creation order and each submits its outcome before it first
    # yields: the order of this list is the dead-letter order.
    await asyncio.gather(*(q.dead_letter(d, "app down", 1) for d in deliveries[:half]))
    for d in deliveries[half:]:
        await q.dead_letter(d, "app down", 1)
    return [d.record.id for d in deliveries]


Make = Callable[[], Queue]


@pytest.fixture(params=["memory", "redis"])
def make_queue(request: pytest.FixtureRequest) -> Make:
    """Builds the queue under test (call it inside the event loop that uses it)."""
    if request.param == "memory":
        return lambda: MemoryQueue("order", clock=lambda: FROZEN)
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda: RedisQueue(server.url, "order")


async def opened(make: Make) -> Queue:
    q = make()
    if isinstance(q, RedisQueue):
        await q.start()
    return q


# --- the Queue API, both backends ------------------------------------------------


def test_same_millisecond_letters_are_listed_in_dead_letter_order(make_queue: Make) -> None:
    async def body() -> None:
        q = await opened(make_queue)
        try:
            order = await dead_letter_shuffled(q)
            letters = await q.dead_letters(count=1000)
            assert [le.record.id for le in letters] == order
            ids = [le.entry_id for le in letters]
            assert busiest_millisecond(ids) >= 2  # the case under test did happen
            keys = [key(le.entry_id) for le in letters]
            assert keys == sorted(keys) and len(set(keys)) == len(keys)  # id order too
            assert [le.record.id for le in await q.dead_letters(count=10)] == order[:10]
            for letter in letters[:3] + letters[-3:]:
                assert await q.dead_letter_get(letter.entry_id) == letter
        finally:
            await q.close()

    run(body())


@pytest.mark.parametrize("page", [1, 7, LETTERS - 1, LETTERS])
def test_paging_on_after_loses_and_repeats_none(make_queue: Make, page: int) -> None:
    async def body() -> None:
        q = await opened(make_queue)
        try:
            order = await dead_letter_shuffled(q)
            seen: list[str] = []
            after = None
            while letters := await q.dead_letters(count=page, after=after):
                assert len(letters) <= page
                seen += [le.record.id for le in letters]
                after = letters[-1].entry_id
                assert len(seen) <= LETTERS, "paging went round again"
            assert seen == order
        finally:
            await q.close()

    run(body())


def test_paging_goes_on_after_a_letter_that_is_gone(make_queue: Make) -> None:
    """As ``dlq replay --all`` pages: ``after`` is a letter just replayed."""

    async def body() -> None:
        q = await opened(make_queue)
        try:
            order = await dead_letter_shuffled(q)
            replayed: list[str] = []
            after = None
            while letters := await q.dead_letters(count=7, after=after):
                after = letters[-1].entry_id
                for letter in letters:
                    assert await q.replay_dead_letter(letter.entry_id) is True
                    replayed.append(letter.record.id)
                assert await q.dead_letter_get(after) is None
                assert len(replayed) <= LETTERS, "paging went round again"
            assert replayed == order
            assert await q.dead_letters() == []
            again = await claim_all(q, LETTERS)  # all of them queued again, once each
            assert sorted(d.record.id for d in again) == sorted(order)
        finally:
            await q.close()

    run(body())


@pytest.mark.parametrize("after", ["", "x", "1-2-3", "1-", "-1", "99999999999999999999-0"])
def test_after_that_is_no_entry_id_gives_nothing(make_queue: Make, after: str) -> None:
    async def body() -> None:
        q = await opened(make_queue)
        try:
            await dead_letter_shuffled(q, 3)
            got = await q.dead_letters(after=after)
            # "" is no cursor: the first page; anything else that is no id: nothing
            assert len(got) == (3 if after == "" else 0)
        finally:
            await q.close()

    run(body())


def test_memory_ids_keep_dead_letter_order_when_the_clock_steps_back() -> None:
    async def body() -> None:
        now = [FROZEN]
        q = MemoryQueue("order", clock=lambda: now[0])
        for n in range(4):
            await q.enqueue(record(n))
        first, second, third, fourth = await claim_all(q, 4)
        await q.dead_letter(fourth, "down", 1)
        now[0] = FROZEN - 5.0  # an NTP step back
        await q.dead_letter(second, "down", 1)
        await q.dead_letter(first, "down", 1)
        now[0] = FROZEN + 5.0
        await q.dead_letter(third, "down", 1)
        letters = await q.dead_letters()
        assert [le.record.id for le in letters] == [record(n).id for n in (3, 1, 0, 2)]
        keys = [key(le.entry_id) for le in letters]
        assert keys == sorted(keys) and len(set(keys)) == 4
        assert [le.record.id for le in await q.dead_letters(after=letters[1].entry_id)] == [
            record(0).id,
            record(2).id,
        ]

    run(body())


# --- `hqm dlq list`, on letters a real worker wrote ---------------------------------


def busy(seen: Seen) -> Answer:
    return Answer(503, [(b"Content-Type", b"text/plain")], b"busy")


@pytest.fixture
def busy_app() -> Iterator[Backend]:
    """An app that answers every request 503: with --max-attempts 1, dead at once."""
    app = Backend(busy)
    yield app
    app.close()


def test_dlq_list_shows_what_a_worker_dead_lettered_in_that_order(
    redis_server: RedisServer, spawn: Spawner, busy_app: Backend
) -> None:
    upstream = f"127.0.0.1:{busy_app.port}"
    hqm = spawn.proxy(upstream, redis_server.url)
    sent = []
    for n in range(LETTERS):
        accepted = request(hqm.port, b"POST", b"/dead/%d" % n, [], b"body %d" % n)
        assert accepted.status == 202
        sent.append(accepted.json()["id"])
    worker = spawn.worker(
        redis_server.url, upstream, "--burst", "--max-attempts", "1", "--concurrency", "64"
    )
    assert worker.proc.wait(30) == 0
    assert busy_app.count() == LETTERS  # each asked once, each answered 503

    def dead_lettering() -> list[str]:
        """Request ids in the order the worker logged them, just before each outcome
        went into its round trip: the order they were dead-lettered."""
        messages = [r["msg"] for r in log_records(worker) if r.get("logger") == "hqm.worker.loop"]
        return [m.split()[1].rstrip(":") for m in messages if m.startswith("dead-lettering ")]

    assert wait_until(lambda: len(dead_lettering()) == LETTERS), worker.log()
    order = dead_lettering()
    assert sorted(order) == sorted(sent)

    done = dlq("list", "--redis", redis_server.url, "--json", "--count", "1000")
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [letter["id"] for letter in listed] == order
    assert busiest_millisecond([letter["entry"] for letter in listed]) >= 2
    keys = [key(letter["entry"]) for letter in listed]
    assert keys == sorted(keys)

    first = dlq("list", "--redis", redis_server.url, "--json", "--count", "10")
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["id"] for line in first.stdout.splitlines()] == order[:10]
    table = dlq("list", "--redis", redis_server.url)  # the default --count: 100
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [letter["entry"] for letter in listed[:100]]
