"""More of the Redis worker's contract: claim renewal, poison entries, drain timeout,
the status API, retries that free their slot, --max-depth, result TTL, retry safety.
Same real parts as tests/test_worker_redis.py."""

from __future__ import annotations

import signal
import threading
from collections import Counter

from hqm.proto.envelope import RequestRecord, encode_request
from tests.redis_server import RedisServer, redis_server
from tests.support import Answer, Seen, poll_result, request, wait_until
from tests.test_worker_redis import (
    GROUP,
    REQUEST_ID,
    STREAM,
    Spawner,
    admin_client,
    app,
    dlq_json,
    done_target,
    enqueue,
    held,
    ids_seen,
    logged,
    spawn,
)

__all__ = ["app", "redis_server", "spawn"]  # fixtures, imported for pytest


def status(port: int, request_id: str) -> tuple[int, dict]:
    response = request(port, b"GET", b"/_hqm/requests/" + request_id.encode())
    return response.status, response.json() if response.status != 200 else {}


def _canary(r, n: int) -> None:
    """Put a request in the stream already claimed by a consumer that never renews it
    (XADD and XREADGROUP in one transaction: no worker can read it first). Once it has
    been idle a visibility timeout, a worker's reclaim takes it and the app sees it."""
    record = RequestRecord(
        id=f"canary{n}", method=b"GET", target=b"/canary/%d" % n, headers=((b"Host", b"c"),)
    )
    pipe = r.pipeline(transaction=True)
    pipe.xadd(STREAM, {"r": encode_request(record), "a": 0, "i": record.id})
    pipe.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=1)
    added, read = pipe.execute()
    [(_, [(entry_id, _)])] = read
    assert entry_id == added  # the ghost holds it


def test_a_slow_request_is_not_delivered_twice(redis_server: RedisServer, app, spawn: Spawner):
    gate = threading.Event()

    def respond(seen: Seen) -> Answer:
        if seen.target == b"/slow":
            assert gate.wait(60), "the test never released the app"
        return done_target(seen)

    app.respond = respond
    hqm = spawn.proxy(app.address, redis_server.url)
    for name in ("slow1", "slow2"):
        spawn.worker(redis_server.url, app.address, "--consumer", name, "--visibility-timeout", "1")
    (request_id,) = enqueue(hqm.port, [b"/slow"], connections=1)
    assert wait_until(lambda: app.count() == 1)
    r = admin_client(redis_server.url)
    [slow] = r.xpending_range(STREAM, GROUP, "-", "+", 10)
    # Held for several visibility timeouts: the owner keeps renewing its claim. The
    # positive signal that the workers' reclaims had their chance at it each time: a
    # canary claimed after /slow reached the app, never renewed, is reclaimed and
    # reaches the app; a reclaim then found /slow older still, had it not been renewed
    # (each reclaim scans the whole pending list here: its COUNT is the free slots, 15).
    for n in range(3):
        _canary(r, n)
        assert wait_until(lambda n=n: app.count(lambda s: s.target == b"/canary/%d" % n) > 0)
        [now] = r.xpending_range(STREAM, GROUP, slow["message_id"], slow["message_id"], 1)
        assert (now["consumer"], now["times_delivered"]) == (slow["consumer"], 1)
        assert app.count(lambda s: s.target == b"/slow") == 1
    gate.set()
    assert poll_result(hqm.port, request_id).status == 200
    assert ids_seen(app)[request_id] == 1


def test_poison_entry_is_dead_lettered_after_max_deliveries(
    redis_server: RedisServer, app, spawn: Spawner
):
    gate = threading.Event()
    app.respond = held(gate, done_target)
    hqm = spawn.proxy(app.address, redis_server.url)
    common = ("--max-deliveries", "1", "--visibility-timeout", "1")
    crashing = spawn.worker(redis_server.url, app.address, "--consumer", "c1", *common)
    (request_id,) = enqueue(hqm.port, [b"/poison"], connections=1)
    assert wait_until(lambda: app.count() == 1)
    crashing.proc.send_signal(signal.SIGKILL)  # as if the entry crashed it
    crashing.proc.wait(20)
    spawn.worker(redis_server.url, app.address, "--consumer", "c2", *common)
    result = poll_result(hqm.port, request_id)
    assert result.status == 502
    assert "without finishing" in result.json()["error"]
    (letter,) = dlq_json("list", redis_server.url)
    assert letter["id"] == request_id
    assert "delivered 1 times without finishing" in letter["error"]
    assert app.count() == 1  # not sent to the app again
    gate.set()


def test_drain_timeout_leaves_the_entry_for_another_worker(
    redis_server: RedisServer, app, spawn: Spawner
):
    gate = threading.Event()
    app.respond = held(gate, done_target)
    hqm = spawn.proxy(app.address, redis_server.url)
    stuck = spawn.worker(
        redis_server.url, app.address, "--consumer", "stuck", "--drain-timeout", "0.5"
    )
    (request_id,) = enqueue(hqm.port, [b"/stuck"], connections=1)
    assert wait_until(lambda: app.count() == 1)
    assert stuck.terminate() == 0  # the drain ran out: it exits anyway
    assert logged(stuck, "worker stopped")
    r = admin_client(redis_server.url)
    pending = r.xpending_range(STREAM, GROUP, "-", "+", 10, consumername="stuck")
    assert len(pending) == 1  # cut off, left pending for reclaim: not lost
    spawn.worker(redis_server.url, app.address, "--visibility-timeout", "1")
    gate.set()
    result = poll_result(hqm.port, request_id)
    assert result.status == 200
    assert ids_seen(app)[request_id] == 2


def test_status_api_and_a_retry_does_not_hold_a_slot(
    redis_server: RedisServer, app, spawn: Spawner
):
    calls: Counter[bytes] = Counter()
    gate = threading.Event()

    def respond(seen: Seen) -> Answer:
        calls[seen.target] += 1
        if seen.target == b"/first" and calls[seen.target] == 1:
            return Answer(503, [(b"Retry-After", b"6")], b"later")
        if seen.target == b"/held":
            assert gate.wait(30)
        return done_target(seen)

    app.respond = respond
    hqm = spawn.proxy(app.address, redis_server.url)
    first, second = enqueue(hqm.port, [b"/first", b"/second"], connections=1)
    assert status(hqm.port, first) == (
        202,
        {"id": first, "status": "queued", "attempts": 0},
    )
    spawn.worker(redis_server.url, app.address, "--concurrency", "1", "--retry-max", "10")
    # the retry waits 6 s in the schedule (room for a slow machine to serve /second and
    # read the status before it is due); the one slot serves /second meanwhile
    assert poll_result(hqm.port, second).status == 200
    code, state = status(hqm.port, first)
    assert (code, state["status"], state["attempts"]) == (202, "retrying", 1)
    assert "503" in state["error"]
    assert poll_result(hqm.port, first).status == 200
    assert [s.target for s in app.seen] == [b"/first", b"/second", b"/first"]
    (held_id,) = enqueue(hqm.port, [b"/held"], connections=1)
    assert wait_until(lambda: status(hqm.port, held_id)[1].get("status") == "processing")
    gate.set()
    assert poll_result(hqm.port, held_id).status == 200


def test_max_depth_answers_503_until_workers_catch_up(
    redis_server: RedisServer, app, spawn: Spawner
):
    hqm = spawn.proxy(app.address, redis_server.url, "--max-depth", "5")
    ids = enqueue(hqm.port, [b"/d/%d" % i for i in range(5)], connections=1)
    full = request(hqm.port, b"POST", b"/d/6", body=b"x")
    assert full.status == 503
    assert full.header(b"Retry-After") == b"1"
    assert full.json()["error"] == "queue full"  # (backend details go to the log only)
    worker = spawn.worker(redis_server.url, app.address, "--burst")
    assert worker.proc.wait(20) == 0
    assert request(hqm.port, b"POST", b"/d/7", body=b"x").status == 202
    assert {poll_result(hqm.port, i).status for i in ids} == {200}
    assert app.count(lambda s: s.target == b"/d/6") == 0  # refused means not queued


def test_results_expire_after_result_ttl(redis_server: RedisServer, app, spawn: Spawner):
    app.respond = done_target
    hqm = spawn.proxy(app.address, redis_server.url, "--result-ttl", "1")
    spawn.worker(redis_server.url, app.address, "--result-ttl", "1")
    (request_id,) = enqueue(hqm.port, [b"/ttl"], connections=1)
    assert poll_result(hqm.port, request_id).status == 200
    assert wait_until(lambda: status(hqm.port, request_id)[0] == 404, timeout=10)


def test_502_is_retried_for_get_but_not_for_post(redis_server: RedisServer, app, spawn: Spawner):
    calls: Counter[bytes] = Counter()

    def respond(seen: Seen) -> Answer:
        calls[seen.target] += 1
        if calls[seen.target] == 1:
            return Answer(502, [], b"bad gateway from the app")
        return done_target(seen)

    app.respond = respond
    hqm = spawn.proxy(app.address, redis_server.url)
    spawn.worker(redis_server.url, app.address)
    get = request(hqm.port, b"GET", b"/get").json()["id"]
    post = request(hqm.port, b"POST", b"/post", body=b"x").json()["id"]
    keyed = request(hqm.port, b"POST", b"/keyed", [(b"Idempotency-Key", b"k1")], b"x")
    assert poll_result(hqm.port, get).status == 200
    stored = poll_result(hqm.port, post)  # may have been processed: not asked again
    assert (stored.status, stored.body) == (502, b"bad gateway from the app")
    assert poll_result(hqm.port, keyed.json()["id"]).status == 200
    assert calls == {b"/get": 2, b"/post": 1, b"/keyed": 2}


def test_fire_mode_keeps_no_result(redis_server: RedisServer, app, spawn: Spawner):
    app.respond = done_target
    hqm = spawn.proxy(app.address, redis_server.url, "--mode", "fire")
    spawn.worker(redis_server.url, app.address)
    accepted = request(hqm.port, b"POST", b"/hook", body=b"event")
    assert accepted.status == 202 and accepted.header(b"Location") is None
    assert wait_until(lambda: app.count() == 1)
    request_id = accepted.json()["id"]
    assert app.seen[0].header(REQUEST_ID) == request_id.encode()
    r = admin_client(redis_server.url)
    assert wait_until(lambda: r.xlen(STREAM) == 0)
    assert r.get(f"hqm:{{default}}:res:{request_id}") is None


def test_a_waiting_client_is_answered_across_a_redis_restart(app, spawn: Spawner):
    server = RedisServer(appendonly=True).start()
    try:
        gate = threading.Event()
        app.respond = held(gate, done_target)
        hqm = spawn.proxy(app.address, server.url)
        spawn.worker(server.url, app.address)
        answers: list = []
        client = threading.Thread(
            target=lambda: answers.append(
                request(hqm.port, b"GET", b"/waiting", [(b"Prefer", b"wait=20")])
            )
        )
        client.start()
        assert wait_until(lambda: app.count() == 1)
        server.restart()  # the reply subscription drops; the notification may be lost
        gate.set()
        client.join(25)
        (answer,) = answers
        assert answer.status == 200
        assert answer.body.startswith(b"done /waiting ")
    finally:
        server.cleanup()
