"""``hqm worker`` consuming several queues: strict priority, weights, burst mode,
metrics per queue, no busy polling while idle. Real redis-server, real worker
processes, a real app that logs the order requests arrive in."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hqm.cli.main import main
from hqm.proto.envelope import RequestRecord, ResponseRecord
from hqm.queue.base import DeadLetter
from hqm.queue.redis_streams import RedisQueue
from hqm.worker.queues import ClaimOrder, QueueSet, QueueShare, parse_queue_set
from tests.redis_server import RedisServer, command, redis_server
from tests.support import DEADLINE_S, Answer, Backend, HqmProcess, Seen, request, wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest


# --- helpers (also used by tests/test_worker_upstreams.py) ---------------------------


def record(
    target: bytes,
    *,
    method: bytes = b"GET",
    headers: tuple[tuple[bytes, bytes], ...] = (),
    **fields: Any,
) -> RequestRecord:
    """A request as a proxy (or its route) would have stored it."""
    return RequestRecord(
        id=secrets.token_hex(16),
        method=method,
        target=target,
        headers=((b"Host", b"app.test"), *headers),
        received_at=time.time(),
        **fields,
    )


def on_queue(url: str, name: str, action: Callable[[RedisQueue], Any]) -> Any:
    """Run ``action`` against queue ``name`` (a RedisQueue of its own, closed after)."""

    async def run() -> Any:
        queue = RedisQueue(url, name)
        try:
            await queue.start()
            return await action(queue)
        finally:
            await queue.close()

    return asyncio.run(run())


def enqueue(url: str, name: str, records: list[RequestRecord]) -> None:
    async def put(queue: RedisQueue) -> None:
        for one in records:  # in order: one batch per loop turn, XADDed as given
            await queue.enqueue(one)

    on_queue(url, name, put)


def results(url: str, name: str, records: list[RequestRecord]) -> list[ResponseRecord | None]:
    async def get(queue: RedisQueue) -> list[ResponseRecord | None]:
        return [await queue.fetch_result(one.id) for one in records]

    return on_queue(url, name, get)


def dead_letters(url: str, name: str) -> list[DeadLetter]:
    return on_queue(url, name, lambda queue: queue.dead_letters(1000))


class Workers:
    """Starts ``hqm worker`` processes; kills what still runs at teardown."""

    def __init__(self) -> None:
        self.procs: list[HqmProcess] = []

    def start(self, url: str, upstream: str, *extra: str) -> HqmProcess:
        args = ["worker", "--redis", url, "--upstream", upstream, "--admin", "127.0.0.1:0"]
        process = HqmProcess(*args, "--retry-base", "0.05", "--retry-max", "0.1", *extra)
        self.procs.append(process)
        return process.wait_ready()

    def burst(self, url: str, upstream: str, *extra: str) -> HqmProcess:
        """A --burst worker, run until it exits 0 (every queue empty)."""
        process = self.start(url, upstream, "--burst", *extra)
        code = process.proc.wait(DEADLINE_S * 3)
        assert code == 0, process.log()
        return process

    def kill_all(self) -> None:
        for process in self.procs:
            process.kill()


@pytest.fixture
def workers() -> Iterator[Workers]:
    spawned = Workers()
    yield spawned
    spawned.kill_all()


@pytest.fixture
def app() -> Iterator[Backend]:
    backend = Backend(lambda seen: Answer(200, body=b"ok " + seen.target))
    yield backend
    backend.close()


def arrivals(app: Backend) -> list[str]:
    """The queue each request the app got came from (the target's first segment)."""
    return [seen.target.split(b"/")[1].decode() for seen in app.seen]


def metrics(process: HqmProcess) -> str:
    response = request(process.admin_port, b"GET", b"/metrics")
    assert response.status == 200
    return response.body.decode()


def sample(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text ``text`` (0 when absent; labels written sorted,
    as the client writes them)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- --queue: the forms and the order of claims ---------------------------------------


def test_queue_forms_priority_weights_and_the_ambiguous_mix():
    assert parse_queue_set("default") == QueueSet.single("default")
    assert parse_queue_set(("reports", "default")) == QueueSet(
        (QueueShare("reports"), QueueShare("default"))
    )
    three_one = QueueSet((QueueShare("reports", 3), QueueShare("default", 1)), weighted=True)
    assert parse_queue_set("reports=3,default=1") == three_one
    assert parse_queue_set(["reports=3", "default"]) == three_one  # after a weight: 1
    assert str(three_one) == "reports=3,default=1" and three_one.weights == (3, 1)
    assert parse_queue_set(("reports", "default")).weights is None
    for bad, reason in [
        ("default,reports=3", "has no weight but 'reports' after it"),
        ("a,a", "given twice"),
        ("a=0", "integer 1-1000"),
        ("a=x", "integer 1-1000"),
        ("a,,b", "empty queue name"),
        (["a", 7], "a queue name or a list"),
    ]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            parse_queue_set(bad)


def _check(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["config", "check", "--json", *args], env=env or {})
    return result.exit_code, result.output


def test_queue_by_flags_environment_and_file(tmp_path: Path):
    base = ["worker", "--upstream", "a:1", "--redis", "redis://r:1/0"]
    path = tmp_path / "hqm.toml"
    path.write_text('[worker]\nqueue = ["reports=3", "default"]\n')
    for args, env in [
        ([*base, "--queue", "reports=3", "--queue", "default"], {}),
        (base, {"HQM_WORKER_QUEUE": "reports=3,default=1"}),
        ([*base, "--config", str(path)], {}),
    ]:
        code, out = _check(args, env)
        assert code == 0, out
        [row] = [row for row in json.loads(out)["worker"] if row["option"] == "queue"]
        assert row["value"] == "reports=3,default=1", row
    code, out = _check([*base, "--queue", "default", "--queue", "reports=3"])
    assert code == 2 and "Error: --queue: 'default' has no weight" in out, out
    code, out = _check(["proxy", "--upstream", "a:1", "--queue", "a,b"])  # one queue only
    assert code == 2 and "Error: --queue: one queue name" in out, out


def test_claim_order_shares_by_weight_and_an_idle_queue_rejoins_level():
    order = ClaimOrder(["reports", "default"], [3, 1])
    got = {"reports": 0, "default": 0}
    for _ in range(400):
        [(name, count)] = order.split(1, ["reports", "default"])
        order.claimed(name, count)
        got[name] += count
    assert got == {"reports": 300, "default": 100}
    assert dict(order.split(8, ["reports", "default"])) == {"reports": 6, "default": 2}
    assert order.split(8, ["default"]) == [("default", 8)]  # the idle one's share
    # reports idle while default took 1000 more: back, it does not get everything
    order.claimed("default", 1000)
    order.resumed("reports", ["default"])
    split = dict(order.split(8, ["reports", "default"]))
    assert split["default"] >= 1, split
    priority = ClaimOrder(["reports", "default"])
    assert priority.split(5, ["reports", "default"]) == [("reports", 5)]


# --- real workers ---------------------------------------------------------------------


def test_priority_replays_all_of_the_first_queue_before_the_second(
    redis_server: RedisServer, app: Backend, workers: Workers
):
    url = redis_server.url
    # the second queue filled first: arrival order is not what decides
    enqueue(url, "default", [record(b"/default/%d" % i) for i in range(30)])
    enqueue(url, "reports", [record(b"/reports/%d" % i) for i in range(30)])
    workers.burst(
        url, app.address, "--queue", "reports", "--queue", "default", "--concurrency", "1"
    )
    assert arrivals(app) == ["reports"] * 30 + ["default"] * 30


def test_weights_share_claims_while_both_queues_have_work(
    redis_server: RedisServer, app: Backend, workers: Workers
):
    url = redis_server.url
    enqueue(url, "reports", [record(b"/reports/%d" % i) for i in range(400)])
    enqueue(url, "default", [record(b"/default/%d" % i) for i in range(400)])
    workers.burst(url, app.address, "--queue", "reports=3,default=1", "--concurrency", "4")
    seen = arrivals(app)
    assert len(seen) == 800
    # both have work through the first 400 arrivals (reports runs out after ~533)
    first = seen[:400]
    assert 280 <= first.count("reports") <= 320, first.count("reports")
    assert first.count("default") >= 80  # weights never starve a queue


def test_an_idle_queues_share_goes_to_the_others(
    redis_server: RedisServer, app: Backend, workers: Workers
):
    all_in = threading.Event()

    def respond(seen: Seen) -> Answer:
        # Held until 4 are in flight at once (then never again): weight 1 of 4 still
        # gets every slot while the weight-3 queue is empty.
        if not all_in.is_set() and wait_until(lambda: app.in_flight >= 4, timeout=10):
            all_in.set()
        return Answer(200)

    app.respond = respond
    url = redis_server.url
    enqueue(url, "default", [record(b"/default/%d" % i) for i in range(20)])
    workers.burst(url, app.address, "--queue", "reports=3,default=1", "--concurrency", "4")
    assert app.peak == 4 and app.count() == 20


def test_burst_exits_once_every_queue_is_empty(
    redis_server: RedisServer, app: Backend, workers: Workers
):
    url = redis_server.url
    enqueue(url, "c", [record(b"/c/%d" % i) for i in range(10)])  # only the last has work
    process = workers.burst(url, app.address, "--queue", "a,b,c")
    assert sorted(arrivals(app)) == ["c"] * 10
    assert process.info["queues"] == "a,b,c"


def test_metrics_are_labelled_by_queue(redis_server: RedisServer, app: Backend, workers: Workers):
    first_try: set[bytes] = set()

    def respond(seen: Seen) -> Answer:
        if seen.target == b"/default/retry" and seen.target not in first_try:
            first_try.add(seen.target)
            return Answer(503)  # retried once
        return Answer(200)

    app.respond = respond
    url = redis_server.url
    worker = workers.start(url, app.address, "--queue", "reports", "--queue", "default")
    enqueue(url, "reports", [record(b"/reports/%d" % i) for i in range(3)])
    enqueue(
        url,
        "default",
        [record(b"/default/ok"), record(b"/default/retry"), record(b"/x", upstream="nowhere")],
    )

    def counted() -> bool:
        text = metrics(worker)
        done = sample(text, "hqm_worker_processed_total", outcome="done", queue="default")
        return done == 2 and sample(text, "hqm_worker_dead_letters_total", queue="default") == 1

    assert wait_until(counted), metrics(worker)
    text = metrics(worker)
    assert sample(text, "hqm_worker_processed_total", outcome="done", queue="reports") == 3
    assert sample(text, "hqm_worker_processed_total", outcome="dead", queue="reports") == 0
    assert sample(text, "hqm_worker_processed_total", outcome="dead", queue="default") == 1
    assert sample(text, "hqm_worker_retries_total", queue="default") == 1
    assert sample(text, "hqm_worker_retries_total", queue="reports") == 0
    assert sample(text, "hqm_worker_dead_letters_total", queue="reports") == 0
    seconds = "hqm_worker_app_seconds_count"
    assert sample(text, seconds, status_class="2xx", queue="reports") == 3
    assert sample(text, seconds, status_class="2xx", queue="default") == 2
    assert sample(text, seconds, status_class="5xx", queue="default") == 1
    assert sample(text, "hqm_worker_queue_wait_seconds_count", queue="reports") == 3


def _commands(port: int) -> int:
    info = command(port, "INFO", "stats").decode()
    return int(re.search(r"total_commands_processed:(\d+)", info).group(1))


def test_an_idle_worker_blocks_on_every_queue_instead_of_polling(
    redis_server: RedisServer, app: Backend, workers: Workers
):
    url = redis_server.url
    workers.start(url, app.address, "--queue", "a", "--queue", "b", "--queue", "c")
    assert wait_until(
        lambda: b"cmdstat_xreadgroup" in command(redis_server.port, "INFO", "commandstats")
    )
    before = _commands(redis_server.port)
    time.sleep(2.0)  # a measuring window, not a wait for an outcome
    during = _commands(redis_server.port) - before
    # A blocking read per queue per second and maintenance (promote, reclaim) per
    # queue per second: some 10 commands a second. A polling loop makes thousands.
    assert during < 100, during
    # an entry on any queue, the last included, is seen by its blocking read
    enqueue(url, "c", [record(b"/c/late")])
    assert wait_until(lambda: app.count() == 1)
    assert arrivals(app) == ["c"]
