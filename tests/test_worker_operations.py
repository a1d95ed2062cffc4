"""A worker as an operator sees it (issue 20): its log through a Redis outage, its
liveness in ``hqm status`` while idle and once killed, and Ctrl-C against a Redis that
does not answer. A real redis-server (stopped, or SIGSTOPped), real worker processes.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import redis

from hqm.queue.keys import QueueKeys
from tests.redis_server import RedisServer, redis_server
from tests.support import Answer, Backend, HqmProcess, proxy, request, wait_until
from tests.test_status_cli import status, status_json

__all__ = ["redis_server"]  # the fixture, imported for pytest

#: How long Redis stays away: the old worker wrote a warning per failed claim round,
#: about 10 per second (the issue's 20 s outage: 179 lines).
OUTAGE_S = 3.0
#: A worker with nothing in flight exits within this after Ctrl-C, whatever Redis does.
STOP_WITHIN_S = 6.0


def _records(process: HqmProcess) -> list[dict]:
    return [json.loads(line) for line in list(process.lines) if line.startswith("{")]


def _worker(server: RedisServer, *extra: str, upstream: str = "127.0.0.1:9") -> HqmProcess:
    args = ["worker", "--redis", server.url, "--upstream", upstream, "--admin", "off"]
    return HqmProcess(*args, *extra).wait_ready()


def test_a_redis_outage_is_one_warning_and_one_recovery_line(redis_server: RedisServer):
    worker = _worker(redis_server, "--stats-interval", "0")  # (the gauges log their own)
    try:
        redis_server.stop()
        assert wait_until(lambda: any(r["level"] == "warning" for r in _records(worker)))
        time.sleep(OUTAGE_S)  # the outage's length, not a wait for an outcome
        redis_server.start()  # the same port
        recovered = "queue claim loop works again after"
        assert wait_until(lambda: any(recovered in r["msg"] for r in _records(worker))), (
            worker.log()
        )
        records = _records(worker)
        warnings = [r["msg"] for r in records if r["level"] == "warning"]
        assert len(warnings) == 1, warnings  # one per outage, not one per failed round
        assert all(w.startswith("queue claim loop failed: QueueUnavailable") for w in warnings)
        (line,) = [r["msg"] for r in records if recovered in r["msg"]]
        failures = int(line.removeprefix(recovered).split()[0])
        # backed off: 0.1 s doubling (full jitter) up to 5 s, not a round per 0.1 s
        assert 1 <= failures <= 20, line
    finally:
        worker.kill()


def _paused(server: RedisServer) -> None:
    """SIGSTOP: the port still accepts, nothing answers (a hung Redis)."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)


def _resume(server: RedisServer) -> None:
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)


def test_ctrl_c_with_nothing_in_flight_exits_promptly_against_a_hung_redis(
    redis_server: RedisServer,
):
    worker = _worker(redis_server)
    try:
        _paused(redis_server)
        worker.proc.send_signal(signal.SIGINT)
        # an upper bound on waiting: the old worker took 7-14 s here
        assert worker.proc.wait(timeout=STOP_WITHIN_S) == 0, worker.log()
        assert "worker stopped" in worker.log()
    finally:
        _resume(redis_server)
        worker.kill()


def test_a_second_ctrl_c_while_draining_exits_at_once_and_says_what_it_abandoned(
    redis_server: RedisServer,
):
    release = threading.Event()
    app = Backend(lambda seen: (release.wait(60), Answer(200, [], b"late"))[1])
    hqm = proxy(app.address, "--redis", redis_server.url)
    worker = _worker(redis_server, "--drain-timeout", "60", upstream=app.address)
    try:
        assert request(hqm.port, b"POST", b"/slow", body=b"x").status == 202
        assert wait_until(lambda: app.count() == 1)  # in flight at the app
        worker.proc.send_signal(signal.SIGINT)  # drains: waits up to 60 s for the app
        assert wait_until(lambda: any(r["msg"] == "draining" for r in _records(worker)))
        assert worker.proc.poll() is None
        worker.proc.send_signal(signal.SIGINT)  # enough
        assert worker.proc.wait(timeout=STOP_WITHIN_S) == 128 + signal.SIGINT
        assert wait_until(lambda: any("second SIGINT" in r["msg"] for r in _records(worker)))
        (line,) = [r for r in _records(worker) if "second SIGINT" in r["msg"]]
        assert line["level"] == "warning"
        assert "1 requests in flight abandoned" in line["msg"], line
    finally:
        release.set()
        worker.kill()
        hqm.terminate()
        app.close()


def _consumers(server: RedisServer) -> tuple[int, list[dict]]:
    # the old rule's threshold, 1 s: an idle worker's consumer idles past it
    code, data = status_json(server.url, "--visibility-timeout", "1")
    return code, data["queues"][0]["consumers"]


def test_an_idle_worker_is_alive_by_its_heartbeat_and_a_killed_one_is_not(
    redis_server: RedisServer,
):
    worker = _worker(redis_server, "--heartbeat", "1")
    name = worker.info["consumer"]
    try:
        # idle longer than the old threshold (it blocks in XREADGROUP meanwhile)
        def idle_past_threshold() -> bool:
            return any(c["name"] == name and c["idle_s"] > 1.5 for c in _consumers(redis_server)[1])

        assert wait_until(idle_past_threshold), _consumers(redis_server)
        code, consumers = _consumers(redis_server)
        assert code == 0 and [(c["name"], c["alive"]) for c in consumers] == [(name, True)]
        code, out = status("--redis", redis_server.url, "--visibility-timeout", "1")
        (row,) = [line for line in out.splitlines() if line.strip().startswith(name)]
        assert row.split()[-1] == "yes", out
        worker.proc.kill()  # SIGKILL: no clean exit, the heartbeat key just expires
        worker.proc.wait(STOP_WITHIN_S)

        def dead() -> bool:
            consumers = _consumers(redis_server)[1]
            return [(c["name"], c["alive"]) for c in consumers] == [(name, False)]

        assert wait_until(dead), _consumers(redis_server)
    finally:
        worker.kill()


def test_a_clean_exit_deletes_the_heartbeat_and_the_consumer(redis_server: RedisServer):
    worker = _worker(redis_server, "--heartbeat", "1")
    name = worker.info["consumer"]
    r = redis.Redis.from_url(redis_server.url)
    heartbeat = QueueKeys("default").heartbeat(name)
    try:
        assert wait_until(lambda: r.exists(heartbeat) == 1)
        assert 0 < r.pttl(heartbeat) <= 3000  # 3 heartbeats of 1 s
        assert worker.terminate() == 0
        assert r.exists(heartbeat) == 0
        assert _consumers(redis_server)[1] == []
    finally:
        worker.kill()
        r.close()
