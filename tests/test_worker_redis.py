"""The Redis Streams path end to end: real redis-server, real hqm proxy and worker
processes, a real app on real sockets. Nothing is mocked; waits are deadlines, not sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from hqm.proto.envelope import decode_response
from hqm.queue.keys import QueueKeys
from tests.redis_server import RedisServer, redis_server
from tests.support import (
    Answer,
    Backend,
    HqmProcess,
    RawClient,
    Response,
    Seen,
    build_request,
    poll_result,
    proxy,
    request,
    wait_until,
)

__all__ = ["redis_server"]  # the fixture, imported for pytest

KEYS = QueueKeys("default")
STREAM, GROUP = KEYS.stream, KEYS.group  # hqm:{default}:stream, group hqm
REQUEST_ID = b"HQM-Request-Id"


# --- helpers -----------------------------------------------------------------


class Spawner:
    """Starts hqm processes and kills whatever is still running at teardown."""

    def __init__(self) -> None:
        self.procs: list[HqmProcess] = []

    def proxy(self, upstream: str, redis_url: str, *extra: str) -> HqmProcess:
        process = proxy(upstream, "--redis", redis_url, *extra)
        self.procs.append(process)
        return process

    def worker(self, redis_url: str, upstream: str, *extra: str) -> HqmProcess:
        args = ("worker", "--redis", redis_url, "--upstream", upstream, "--admin", "127.0.0.1:0")
        process = HqmProcess(*args, "--retry-base", "0.05", *extra)
        self.procs.append(process)
        return process.wait_ready()

    def kill_all(self) -> None:
        for process in self.procs:
            process.kill()


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    spawner = Spawner()
    yield spawner
    spawner.kill_all()


@pytest.fixture
def app() -> Iterator[Backend]:
    backend = Backend()
    yield backend
    backend.close()


def admin_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, protocol=2, socket_timeout=5)


def pipelined(
    port: int, raws: list[bytes], *, connections: int = 32, window: int = 64
) -> list[Response]:
    """Send ``raws`` over keep-alive connections, ``window`` pipelined requests at a time;
    the responses come back in the order of ``raws``."""
    out: list[Response | None] = [None] * len(raws)

    def run(indices: list[int]) -> None:
        client = RawClient(port)
        try:
            for start in range(0, len(indices), window):
                part = indices[start : start + window]
                client.send(b"".join(raws[i] for i in part))
                for i in part:
                    client.expect(raws[i].split(b" ", 1)[0])
                    out[i] = client.read_response()
        finally:
            client.close()

    lanes = [list(range(lane, len(raws), connections)) for lane in range(connections)]
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(run, [lane for lane in lanes if lane]))
    assert all(response is not None for response in out)
    return out  # type: ignore[return-value]


def enqueue(port: int, targets: list[bytes], *, connections: int = 32) -> list[str]:
    """POST each target through the proxy (async mode); every answer must be a 202."""
    raws = [build_request(b"POST", target, body=target) for target in targets]
    responses = pipelined(port, raws, connections=connections)
    statuses = Counter(r.status for r in responses)
    assert statuses == {202: len(targets)}, statuses
    return [r.json()["id"] for r in responses]


def collect(port: int, ids: list[str], timeout: float = 60.0) -> dict[str, Response]:
    """GET /_hqm/requests/{id} for every id until none answers 202 (or the deadline)."""
    results: dict[str, Response] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout
    while pending:
        raws = [build_request(b"GET", b"/_hqm/requests/" + i.encode()) for i in pending]
        for request_id, response in zip(pending, pipelined(port, raws), strict=True):
            if response.status != 202:
                results[request_id] = response
        pending = [i for i in pending if i not in results]
        assert not pending or time.monotonic() < deadline, f"{len(pending)} never finished"
        if pending:
            time.sleep(0.05)  # poll interval, inside the deadline above
    return results


def ids_seen(app: Backend) -> Counter[str]:
    """How many times the app saw each request id."""
    with app._lock:
        seen = list(app.seen)
    return Counter((s.header(REQUEST_ID) or b"").decode() for s in seen)


def held(gate: threading.Event, then: Callable[[Seen], Answer]) -> Callable[[Seen], Answer]:
    """An app handler that holds every request until ``gate`` is set."""

    def respond(seen: Seen) -> Answer:
        assert gate.wait(60), "the test never released the app"
        return then(seen)

    return respond


def done_target(seen: Seen) -> Answer:
    rid = seen.header(REQUEST_ID) or b"?"
    return Answer(200, [(b"Content-Type", b"text/plain")], b"done " + seen.target + b" " + rid)


def metrics(process: HqmProcess) -> str:
    response = request(process.admin_port, b"GET", b"/metrics")
    assert response.status == 200
    return response.body.decode()


def counter(text: str, name: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_records(process: HqmProcess) -> list[dict]:
    return [json.loads(line) for line in process.lines if line.startswith("{")]


def logged(process: HqmProcess, msg: str) -> bool:
    return any(record.get("msg") == msg for record in log_records(process))


# --- 1. throughput and exactly-once in normal operation --------------------------


def test_two_workers_2000_requests_each_result_once(redis_server: RedisServer, app, spawn):
    app.respond = done_target
    hqm = spawn.proxy(app.address, redis_server.url)
    workers = [
        spawn.worker(redis_server.url, app.address, "--consumer", name, "--concurrency", "16")
        for name in ("w1", "w2")
    ]
    targets = [b"/item/%d" % i for i in range(2000)]
    ids = enqueue(hqm.port, targets)
    assert len(set(ids)) == 2000
    assert wait_until(lambda: app.count() >= 2000, timeout=60)
    results = collect(hqm.port, ids)
    for request_id, target in zip(ids, targets, strict=True):
        result = results[request_id]
        assert result.status == 200, (request_id, result)
        assert result.body == b"done " + target + b" " + request_id.encode()
        assert result.header(REQUEST_ID) == request_id.encode()
    seen = ids_seen(app)
    assert set(seen) == set(ids)
    assert set(seen.values()) == {1}, [i for i, n in seen.items() if n != 1]
    r = admin_client(redis_server.url)
    assert wait_until(lambda: r.xlen(STREAM) == 0)
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    assert r.xlen(KEYS.dlq) == 0
    # both workers did a share of the work, and the shares add up
    done = [
        counter(metrics(w), 'hqm_worker_processed_total{outcome="done",queue="default"}')
        for w in workers
    ]
    assert sum(done) == 2000 and min(done) > 0, done


# --- 2. a worker killed with requests in flight ------------------------------------


def test_kill_9_with_requests_in_flight_loses_nothing(redis_server: RedisServer, app, spawn):
    gate = threading.Event()
    app.respond = held(gate, done_target)
    hqm = spawn.proxy(app.address, redis_server.url)
    worker_a = spawn.worker(redis_server.url, app.address, "--consumer", "a", "--concurrency", "5")
    ids = enqueue(hqm.port, [b"/k/%d" % i for i in range(8)], connections=4)
    assert wait_until(lambda: app.in_flight == 5)  # A holds 5, 3 still in the stream
    in_flight = set(ids_seen(app))
    assert len(in_flight) == 5
    worker_a.proc.send_signal(signal.SIGKILL)
    assert worker_a.proc.wait(20) == -signal.SIGKILL
    r = admin_client(redis_server.url)
    held_by_a = r.xpending_range(STREAM, GROUP, "-", "+", 100, consumername="a")
    assert len(held_by_a) == 5
    spawn.worker(redis_server.url, app.address, "--consumer", "b", "--visibility-timeout", "1")
    gate.set()
    results = collect(hqm.port, ids)
    assert all(results[i].status == 200 for i in ids), results
    assert all(results[i].body.endswith(i.encode()) for i in ids)
    seen = ids_seen(app)
    assert set(ids) <= set(seen)
    twice = {i for i, n in seen.items() if n > 1}
    assert len(twice) <= len(in_flight)
    assert twice <= in_flight  # only what A held can have been delivered again
    assert max(seen.values()) <= 2
    assert wait_until(lambda: r.xpending(STREAM, GROUP)["pending"] == 0)
    assert r.xlen(STREAM) == 0


# --- 3. SIGTERM drains ------------------------------------------------------------


def test_sigterm_finishes_held_requests_and_leaves_nothing_pending(
    redis_server: RedisServer, app, spawn
):
    gate = threading.Event()
    app.respond = held(gate, done_target)
    hqm = spawn.proxy(app.address, redis_server.url)
    ids = enqueue(hqm.port, [b"/t/%d" % i for i in range(6)], connections=3)
    busy = spawn.worker(redis_server.url, app.address, "--consumer", "busy", "--concurrency", "3")
    assert wait_until(lambda: app.in_flight == 3)
    held_ids = set(ids_seen(app))
    busy.proc.send_signal(signal.SIGTERM)
    assert wait_until(lambda: logged(busy, "draining"))
    gate.set()  # the app answers only after SIGTERM reached the worker
    assert busy.proc.wait(20) == 0
    assert logged(busy, "worker stopped")
    r = admin_client(redis_server.url)
    assert r.xpending_range(STREAM, GROUP, "-", "+", 100, consumername="busy") == []
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    assert b"busy" not in {c["name"] for c in r.xinfo_consumers(STREAM, GROUP)}
    for request_id in held_ids:  # what it held was recorded
        assert poll_result(hqm.port, request_id).status == 200
    assert r.xlen(STREAM) == 3  # it stopped reading: the rest waits, undelivered
    # another worker takes the rest; --burst exits 0 once the queue is empty
    rest = spawn.worker(redis_server.url, app.address, "--burst")
    assert rest.proc.wait(20) == 0
    results = collect(hqm.port, ids)
    assert {results[i].status for i in ids} == {200}
    assert set(ids_seen(app).values()) == {1}


def test_the_engine_reading_answers_is_the_one_the_environment_names(
    redis_server: RedisServer, app, spawn
):
    """test.sh runs this module twice: by default (httptools reads the app's answers)
    and with HQM_PARSER=h11 (h11 reads them); proxy and worker say which one."""
    expected = "h11" if os.environ.get("HQM_PARSER") == "h11" else "httptools"
    worker = spawn.worker(redis_server.url, app.address)
    proxy_process = spawn.proxy(app.address, redis_server.url)
    assert (worker.info["parser"], proxy_process.info["parser"]) == (expected, expected)


def test_burst_worker_exits_0_on_an_empty_queue(redis_server: RedisServer, app, spawn):
    worker = spawn.worker(redis_server.url, app.address, "--burst")
    assert worker.proc.wait(20) == 0
    assert app.count() == 0


# --- 4. retries and dead letters ---------------------------------------------------


def test_503_twice_then_200_stores_the_200_with_its_attempts(redis_server: RedisServer, app, spawn):
    calls: Counter[bytes] = Counter()

    def flaky(seen: Seen) -> Answer:
        rid = seen.header(REQUEST_ID) or b""
        calls[rid] += 1
        if calls[rid] <= 2:
            return Answer(503, [(b"Retry-After", b"0")], b"busy")
        return Answer(200, [(b"X-Attempt", b"%d" % calls[rid])], b"finally")

    app.respond = flaky
    hqm = spawn.proxy(app.address, redis_server.url)
    worker = spawn.worker(redis_server.url, app.address, "--max-attempts", "5")
    accepted = request(hqm.port, b"POST", b"/job", body=b"x")
    assert accepted.status == 202
    request_id = accepted.json()["id"]
    result = poll_result(hqm.port, request_id)
    assert (result.status, result.body, result.header(b"X-Attempt")) == (200, b"finally", b"3")
    assert calls[request_id.encode()] == 3
    stored = admin_client(redis_server.url).get(KEYS.result(request_id))
    record = decode_response(stored)
    assert (record.status, record.body, record.attempts, record.error) == (
        200,
        b"finally",
        3,
        None,
    )
    text = metrics(worker)
    assert 'hqm_worker_retries_total{queue="default"} 2.0' in text
    assert 'hqm_worker_dead_letters_total{queue="default"} 0.0' in text


def test_app_down_dead_letters_then_replay_completes(redis_server: RedisServer, spawn):
    port = closed_port()
    upstream = f"127.0.0.1:{port}"
    hqm = spawn.proxy(upstream, redis_server.url)
    worker = spawn.worker(redis_server.url, upstream, "--max-retry-duration", "0.2")
    accepted = request(hqm.port, b"POST", b"/order?n=1", body=b"payload")
    request_id = accepted.json()["id"]
    result = poll_result(hqm.port, request_id)
    assert result.status == 502
    assert result.header(b"Content-Type") == b"application/json"
    error = result.json()["error"]
    assert "cannot connect" in error
    letters = dlq_json("list", redis_server.url)
    assert len(letters) == 1
    letter = letters[0]
    assert (letter["id"], letter["method"], letter["target"]) == (request_id, "POST", "/order?n=1")
    assert letter["attempts"] == 1  # a connection never made spends no attempt
    assert "cannot connect" in letter["error"]
    text = metrics(worker)
    assert 'hqm_worker_retries_total{queue="default"} 0.0' in text  # waited: no retry spent
    assert 'hqm_worker_dead_letters_total{queue="default"} 1.0' in text
    # the app comes up where it was down; a replay brings the request back
    app = Backend(done_target, port=port)
    try:
        replay = dlq("replay", "--redis", redis_server.url, "--all")
        assert replay.returncode == 0, replay.stderr
        assert "replayed 1 dead letter(s)" in replay.stdout
        result = poll_result(hqm.port, request_id)
        assert result.status == 200
        assert result.body == b"done /order?n=1 " + request_id.encode()
        assert app.count() == 1 and app.seen[0].body == b"payload"
        assert dlq_json("list", redis_server.url) == []
    finally:
        app.close()


def dlq(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``hqm dlq ARGS`` as a child process; ``stdin`` answers a confirmation prompt."""
    return subprocess.run(
        [sys.executable, "-m", "hqm", "dlq", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def dlq_json(command: str, redis_url: str) -> list[dict]:
    done = dlq(command, "--redis", redis_url, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


# --- 5. Redis down and back --------------------------------------------------------


def test_redis_outage_answers_503_and_both_sides_recover(app, spawn):
    server = RedisServer(appendonly=True).start()
    try:
        _redis_outage(server, app, spawn)
    finally:
        server.cleanup()


def _redis_outage(server: RedisServer, app: Backend, spawn: Spawner) -> None:
    gate = threading.Event()
    app.respond = held(gate, done_target)
    hqm = spawn.proxy(app.address, server.url)
    worker = spawn.worker(
        server.url, app.address, "--concurrency", "4", "--visibility-timeout", "2"
    )
    before = enqueue(hqm.port, [b"/before/%d" % i for i in range(30)], connections=8)
    assert wait_until(lambda: app.in_flight == 4)  # 4 at the app, 26 in the stream
    server.stop()
    # the app answers while Redis is down: the worker cannot record, the entries stay
    # pending and are redelivered later, never lost
    gate.set()
    assert wait_until(lambda: app.in_flight == 0)
    statuses = Counter(request(hqm.port, b"POST", b"/during", body=b"x").status for _ in range(20))
    assert statuses == {503: 20}
    refused = request(hqm.port, b"POST", b"/during", body=b"x")
    assert refused.header(b"Retry-After") is not None
    assert refused.json()["error"]
    assert request(hqm.admin_port, b"GET", b"/readyz").status == 503
    assert request(worker.admin_port, b"GET", b"/readyz").status == 503
    assert request(hqm.admin_port, b"GET", b"/healthz").status == 200
    server.restart()  # same port, same dir: the AOF brings the stream back
    assert wait_until(lambda: request(hqm.admin_port, b"GET", b"/readyz").status == 200)
    assert wait_until(lambda: request(worker.admin_port, b"GET", b"/readyz").status == 200)
    after = request(hqm.port, b"POST", b"/after", body=b"y")
    assert after.status == 202  # the proxy reconnected by itself
    results = collect(hqm.port, [*before, after.json()["id"]], timeout=30)
    assert {r.status for r in results.values()} == {200}
    assert all(results[i].body.endswith(i.encode()) for i in before)
    assert set(before) <= set(ids_seen(app))
    assert worker.proc.poll() is None and hqm.proc.poll() is None  # never restarted


# --- 6. backend protection -------------------------------------------------------


def test_concurrency_is_a_hard_cap_and_is_reached(redis_server: RedisServer, app, spawn):
    four = threading.Event()

    def service(seen: Seen) -> Answer:
        if app.in_flight >= 4:
            four.set()
        assert four.wait(20), "never 4 in flight"
        time.sleep(0.01)  # service time of the app
        return done_target(seen)

    app.respond = service
    hqm = spawn.proxy(app.address, redis_server.url)
    ids = enqueue(hqm.port, [b"/c/%d" % i for i in range(40)], connections=8)
    worker = spawn.worker(redis_server.url, app.address, "--concurrency", "4", "--burst")
    assert worker.proc.wait(30) == 0  # --burst: exits 0 once the queue is empty
    assert app.count() == 40
    assert app.peak == 4
    results = collect(hqm.port, ids)
    assert {r.status for r in results.values()} == {200}


def test_rate_limit_is_an_upper_bound_on_what_the_app_sees(redis_server: RedisServer, app, spawn):
    rate = 50
    app.respond = lambda seen: Answer(200, [], b"ok")
    hqm = spawn.proxy(app.address, redis_server.url)
    worker = spawn.worker(redis_server.url, app.address, "--rate", str(rate), "--concurrency", "8")
    # The worker is up with an empty queue: its limiter has let nothing through yet, so
    # everything the app sees below was let through after ``started``.
    started = time.monotonic()
    enqueue(hqm.port, [b"/r/%d" % i for i in range(600)])
    assert wait_until(lambda: app.count() >= 3 * rate, timeout=60)
    seen = app.count()
    window = time.monotonic() - started  # ends after the count was taken
    # The limiter spaces requests 1/rate apart with no burst allowance: in any window of
    # W seconds, at most rate * W + 1. A slow machine only makes ``seen`` smaller.
    assert seen <= rate * window + 1, f"{seen} requests in {window:.2f} s"
    assert worker.terminate() == 0


# --- 7. wait mode across processes ----------------------------------------------


def test_wait_mode_across_two_proxies_and_two_workers(redis_server: RedisServer, app, spawn):
    def echo_token(seen: Seen) -> Answer:
        token = seen.header(b"X-Token") or b"none"
        return Answer(200, [(b"X-Token", token)], b"token=" + token + b" " + seen.target)

    app.respond = echo_token
    proxies = [spawn.proxy(app.address, redis_server.url) for _ in range(2)]
    for name in ("wa", "wb"):
        spawn.worker(redis_server.url, app.address, "--consumer", name)

    def call(n: int) -> tuple[int, Response]:
        token = b"tok-%d" % n
        port = proxies[n % 2].port
        headers = [(b"Prefer", b"wait=10"), (b"X-Token", token)]
        return n, request(port, b"GET", b"/w/%d" % n, headers)

    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(call, range(300)))
    request_ids = set()
    for n, response in answers:
        assert response.status == 200, (n, response)
        assert response.body == b"token=tok-%d /w/%d" % (n, n)
        assert response.header(b"X-Token") == b"tok-%d" % n
        assert response.header(b"Preference-Applied") == b"wait=10"
        request_ids.add(response.header(REQUEST_ID))
    assert len(request_ids) == 300
    for process in proxies:  # both proxies answered from the result, not a 202
        assert 'hqm_proxy_requests_total{mode="wait",outcome="answered"} 150.0' in metrics(process)


# --- 8. the stream stays bounded --------------------------------------------------


#: KEYS stream -> {XLEN, pending entries of the group, entries after its last-delivered-id}
_BACKLOG_SCRIPT = """
local info = redis.call('XINFO', 'GROUPS', KEYS[1])[1]
local fields = {}
for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
local undelivered = #redis.call('XRANGE', KEYS[1], '(' .. fields['last-delivered-id'], '+')
return {redis.call('XLEN', KEYS[1]), fields['pending'], undelivered}
"""


def test_stream_length_stays_bounded_over_20000_requests(redis_server: RedisServer, app, spawn):
    app.respond = lambda seen: Answer(200, [], b"ok")
    hqm = spawn.proxy(app.address, redis_server.url)
    for name in ("s1", "s2"):
        spawn.worker(redis_server.url, app.address, "--consumer", name, "--concurrency", "32")
    r = admin_client(redis_server.url)
    # (stream length, pending, not yet delivered), read atomically in one script
    samples: list[tuple[int, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        sampler = admin_client(redis_server.url)
        read = sampler.register_script(_BACKLOG_SCRIPT)
        while not stop.is_set():
            length, pending, undelivered = read(keys=[STREAM])
            samples.append((length, pending, undelivered))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    batch, total = 2000, 0
    try:
        for round_ in range(10):
            enqueue(hqm.port, [b"/b/%d/%d" % (round_, i) for i in range(batch)])
            total += batch
            assert wait_until(lambda t=total: app.count() >= t, timeout=60)
            assert wait_until(lambda: r.xlen(STREAM) == 0), r.xlen(STREAM)
    finally:
        stop.set()
        sampler.join(5)
    assert app.count() == 20_000
    assert len(samples) > 10 and max(length for length, _, _ in samples) > 0  # while busy
    # At every moment the stream held exactly the backlog: entries not yet delivered
    # and entries delivered but not finished; an entry leaves it in the same step that
    # acknowledges it, never later (the waits above alone would let finished entries
    # linger for a while, as long as they were gone by the end of each round).
    lingering = [s for s in samples if s[0] != s[1] + s[2]]
    assert lingering == [], lingering[:5]
    info = r.xinfo_stream(STREAM)
    assert info["length"] == 0
    assert info["entries-added"] == 20_000
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    assert set(ids_seen(app).values()) == {1}
