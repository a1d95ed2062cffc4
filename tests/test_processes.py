"""``--processes N``: a supervisor and N children on real sockets (SO_REUSEPORT), a
real redis-server, a real app. Which child answered is read from each child's own
admin port (its /metrics), which child is which from the logs (``process_index``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis

from hqm.queue.keys import QueueKeys
from tests.redis_server import RedisServer, redis_server
from tests.support import (
    DEADLINE_S,
    Answer,
    Backend,
    HqmProcess,
    Seen,
    echo_target,
    poll_result,
    proxy,
    request,
    wait_until,
)

__all__ = ["redis_server"]  # the fixture, imported for pytest

KEYS = QueueKeys("default")
#: Requests sent per check: with two children, the chance one of them gets none of
#: them (the kernel spreads connections by their address hash) is 2 in 2^40.
REQUESTS = 40


def records(hqm: HqmProcess, msg: str) -> list[dict]:
    out = []
    for line in list(hqm.lines):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("msg") == msg:
                out.append(record)
    return out


def listening(hqm: HqmProcess) -> dict[int, dict]:
    """The latest "listening" line of each child, by index."""
    return {r["process_index"]: r for r in records(hqm, "listening")}


def pids(hqm: HqmProcess) -> dict[int, int]:
    return {r["process_index"]: r["pid"] for r in records(hqm, "child started")}


def answered(admin: str) -> float:
    """hqm_proxy_requests of the child on this admin address."""
    text = request(int(admin.rsplit(":", 1)[1]), b"GET", b"/metrics").body.decode()
    samples = [line for line in text.splitlines() if line.startswith("hqm_proxy_requests_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def send(port: int, count: int = REQUESTS) -> None:
    for n in range(count):  # (each on a new connection, so each may reach either child)
        assert request(port, b"POST", b"/job/%d" % n, body=b"x").status == 202


def stop_children(hqm: HqmProcess) -> None:
    hqm.kill()  # the supervisor; then any child it could not stop
    for pid in pids(hqm).values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(redis_server: RedisServer, backend: Backend) -> Iterator[HqmProcess]:
    hqm = HqmProcess(
        "proxy",
        *("--processes", "2", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
        *("--upstream", backend.address, "--redis", redis_server.url),
    ).wait_ready()
    assert wait_until(lambda: len(listening(hqm)) == 2), hqm.log()
    yield hqm
    stop_children(hqm)


def test_both_children_serve_the_one_port(supervised: HqmProcess):
    children = listening(supervised)
    assert {r["listen"] for r in children.values()} == {str(supervised.info["listen"])}
    assert len({r["admin"] for r in children.values()}) == 2  # each its own /metrics
    send(supervised.port)
    counts = {i: 0.0 for i in children}

    def all_counted() -> bool:
        counts.update({i: answered(r["admin"]) for i, r in children.items()})
        return sum(counts.values()) == REQUESTS

    assert wait_until(all_counted), counts
    assert all(count > 0 for count in counts.values()), counts


def test_a_killed_child_is_restarted_and_requests_keep_being_answered(supervised: HqmProcess):
    killed = pids(supervised)[0]
    os.kill(killed, signal.SIGKILL)
    assert wait_until(lambda: any(r["pid"] == killed for r in records(supervised, "child exited")))
    send(supervised.port)  # the other child answers meanwhile
    assert wait_until(lambda: pids(supervised)[0] != killed), supervised.log()
    assert wait_until(lambda: len(records(supervised, "listening")) == 3), supervised.log()
    exited = next(r for r in records(supervised, "child exited") if r["pid"] == killed)
    assert exited["exit_code"] == 128 + signal.SIGKILL
    assert records(supervised, "restarting child")[0]["process_index"] == 0
    restarted = listening(supervised)[0]
    send(supervised.port)
    assert wait_until(lambda: answered(restarted["admin"]) > 0)
    assert supervised.terminate() == 0, supervised.log()


def test_sigterm_drains_every_child_and_exits_0(supervised: HqmProcess):
    send(supervised.port, 4)
    assert supervised.terminate() == 0, supervised.log()
    assert {r["process_index"] for r in records(supervised, "stopped")} == {0, 1}
    assert records(supervised, "supervisor stopped")[0]["exit_codes"] == [0, 0]
    with pytest.raises(ConnectionRefusedError):  # no child (nor the reservation) is left
        socket.create_connection(("127.0.0.1", supervised.port), timeout=DEADLINE_S).close()


def test_burst_workers_drain_the_queue_as_distinct_consumers(redis_server: RedisServer):
    gate = threading.Event()

    def held(seen: Seen) -> Answer:
        gate.wait(DEADLINE_S)
        return echo_target(seen)

    app = Backend(held)
    front = proxy(app.address, "--redis", redis_server.url)
    worker = None
    try:
        ids = [request(front.port, b"POST", b"/w/%d" % n).json()["id"] for n in range(6)]
        worker = HqmProcess(
            "worker",
            *("--processes", "2", "--burst", "--concurrency", "1", "--consumer", "w"),
            *("--admin", "127.0.0.1:0", "--upstream", app.address, "--redis", redis_server.url),
        ).wait_ready()
        client = redis.Redis.from_url(redis_server.url)
        seen: set[str] = set()

        def both_consume() -> bool:  # each holds an entry the app has not answered yet
            listed = client.xinfo_consumers(KEYS.stream, KEYS.group)
            seen.update(c["name"].decode() for c in listed if c["pending"] > 0)
            return seen == {"w-0", "w-1"}

        assert wait_until(both_consume), (seen, worker.log())
        gate.set()
        assert worker.proc.wait(DEADLINE_S) == 0, worker.log()
        assert {r["consumer"] for r in records(worker, "worker started")} == {"w-0", "w-1"}
        assert [poll_result(front.port, i).status for i in ids] == [200] * len(ids)
        assert client.xinfo_consumers(KEYS.stream, KEYS.group) == []  # each let go at exit
    finally:
        gate.set()
        if worker is not None:
            stop_children(worker)
        front.kill()
        app.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["proxy", "--processes", "0"], "Error: --processes: must be >= 1"),
        (["proxy", "--processes", "x"], "Error: --processes: expected an integer"),
        (["worker", "--processes", "0", "--redis", "redis://127.0.0.1:1/0"], "Error: --processes"),
        (["proxy", "--processes", "2"], "Error: --processes 2: needs --redis"),
    ],
)
def test_bad_process_counts_exit_2(args: list[str], message: str):
    done = subprocess.run(
        [sys.executable, "-m", "hqm", *args, "--upstream", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
