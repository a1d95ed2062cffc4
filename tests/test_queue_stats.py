"""The queue's figures (hqm.queue.redis_stats) and the hqm_queue_* gauges, against a
real redis-server: each figure driven by what it counts (entries queued, claimed,
retried, dead-lettered; a consumer that stopped), and exported by real worker and
proxy processes."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis
from prometheus_client import CollectorRegistry

from hqm.assembly import _queue_gauges
from hqm.ops.metrics import QueueMetrics
from hqm.ops.queue_gauges import QueueGauges, StatsSettings
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_stats import (
    MEMORY_SAMPLES,
    StatsReader,
    key_inventory,
    read_stats,
    results_held,
)
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisServer, free_port, redis_server
from tests.support import Answer, Backend, Seen, request, wait_until
from tests.test_queue_redis import record, response
from tests.test_worker_redis import Spawner, metrics, spawn

__all__ = ["redis_server", "spawn"]  # fixtures, imported for pytest

T = TypeVar("T")
KEYS = QueueKeys("default")
ALIVE_WITHIN_S = 30.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, protocol=2)


async def queued(server: RedisServer, count: int, name: str = "default") -> RedisQueue:
    queue = RedisQueue(server.url, name)
    await queue.start()
    for _ in range(count):
        await queue.enqueue(record())
    return queue


async def stats_of(server: RedisServer, name: str = "default", **kwargs: Any):
    client = redis.asyncio.Redis.from_url(server.url, protocol=2)
    try:
        return await read_stats(client, name, alive_within_s=ALIVE_WITHIN_S, **kwargs)
    finally:
        await client.aclose()


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of a Prometheus text exposition (None when absent)."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    wanted = f"{name}{{{inner}}}" if labels else name
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head and _labels_sorted(head) == wanted:
            return float(value)
    return None


def _labels_sorted(head: str) -> str:
    match = re.fullmatch(r"([^{]+)\{(.*)\}", head)
    if not match:
        return head
    pairs = sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2]))
    return match[1] + "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"


# --- the figures -------------------------------------------------------------------


def test_backlog_is_what_no_worker_claimed_also_when_redis_reports_no_lag(redis_server):
    async def body() -> None:
        queue = await queued(redis_server, 5)
        stats = await stats_of(redis_server)
        assert (stats.backlog, stats.pending, stats.stream_exists) == (5, 0, True)
        got = await queue.claim("w1", 1, 0)
        # An unclaimed entry deleted (a cancelled request): Redis no longer knows the lag
        waiting = admin(redis_server).xrange(KEYS.stream, "(" + got[0].entry_id, "+")
        admin(redis_server).xdel(KEYS.stream, waiting[0][0])
        assert admin(redis_server).xinfo_groups(KEYS.stream)[0]["lag"] is None
        stats = await stats_of(redis_server)
        assert (stats.backlog, stats.pending) == (3, 1)  # XLEN 4 - 1 pending
        await queue.close()

    run(body())


def test_pending_and_consumers_count_claimed_entries(redis_server):
    async def body() -> None:
        queue = await queued(redis_server, 5)
        await queue.claim("w1", 2, 0)
        await queue.heartbeat("w1", 60)  # alive: its heartbeat, as the worker writes it
        stats = await stats_of(redis_server)
        assert (stats.backlog, stats.pending) == (3, 2)
        (consumer,) = stats.consumers
        assert (consumer.name, consumer.pending, consumer.alive) == ("w1", 2, True)
        assert consumer.idle_s < ALIVE_WITHIN_S
        await queue.close()

    run(body())


def test_a_consumer_that_claimed_and_stopped_is_not_alive(redis_server):
    async def body() -> None:
        queue = await queued(redis_server, 3)
        held = await queue.claim("gone", 1, 0)
        await queue.claim("live", 1, 0)
        await queue.heartbeat("live", 60)  # (the one that stopped writes none any more)
        r = admin(redis_server)
        # its entry untouched for a minute (as if it stopped 60 s ago)
        r.xclaim(KEYS.stream, KEYS.group, "gone", 0, [held[0].entry_id], idle=60_000)
        stats = await stats_of(redis_server)
        by_name = {c.name: c for c in stats.consumers}
        assert by_name["gone"].alive is False and by_name["gone"].idle_s >= 60
        assert by_name["live"].alive is True
        assert stats.alive == 1
        r.xclaim(KEYS.stream, KEYS.group, "live", 0, [held[0].entry_id], idle=0)  # taken over
        r.xgroup_delconsumer(KEYS.stream, KEYS.group, "gone")
        assert (await stats_of(redis_server)).alive == 1
        await queue.close()

    run(body())


def test_oldest_age_is_measured_from_the_first_unclaimed_entry_id(redis_server):
    r = admin(redis_server)
    r.xgroup_create(KEYS.stream, KEYS.group, id="0", mkstream=True)
    first_ms = 1_700_000_000_000
    for n in range(3):  # entries made 120, 60 and 30 s before "now"
        r.xadd(KEYS.stream, {"r": b"x"}, id=f"{first_ms + (0, 60_000, 90_000)[n]}-0")
    now = first_ms / 1000 + 120
    stats = run(stats_of(redis_server, now=now))
    assert stats.oldest_age_s == pytest.approx(120)
    r.xreadgroup(KEYS.group, "w", {KEYS.stream: ">"}, count=1)  # the oldest one is claimed
    assert run(stats_of(redis_server, now=now)).oldest_age_s == pytest.approx(60)
    r.xreadgroup(KEYS.group, "w", {KEYS.stream: ">"}, count=2)
    assert run(stats_of(redis_server, now=now)).oldest_age_s == 0.0  # none waits


def test_scheduled_retries_and_dead_letters(redis_server):
    async def body() -> None:
        queue = await queued(redis_server, 3)
        first, second, third = await queue.claim("w", 3, 0)
        now = time.time()
        await queue.retry_later(first, now + 3600, "app answered 503")
        await queue.dead_letter(second, "gave up", 1)
        await queue.complete(third, response(b"x" * 5000))
        stats = await stats_of(redis_server, now=now)
        assert (stats.scheduled, stats.due, stats.dead_letters) == (1, 0, 1)
        assert (stats.backlog, stats.pending, stats.depth) == (0, 0, 1)
        assert (await stats_of(redis_server, now=now + 7200)).due == 1
        # results: the 200 and the dead letter's 502, counted key by key
        assert stats.results is not None and stats.results.exact
        assert stats.results.count == 2
        r = admin(redis_server)
        held = [r.memory_usage(KEYS.result(d.record.id)) for d in (second, third)]
        assert stats.results.memory_bytes == sum(held)
        await queue.close()

    run(body())


def test_results_are_estimated_from_a_bounded_sample(redis_server):
    r = admin(redis_server)
    pipe = r.pipeline(transaction=False)
    for n in range(3000):
        pipe.set(f"other:{n}", b"o")
    for n in range(1000):
        pipe.set(KEYS.result(f"r{n}"), b"y" * 100)
    pipe.execute()

    async def body() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url, protocol=2)
        exact = (await results_held(client, ["default"], max_keys=10_000))["default"]
        sampled = (await results_held(client, ["default"], max_keys=600))["default"]
        await client.aclose()
        assert exact is not None and sampled is not None
        assert (exact.count, exact.exact) == (1000, False)  # count exact, memory from 16
        assert sampled.exact is False
        # a sample of >= 600 of 4000 keys: within a factor of 2 by far (binomial spread)
        assert 500 <= sampled.count <= 2000
        per_key = r.memory_usage(KEYS.result("r0"))
        assert exact.memory_bytes == pytest.approx(per_key * 1000, rel=0.2)

    run(body())
    assert MEMORY_SAMPLES < 1000  # (so the memory above was estimated, not summed)


def test_a_cluster_is_read_per_slot(tmp_path):
    server = RedisServer(cluster=True).start()
    try:
        url = f"redis+cluster://127.0.0.1:{server.port}/0"

        async def body() -> None:
            queue = await queued(server, 4, "orders")  # type: ignore[arg-type]
            (delivery,) = await queue.claim("w", 1, 0)
            await queue.complete(delivery, response())
            await queue.heartbeat("w", 60)
            await queue.close()
            reader = StatsReader(url)
            (stats,) = await reader.read(["orders"], alive_within_s=ALIVE_WITHIN_S)
            await reader.close()
            assert (stats.backlog, stats.pending, stats.alive) == (3, 0, 1)
            assert stats.results is not None
            assert (stats.results.count, stats.results.exact) == (1, True)

        run(body())
    finally:
        server.cleanup()


def test_unreachable_redis_is_queue_unavailable():
    async def body() -> None:
        reader = StatsReader(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1)
        from hqm.queue.base import QueueUnavailable

        with pytest.raises(QueueUnavailable):
            await reader.read(["default"], alive_within_s=1)
        await reader.close()

    run(body())


def test_key_inventory_names_every_key_of_the_queue():
    listing = {k.name: k.meaning for k in key_inventory(KEYS)}
    for name in (KEYS.stream, KEYS.dlq, KEYS.delayed, KEYS.pause, KEYS.leases):
        assert listing.get(name)
    for pattern in (KEYS.result("*"), KEYS.state("*"), KEYS.idem("*")):
        assert pattern in listing
    assert "consumer group hqm" in listing[KEYS.stream]
    assert all(name.startswith("hqm:{default}:") for name in listing)


# --- the gauges ----------------------------------------------------------------------


def test_gauges_are_set_in_the_background_and_kept_while_redis_is_down(redis_server):
    registry = CollectorRegistry()

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {"queue": "default"})

    async def body() -> None:
        queue = await queued(redis_server, 4)
        await queue.claim("w", 1, 0)
        await queue.heartbeat("w", 60)
        metrics = QueueMetrics(registry)
        settings = StatsSettings(interval_s=0.05, alive_within_s=ALIVE_WITHIN_S)
        gauges = QueueGauges(
            reader=StatsReader(redis_server.url),
            queues=["default"],
            metrics=metrics,
            settings=settings,
        )
        gauges.start()

        async def set_() -> None:
            while value("hqm_queue_backlog") is None:
                await asyncio.sleep(0.01)  # poll interval, bounded by run()'s timeout

        await set_()
        assert value("hqm_queue_backlog") == 3 and value("hqm_queue_pending") == 1
        assert value("hqm_queue_consumers") == 1 and value("hqm_queue_dead_letters") == 0
        assert value("hqm_queue_scheduled") == 0 and value("hqm_queue_results") == 0
        assert value("hqm_queue_oldest_age_seconds") is not None
        await gauges.close()
        await queue.close()
        redis_server.stop()
        down = QueueGauges(
            reader=StatsReader(redis_server.url, timeout_s=1),
            queues=["default"],
            metrics=metrics,
            settings=settings,
        )
        assert await down.refresh() is False
        assert value("hqm_queue_backlog") == 3  # the last figures stay
        await down.close()

    run(body())


def test_stats_interval_0_or_no_redis_means_no_refresh(redis_server):
    async def body() -> None:
        off = StatsSettings(interval_s=0, alive_within_s=1)
        on = StatsSettings(interval_s=1, alive_within_s=1)
        registry = CollectorRegistry()
        assert _queue_gauges(redis_server.url, ("q",), registry, off) is None
        assert _queue_gauges(None, ("q",), registry, on) is None
        gauges = _queue_gauges(redis_server.url, ("q",), registry, on)
        assert gauges is not None
        await gauges.close()

    run(body())


def test_proxy_with_redis_exports_the_backlog_with_no_worker(redis_server, spawn: Spawner):
    hqm = spawn.proxy(f"127.0.0.1:{free_port()}", redis_server.url, "--stats-interval", "0.1")
    for n in range(4):
        assert request(hqm.port, b"POST", b"/q/%d" % n, body=b"x").status == 202
    assert wait_until(lambda: sample(metrics(hqm), "hqm_queue_backlog", queue="default") == 4)
    text = metrics(hqm)
    assert sample(text, "hqm_queue_consumers", queue="default") == 0
    assert sample(text, "hqm_queue_depth", queue="default") == 4
    assert "_created" not in text


def test_worker_exports_pending_attempts_by_code_and_dead_letters(redis_server, spawn: Spawner):
    gate, never = threading.Event(), threading.Event()
    flaky: list[bytes] = []

    def respond(seen: Seen) -> Answer:
        if seen.target == b"/flaky":
            flaky.append(seen.target)
            return Answer(503 if len(flaky) == 1 else 200, body=b"ok")
        if seen.target == b"/slow":  # no answer within --read-timeout
            never.wait(60)
        if seen.target.startswith(b"/held"):
            assert gate.wait(60)
        return Answer(200, body=b"done")

    app = Backend(respond)
    try:
        hqm = spawn.proxy(app.address, redis_server.url, "--stats-interval", "0")
        worker = spawn.worker(
            redis_server.url,
            app.address,
            "--stats-interval",
            "0.1",
            "--concurrency",
            "2",
            "--read-timeout",
            "0.5",
        )
        for target in (b"/held/1", b"/held/2", b"/held/3"):
            assert request(hqm.port, b"POST", target, body=b"x").status == 202

        def held() -> bool:
            text = metrics(worker)
            return (
                sample(text, "hqm_queue_pending", queue="default") == 2
                and sample(text, "hqm_queue_backlog", queue="default") == 1
            )

        assert wait_until(held), metrics(worker)
        assert sample(metrics(worker), "hqm_queue_consumers", queue="default") == 1
        gate.set()
        for target in (b"/flaky", b"/slow"):  # /slow: no answer, a POST: a dead letter
            assert request(hqm.port, b"POST", target, body=b"x").status == 202

        def finished() -> bool:
            text = metrics(worker)
            return (
                sample(text, "hqm_worker_attempts_total", queue="default", code="error") == 1
                and sample(text, "hqm_queue_dead_letters", queue="default") == 1
                and sample(text, "hqm_worker_attempts_total", queue="default", code="200") == 4
                and sample(text, "hqm_queue_results", queue="default") == 5  # 4 and the 502
            )

        assert wait_until(finished), metrics(worker)
        text = metrics(worker)
        assert sample(text, "hqm_worker_attempts_total", queue="default", code="503") == 1
        assert (sample(text, "hqm_queue_results_bytes", queue="default") or 0) > 0
        assert "_created" not in text
    finally:
        gate.set()
        never.set()
        app.close()
