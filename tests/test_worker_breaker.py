"""The circuit breaker in front of the app: the state machine with a hand-moved clock,
then an app outage under steady traffic with a real redis-server, real processes and a
real app that comes back on the same port."""

from __future__ import annotations

import json
import os
import re
import time

from hqm.worker.breaker import BASE_COOLDOWN_S, MAX_COOLDOWN_S, THRESHOLD, Breaker, State
from tests.redis_server import RedisServer, free_port, redis_server
from tests.support import Backend, HandClock, HqmProcess, poll_result, request, wait_until
from tests.test_worker_redis import metrics

__all__ = ["redis_server"]  # the fixture, imported for pytest


def _breaker() -> tuple[Breaker, HandClock, list[tuple[State, State]]]:
    clock, changes = HandClock(100.0), []
    return Breaker(clock, lambda old, new: changes.append((old, new))), clock, changes


def test_opens_after_consecutive_connection_failures_only():
    breaker, _, changes = _breaker()
    for _ in range(THRESHOLD - 1):
        breaker.unreachable()
    breaker.answered()  # an answer in between resets the count
    for _ in range(THRESHOLD - 1):
        breaker.unreachable()
    assert breaker.state is State.CLOSED and breaker.allowed() is None and changes == []
    breaker.unreachable()
    assert breaker.state is State.OPEN and breaker.allowed() == 0
    assert changes == [(State.CLOSED, State.OPEN)]


def test_half_open_lets_one_probe_and_closes_on_its_answer():
    breaker, clock, changes = _breaker()
    for _ in range(THRESHOLD):
        breaker.unreachable()
    assert breaker.retry_in_s() == BASE_COOLDOWN_S
    clock.now += BASE_COOLDOWN_S - 0.01
    assert not breaker.start()
    clock.now += 0.01
    assert breaker.start()  # the probe
    assert breaker.state is State.HALF_OPEN
    assert not breaker.start()  # only one at a time
    breaker.answered()
    assert breaker.state is State.CLOSED and breaker.start() and breaker.start()
    assert [new for _, new in changes] == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_failed_probes_back_off_to_the_cap_and_an_abandoned_probe_frees_the_slot():
    breaker, clock, changes = _breaker()
    for _ in range(THRESHOLD):
        breaker.unreachable()
    cooldowns = []
    for _ in range(8):
        cooldowns.append(breaker.retry_in_s())
        clock.now += breaker.retry_in_s()
        assert breaker.start()
        breaker.unreachable()
    assert cooldowns[:4] == [BASE_COOLDOWN_S * 2**i for i in range(4)]
    assert max(cooldowns) == MAX_COOLDOWN_S
    clock.now += MAX_COOLDOWN_S
    assert breaker.start()
    breaker.abandon()  # the probe could not even be sent: another may go
    assert breaker.start()
    # every transition was reported once: no repeats of the same state
    assert all(old is not new for old, new in changes)


#: The outage: seconds the app is down while requests keep arriving at 10/s. The issue's
#: own figure is 20 s; the suite uses less (HQM_TEST_OUTAGE_S=20 runs it in full).
OUTAGE_S = float(os.environ.get("HQM_TEST_OUTAGE_S", "3"))


def test_app_outage_under_steady_traffic_dead_letters_nothing(redis_server: RedisServer):
    """The app is down while requests arrive; the worker neither spends attempts nor
    dead-letters anything; once the app is back every request is answered once."""
    app_port = free_port()
    upstream = f"127.0.0.1:{app_port}"
    common = ["--upstream", upstream, "--redis", redis_server.url]
    proxy = HqmProcess("proxy", "--listen", "127.0.0.1:0", "--admin", "off", *common)
    proxy.wait_ready()
    worker = HqmProcess(
        "worker", *common, "--admin", "127.0.0.1:0", "--max-attempts", "2", "--concurrency", "4"
    )
    worker.wait_ready()
    app = None
    try:
        ids = []
        down_until = time.monotonic() + OUTAGE_S
        while time.monotonic() < down_until or len(ids) < 10:  # the app is down meanwhile
            accepted = request(proxy.port, b"POST", b"/order/%d" % len(ids), body=b"x")
            assert accepted.status == 202
            ids.append(accepted.json()["id"])
            time.sleep(0.1)  # pacing the steady traffic, not waiting for an outcome
        opened = re.compile(r'"msg": ?"circuit breaker open"')
        assert _wait_log(worker, opened), worker.log()
        state = re.search(
            r'^hqm_worker_breaker_state\{upstream="default"\} (\S+)$', metrics(worker), re.M
        )
        assert state is not None and float(state.group(1)) in (1.0, 2.0)  # open/half-open
        app = Backend(port=app_port)  # the app is back
        for _ in range(10):  # and traffic goes on
            accepted = request(proxy.port, b"POST", b"/order/%d" % len(ids), body=b"x")
            ids.append(accepted.json()["id"])
        results = [poll_result(proxy.port, rid, timeout=60) for rid in ids]
        assert [r.status for r in results] == [200] * len(ids)
        targets = sorted(seen.target for seen in app.seen)
        assert targets == sorted(b"/order/%d" % i for i in range(len(ids)))  # each once
        assert "dead-lettering" not in worker.log()
        # one line when the app is found down, one when it is back: none per probe
        lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
        breaker = [(r["level"], r["msg"]) for r in lines if "circuit breaker" in r["msg"]]
        assert breaker == [
            ("warning", "circuit breaker open"),
            ("info", "circuit breaker closed"),
        ], worker.log()
        closed = next(r for r in lines if r["msg"] == "circuit breaker closed")
        assert closed["failed_probes"] >= 1  # probed while down (every 0.5 s, doubling)
    finally:
        worker.terminate()
        proxy.terminate()
        if app is not None:
            app.close()


def _wait_log(process: HqmProcess, pattern: re.Pattern) -> bool:
    return wait_until(lambda: bool(pattern.search(process.log())))
