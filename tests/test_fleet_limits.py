"""Fleet-wide limits shared by all workers through Redis: --global-rate (GCRA) and
--global-concurrency (leases that lapse with a dead worker). Real redis-server, real
worker processes, a real app counting what reaches it; only upper bounds on counts."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from hqm.queue.memory_limits import MemoryLimits
from hqm.queue.redis_limits import RedisLimits
from hqm.worker.fleet import FleetGate
from tests.redis_server import RedisServer, redis_server
from tests.support import Answer, Backend, HandClock, HqmProcess, proxy, request, wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest


def test_gcra_reservations_space_requests_after_the_burst():
    async def body() -> list[float]:
        limits = MemoryLimits(HandClock(50.0))
        return [(await limits.reserve(10.0, 3)).wait_s for _ in range(6)]

    waits = asyncio.run(body())
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])


def test_enforced_rate_halves_on_throttling_and_climbs_back_with_successes():
    async def body() -> list[float]:
        clock = HandClock(50.0)
        limits = MemoryLimits(clock)
        rates = [(await limits.reserve(100.0, 1)).effective_rate]
        rates.append((await limits.reserve(100.0, 1, throttled=3)).effective_rate)
        rates.append((await limits.reserve(100.0, 1, throttled=1)).effective_rate)  # <1 s
        clock.now += 1.0
        rates.append((await limits.reserve(100.0, 1, throttled=1)).effective_rate)
        rates.append((await limits.reserve(100.0, 1, successes=10)).effective_rate)
        rates.append((await limits.reserve(100.0, 1, successes=1000)).effective_rate)
        return rates

    assert asyncio.run(body()) == pytest.approx([100, 50, 50, 25, 35, 100])


def test_a_pause_holds_every_reservation_back():
    async def body() -> tuple[float, float, float]:
        clock = HandClock(50.0)
        limits = MemoryLimits(clock)
        await limits.pause(2.0)
        await limits.pause(1.0)  # never shortens a pause
        first = (await limits.reserve(1000.0, 1)).wait_s
        clock.now += 1.5
        return first, await limits.paused_for(), (await limits.reserve(1000.0, 1)).wait_s

    first, left, later = asyncio.run(body())
    assert first == pytest.approx(2.0)
    assert left == pytest.approx(0.5)
    assert later == pytest.approx(0.5 + 0.001)  # behind the pause and the first slot


def test_leases_are_bounded_and_lapse_unless_renewed():
    async def body() -> None:
        clock = HandClock(50.0)
        limits = MemoryLimits(clock)
        assert await limits.lease("a", 2, 5) and await limits.lease("b", 2, 5)
        assert not await limits.lease("c", 2, 5)
        clock.now += 4
        await limits.renew(["a"], 5)
        clock.now += 2  # b lapsed, a was renewed
        assert await limits.lease("c", 2, 5)
        assert not await limits.lease("d", 2, 5)
        await limits.release("a")
        assert await limits.lease("d", 2, 5)

    asyncio.run(body())


class Counting:
    """An app that notes when each request arrived and may hold them."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.arrivals: list[float] = []
        self.release = threading.Event()
        self.hold_s = hold_s
        self.backend = Backend(self.respond)

    def respond(self, seen) -> Answer:
        self.arrivals.append(time.monotonic())
        if self.hold_s:
            self.release.wait(self.hold_s)
        return Answer(200, [], b"ok")

    def close(self) -> None:
        self.release.set()
        self.backend.close()


@pytest.fixture
def counting():
    apps: list[Counting] = []

    def make(hold_s: float = 0.0) -> Counting:
        apps.append(Counting(hold_s))
        return apps[-1]

    yield make
    for app in apps:
        app.close()


def _fill(redis_url: str, upstream: str, count: int) -> HqmProcess:
    hqm = proxy(upstream, "--redis", redis_url)
    for i in range(count):
        assert request(hqm.port, b"POST", b"/job/%d" % i, body=b"x").status == 202
    return hqm


def _workers(redis_url: str, upstream: str, count: int, *extra: str) -> list[HqmProcess]:
    args = ["worker", "--redis", redis_url, "--upstream", upstream, "--admin", "off"]
    return [HqmProcess(*args, *extra).wait_ready() for _ in range(count)]


#: The window the rate is checked over: the issue's figure is 10 s; the suite uses 3
#: (HQM_TEST_RATE_WINDOW_S=10 runs it in full).
RATE_WINDOW_S = float(os.environ.get("HQM_TEST_RATE_WINDOW_S", "3"))


def test_global_rate_holds_across_four_workers(redis_server: RedisServer, counting):
    """4 workers, --global-rate 40: in any window of W s the app gets at most 40 x W +
    burst (+ 10 for the spread of network latency over the window's two edges)."""
    window = RATE_WINDOW_S
    app = counting()
    hqm = _fill(redis_server.url, app.backend.address, int(40 * window * 1.5) + 20)
    workers = _workers(redis_server.url, app.backend.address, 4, "--global-rate", "40")
    try:
        assert wait_until(lambda: len(app.arrivals) >= 40 * window + 20, timeout=10 + 3 * window)
        arrivals = sorted(app.arrivals)
        busiest = max(
            sum(1 for t in arrivals[i:] if t - start <= window) for i, start in enumerate(arrivals)
        )
        assert busiest <= 40 * window + 1 + 10, busiest
    finally:
        for w in workers:
            w.kill()
        hqm.terminate()


def test_global_concurrency_holds_across_four_workers(redis_server: RedisServer, counting):
    app = counting(hold_s=0.05)
    hqm = _fill(redis_server.url, app.backend.address, 40)
    workers = _workers(redis_server.url, app.backend.address, 4, "--global-concurrency", "3")
    try:
        assert wait_until(lambda: len(app.arrivals) >= 40, timeout=60)
        assert app.backend.peak <= 3
    finally:
        for w in workers:
            w.terminate()
        hqm.terminate()


def test_a_killed_workers_leases_lapse(redis_server: RedisServer, counting):
    app = counting(hold_s=60)  # holds every request: leases stay taken
    hqm = _fill(redis_server.url, app.backend.address, 4)
    limited = ("--global-concurrency", "2", "--concurrency", "2")  # claims 2 at a time
    first = _workers(redis_server.url, app.backend.address, 1, *limited)[0]
    try:
        assert wait_until(lambda: len(app.arrivals) == 2)
        first.proc.kill()  # SIGKILL: its two leases are never released
        first.proc.wait()
        second = _workers(redis_server.url, app.backend.address, 1, *limited)[0]
        try:
            # the other two entries reach the app once the dead worker's leases lapse
            assert wait_until(lambda: len(app.arrivals) == 4, timeout=30)
            assert app.backend.in_flight == 4  # 2 of the dead worker's, 2 of the new one's
        finally:
            app.release.set()
            second.terminate()
    finally:
        hqm.terminate()


def test_retry_after_pauses_the_whole_queue(redis_server: RedisServer, counting):
    """Two workers; the app's first answer is 503 with Retry-After: 2. Until the pause
    is over no worker sends more than what was already on its way: at most 2 (one each)
    arrive in the 1.5 s after the 503 (at --global-rate 20 it would be about 30)."""
    app = counting()
    first = threading.Event()

    def respond(seen) -> Answer:
        app.arrivals.append(time.monotonic())
        if not first.is_set():
            first.set()
            return Answer(503, [(b"Retry-After", b"2")], b"busy")
        return Answer(200, [], b"ok")

    app.backend.respond = respond
    hqm = _fill(redis_server.url, app.backend.address, 60)
    workers = _workers(redis_server.url, app.backend.address, 2, "--global-rate", "20")
    try:
        assert wait_until(lambda: len(app.arrivals) >= 20, timeout=60)
        throttled_at = app.arrivals[0]
        early = [t for t in app.arrivals[1:] if t - throttled_at < 1.5]
        assert len(early) <= 2, early
        assert wait_until(lambda: len(app.arrivals) == 61, timeout=60)  # + the retried one
    finally:
        for w in workers:
            w.terminate()
        hqm.terminate()


def test_redis_limits_follow_the_same_rules(redis_server: RedisServer):
    """The Lua side of the enforced rate and the pause, on a real redis-server: halved
    on throttling (once a second at most), climbing back with successes, no slot inside
    a pause."""

    async def body() -> None:
        limits = RedisLimits(redis_server.url, "aimd")
        try:
            rates = [(await limits.reserve(100.0, 1)).effective_rate]
            rates.append((await limits.reserve(100.0, 1, throttled=2)).effective_rate)
            rates.append((await limits.reserve(100.0, 1, throttled=1)).effective_rate)
            rates.append((await limits.reserve(100.0, 1, successes=10)).effective_rate)
            assert rates == pytest.approx([100, 50, 50, 60])
            await limits.pause(3.0)
            assert 2.0 < await limits.paused_for() <= 3.0
            assert (await limits.reserve(100.0, 1)).wait_s > 2.0  # behind the pause
        finally:
            await limits.close()

    asyncio.run(body())


def test_the_gate_reports_the_enforced_rate_and_pauses_itself():
    async def body() -> list[float]:
        reported: list[float] = []
        gate = FleetGate(MemoryLimits(), rate=100.0, on_rate=reported.append)
        async with gate.slot("a"):
            pass
        await gate.throttled(None)  # a 503 without Retry-After: slower, no pause
        async with gate.slot("b"):
            pass
        plain = FleetGate(MemoryLimits())  # no global limits: only the pause applies
        async with plain.slot("c"):
            pass  # no pause yet: goes at once
        await plain.throttled(30)  # the app said Retry-After: 30
        with pytest.raises(TimeoutError):  # held back (a slow machine cannot shorten it)
            async with asyncio.timeout(0.05), plain.slot("d"):
                pass
        return reported

    assert asyncio.run(body()) == pytest.approx([100, 100, 50])
