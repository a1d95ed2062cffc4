"""Scale to zero: a due delayed request reaches the stream with no worker running (the
proxy promotes it), so the stream's lag, what KEDA's redis-streams trigger reads, goes
above 0 and a worker started then serves it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from hqm.queue.keys import GROUP, QueueKeys
from tests.redis_server import RedisServer, redis_server
from tests.support import Backend, HqmProcess, poll_result, proxy, request, wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest


@pytest.fixture
def procs() -> Iterator[list[HqmProcess]]:
    started: list[HqmProcess] = []
    yield started
    for process in started:
        process.kill()


def _lag(r: redis.Redis, stream: str) -> int:
    """The group's lag as XINFO GROUPS reports it (KEDA's lagCount reads this)."""
    groups = r.xinfo_groups(stream)
    return next(int(g["lag"] or 0) for g in groups if g["name"] == GROUP.encode())


def test_a_due_delayed_request_raises_the_lag_with_no_worker_then_a_worker_serves_it(
    redis_server: RedisServer, procs: list[HqmProcess]
):
    app = Backend()
    try:
        hqm = proxy(app.address, "--redis", redis_server.url)
        procs.append(hqm)
        r = redis.Redis.from_url(redis_server.url, protocol=2, socket_timeout=5)
        stream = QueueKeys("default").stream
        accepted = request(hqm.port, b"POST", b"/later", [(b"HQM-Delay", b"1")], b"x")
        assert accepted.status == 202
        assert r.xlen(stream) == 0 and _lag(r, stream) == 0  # delayed: not in the stream yet
        # No worker runs: only the proxy can move it once due.
        assert wait_until(lambda: _lag(r, stream) > 0), "a due request never reached the stream"
        assert r.xlen(stream) == 1 and app.count() == 0
        worker = HqmProcess(
            "worker", "--redis", redis_server.url, "--upstream", app.address, "--admin", "off"
        )
        procs.append(worker.wait_ready())
        answer = poll_result(hqm.port, accepted.json()["id"])
        assert answer.status == 200
        assert [s.target for s in app.seen] == [b"/later"]
    finally:
        app.close()
