"""Named upstreams and per-request limits: an entry reaches the app it names, one
naming an app this worker was not given is dead-lettered and never dialled, one app
down does not stop the others; a record's ``timeout_s`` and ``max_attempts`` replace
the worker's own. Real redis-server, worker processes and apps."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqm.queue.base import Status
from hqm.queue.keys import GROUP, QueueKeys
from tests.redis_server import RedisServer, command, free_port, redis_server
from tests.support import Answer, Backend, Seen, wait_until
from tests.test_worker_queues import (
    Workers,
    dead_letters,
    enqueue,
    on_queue,
    record,
    results,
    workers,
)

__all__ = ["redis_server", "workers"]  # fixtures, imported for pytest


def ok(seen: Seen) -> Answer:
    return Answer(200, body=b"ok " + seen.target)


@pytest.fixture
def apps() -> Iterator[dict[str, Backend]]:
    backends = {name: Backend(ok) for name in ("default", "a", "b")}
    yield backends
    for backend in backends.values():
        backend.close()


def config(tmp_path: Path, **upstreams: str) -> str:
    path = tmp_path / "hqm.toml"
    lines = ["[upstreams]", *(f'{name} = "{address}"' for name, address in upstreams.items())]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def targets(app: Backend) -> list[bytes]:
    return sorted(seen.target for seen in app.seen)


def states(url: str, name: str, records) -> list[Status | None]:
    async def read(queue):
        found = [await queue.state(one.id) for one in records]
        return [state.status if state else None for state in found]

    return on_queue(url, name, read)


def test_each_entry_reaches_the_upstream_it_names(
    redis_server: RedisServer, apps: dict[str, Backend], workers: Workers, tmp_path: Path
):
    url = redis_server.url
    path = config(tmp_path, a=apps["a"].address, b=apps["b"].address)
    batch = [record(b"/to/%s/%d" % (n.encode(), i), upstream=n) for n in apps for i in range(3)]
    enqueue(url, "default", batch)
    workers.burst(url, apps["default"].address, "--config", path)
    for name, app in apps.items():
        assert targets(app) == [b"/to/%s/%d" % (name.encode(), i) for i in range(3)], name
    assert [r.status if r else None for r in results(url, "default", batch)] == [200] * 9


def test_an_unknown_upstream_is_dead_lettered_and_never_dialled(
    redis_server: RedisServer, apps: dict[str, Backend], workers: Workers, tmp_path: Path
):
    # A listener nobody configured: a name that looks like its address must not reach it.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        url = redis_server.url
        path = config(tmp_path, a=apps["a"].address)
        strangers = [record(b"/ssrf", upstream=address), record(b"/other", upstream="x")]
        enqueue(url, "default", [*strangers, record(b"/fine", upstream="a")])
        workers.burst(url, apps["default"].address, "--config", path)
        letters = {letter.record.id: letter for letter in dead_letters(url, "default")}
        assert set(letters) == {one.id for one in strangers}
        for one in strangers:
            letter = letters[one.id]
            assert letter.error == f"upstream {one.upstream!r} is not configured on this worker"
            assert letter.attempts == 0
        with pytest.raises(BlockingIOError):  # nobody ever connected
            listener.accept()
        assert targets(apps["a"]) == [b"/fine"] and apps["default"].count() == 0
    finally:
        listener.close()


def test_one_upstream_down_does_not_stop_the_others(
    redis_server: RedisServer, apps: dict[str, Backend], workers: Workers, tmp_path: Path
):
    url = redis_server.url
    down_port = free_port()
    path = config(tmp_path, up=apps["a"].address, down=f"127.0.0.1:{down_port}")
    # In one queue: entries for the app that is down among those for the one that is up.
    waiting = [record(b"/down/%d" % i, upstream="down") for i in range(2)]
    mixed = [record(b"/up/%d" % i, upstream="up") for i in range(10)]
    mixed[3:3] = waiting
    # The first queue (priority) all for the app that is down: more of them than a queue
    # may have parked (4 x --concurrency); claiming goes on from the others.
    stuck = [record(b"/down/first/%d" % i, upstream="down") for i in range(30)]
    later = [record(b"/up/second/%d" % i, upstream="up") for i in range(5)]
    enqueue(url, "mixed", mixed)
    enqueue(url, "first", stuck)
    enqueue(url, "second", later)
    args = ("--config", path, "--concurrency", "2", "--queue", "first,mixed,second")
    workers.start(url, apps["default"].address, *args)
    up = [one for one in mixed if one.upstream == "up"]
    assert wait_until(lambda: apps["a"].count() == 15), targets(apps["a"])
    assert wait_until(
        lambda: (
            states(url, "mixed", up) == [Status.DONE] * 10
            and states(url, "second", later) == [Status.DONE] * 5
        )
    )
    # the first queue is not claimed from past 4 x --concurrency parked (plus what was
    # on its way when the cap was reached): memory stays bounded
    pending = command(redis_server.port, "XPENDING", QueueKeys("first").stream, GROUP)
    assert 8 <= int(pending.split(b"\r\n")[1][1:]) <= 8 + 2, pending
    # the others wait for their app, not dead-lettered, attempts not spent
    for name, entries in (("mixed", waiting), ("first", stuck)):
        assert Status.DONE not in states(url, name, entries)
        assert dead_letters(url, name) == []
    back = Backend(ok, port=down_port)  # the app comes back: its requests go
    try:
        assert wait_until(
            lambda: (
                states(url, "mixed", waiting) + states(url, "first", stuck) == [Status.DONE] * 32
            ),
            timeout=30,
        )
        assert sorted(targets(back)) == sorted(one.target for one in [*waiting, *stuck])
    finally:
        back.close()


def test_a_records_timeout_and_max_attempts_replace_the_workers(
    redis_server: RedisServer, workers: Workers
):
    hold = threading.Event()  # never set: /slow is held past every timeout below

    def respond(seen: Seen) -> Answer:
        if seen.target.startswith(b"/slow"):
            hold.wait(3)
            return Answer(200)
        if seen.target.startswith(b"/busy"):
            return Answer(503)
        if seen.target.startswith(b"/gateway"):
            return Answer(502)
        return Answer(200)

    app = Backend(respond)
    key = ((b"Idempotency-Key", b"k-1"),)
    slow_post = record(b"/slow/post", method=b"POST", timeout_s=0.2)
    slow_keyed = record(b"/slow/keyed", method=b"POST", headers=key, timeout_s=0.2, max_attempts=2)
    busy_two = record(b"/busy/two", max_attempts=2)
    busy_default = record(b"/busy/default")  # 0: the worker's --max-attempts 3
    gateway = record(b"/gateway/post", method=b"POST")
    gateway_keyed = record(b"/gateway/keyed", method=b"POST", headers=key, max_attempts=2)
    batch = [slow_post, slow_keyed, busy_two, busy_default, gateway, gateway_keyed]
    try:
        url = redis_server.url
        enqueue(url, "default", batch)
        # (--read-timeout 30: only the records' own 0.2 s can end /slow in time)
        workers.burst(url, app.address, "--read-timeout", "30", "--max-attempts", "3")
        calls = {one.target: app.count(lambda s, t=one.target: s.target == t) for one in batch}
        assert calls == {
            b"/slow/post": 1,  # timed out after sending, not idempotent: not asked again
            b"/slow/keyed": 2,  # Idempotency-Key: retried, up to its own max_attempts
            b"/busy/two": 2,
            b"/busy/default": 3,
            b"/gateway/post": 1,  # a 502 to a POST is the answer
            b"/gateway/keyed": 2,  # ... unless it carries an Idempotency-Key
        }
        letters = {letter.record.target: letter for letter in dead_letters(url, "default")}
        assert "within 0.2 s" in letters[b"/slow/post"].error
        assert "(attempt 1)" in letters[b"/slow/post"].error
        assert "within 0.2 s; gave up after 2 attempts" in letters[b"/slow/keyed"].error
        assert letters[b"/busy/two"].error == "app answered 503; gave up after 2 attempts"
        assert letters[b"/busy/default"].error == "app answered 503; gave up after 3 attempts"
        assert letters[b"/gateway/keyed"].attempts == 2
        [answer] = results(url, "default", [gateway])
        assert answer is not None and (answer.status, answer.error) == (502, None)
    finally:
        hold.set()
        app.close()
