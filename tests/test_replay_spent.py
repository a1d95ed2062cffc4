"""HQM-Replay at the proxy (docs/architecture.md §6, §13): a token lets exactly one
request through, once; anything else carrying one is refused with 403 (never queued,
never passed); reject routes apply to replays too. Real hqm processes, real sockets,
a real redis-server; the spent tokens remembered in Redis and in the embedded queue.
And the worker's side: every write of a replay, retries included, carries a fresh one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqm.proto.limits import MAX_SPENT_TOKENS
from hqm.proto.replay_token import HEADER, REMEMBER_S, parse, sign
from hqm.queue.base import QueueFull
from hqm.queue.keys import QueueKeys
from hqm.queue.memory import MemoryQueue
from tests.redis_server import redis_server
from tests.support import Answer, Backend, HandClock, Seen, proxy, request
from tests.test_upstream import OK, App, read_request
from tests.test_worker_redis import STREAM, Spawner, admin_client, spawn

__all__ = ["redis_server", "spawn"]  # fixtures, imported for pytest

KEY = b"replay-secret-of-the-test-32-bytes"
RID = "0123456789abcdef0123456789abcdef"
ROUTES = """
[[routes]]
name = "internal"
path = "/internal/*"
action = "reject"
status = 404
"""


def token(method: bytes, target: bytes, body: bytes = b"", minted: float | None = None) -> bytes:
    now = time.time() if minted is None else minted
    return sign(KEY, RID, now, method=method, target=target, body=body)


def send(port: int, method: bytes, target: bytes, value: bytes, body: bytes = b""):
    return request(port, method, target, [(b"Host", b"app"), (HEADER, value)], body)


@pytest.fixture
def app() -> Iterator[Backend]:
    backend = Backend()
    yield backend
    backend.close()


@pytest.fixture(params=["embedded", "redis"])
def guarded(request: pytest.FixtureRequest, tmp_path: Path, app: Backend) -> Iterator:
    """A proxy with a replay key and a reject route, on either queue."""
    (tmp_path / "key").write_bytes(KEY)
    (tmp_path / "hqm.toml").write_text(ROUTES)
    extra = ["--replay-key-file", str(tmp_path / "key"), "--config", str(tmp_path / "hqm.toml")]
    server = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        extra += ["--redis", server.url]
    hqm = proxy(app.address, *extra, "--max-body", "1024")
    yield hqm, server
    hqm.terminate()


def _refused(response, reason: str) -> None:
    assert response.status == 403, response
    assert response.json() == {"error": f"HQM-Replay refused: {reason}", "route": "replay"}


def test_a_captured_token_is_worth_nothing(guarded, app: Backend) -> None:
    hqm, server = guarded
    captured = token(b"DELETE", b"/orders/7")
    first = send(hqm.port, b"DELETE", b"/orders/7", captured)
    assert first.status == 200 and first.body == b"you asked for /orders/7"
    # the same request again, 20 times: spent by the first
    for _ in range(20):
        _refused(send(hqm.port, b"DELETE", b"/orders/7", captured), "already used")
    # any other request with it: not signed for it
    for method, target, body in (
        (b"DELETE", b"/orders/8", b""),
        (b"GET", b"/orders/7", b""),
        (b"DELETE", b"/orders/7?all=1", b""),
        (b"DELETE", b"/orders/7", b"x"),
        (b"POST", b"/admin/delete-all", b"{}"),
    ):
        _refused(send(hqm.port, method, target, captured, body), "not signed for this request")
    # a fresh token, tried on other requests first: still good for its own, once
    fresh = token(b"PUT", b"/orders/9", b"v=1")
    _refused(send(hqm.port, b"PUT", b"/orders/9", fresh, b"v=2"), "not signed for this request")
    _refused(send(hqm.port, b"PUT", b"/orders/10", fresh, b"v=1"), "not signed for this request")
    assert send(hqm.port, b"PUT", b"/orders/9", fresh, b"v=1").status == 200
    _refused(send(hqm.port, b"PUT", b"/orders/9", fresh, b"v=1"), "already used")
    # expired, from the future, forged, v1, garbage: refused from the head alone
    _refused(send(hqm.port, b"GET", b"/", token(b"GET", b"/", minted=time.time() - 400)), "expired")
    future = token(b"GET", b"/", minted=time.time() + 120)
    _refused(send(hqm.port, b"GET", b"/", future), "minted in the future")
    forged = sign(b"other", RID, time.time(), method=b"GET", target=b"/", body=b"")
    _refused(send(hqm.port, b"GET", b"/", forged), "not signed for this request")
    v1 = b"v1." + RID.encode() + b".%d." % time.time() + b"0" * 64
    _refused(
        send(hqm.port, b"GET", b"/", v1), "version v1 is no longer accepted (upgrade the workers)"
    )
    _refused(send(hqm.port, b"GET", b"/", b"garbage"), "malformed")
    # a replay body is held to --max-body, as when it was queued
    big = b"x" * 2048
    too_big = send(hqm.port, b"POST", b"/big", token(b"POST", b"/big", big), big)
    assert too_big.status == 413
    # the app saw the two good ones only, and never a token
    assert [(seen.method, seen.target) for seen in app.seen] == [
        (b"DELETE", b"/orders/7"),
        (b"PUT", b"/orders/9"),
    ]
    assert all(seen.header(HEADER) is None for seen in app.seen)
    if server is not None:  # nothing was queued (a refused replay queued would loop)
        admin = admin_client(server.url)
        assert admin.xlen(STREAM) == 0
        spent = admin.keys(QueueKeys("default").spent("*"))
        assert len(spent) == 2  # digests, not tokens
        assert all(captured not in key and fresh not in key for key in spent)
        assert 0 < admin.pttl(spent[0]) <= REMEMBER_S * 1000


def test_a_reject_route_rejects_a_valid_replay(guarded, app: Backend) -> None:
    hqm, _ = guarded
    # (a replay elsewhere passes first: a proxy stopped before it ever used Redis can hang
    # in its drain, a fault of its own that this test is not about)
    assert send(hqm.port, b"DELETE", b"/orders/1", token(b"DELETE", b"/orders/1")).status == 200
    valid = token(b"DELETE", b"/internal/users")
    refused = send(hqm.port, b"DELETE", b"/internal/users", valid)
    assert (refused.status, refused.json()["route"]) == (404, "internal")
    assert [seen.target for seen in app.seen] == [b"/orders/1"]


def test_concurrent_uses_of_one_token_pass_once(guarded, app: Backend) -> None:
    hqm, _ = guarded
    captured = token(b"POST", b"/pay", b"10")
    statuses: list[int] = []
    lock = threading.Lock()

    def use() -> None:
        status = send(hqm.port, b"POST", b"/pay", captured, b"10").status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [403] * 15
    assert app.count() == 1


# --- the worker's replays through a proxy ---------------------------------------------


class Flaky:
    """An app answering 503 to the first request of each target, then 200."""

    def __init__(self) -> None:
        self.calls: dict[bytes, int] = {}

    def __call__(self, seen: Seen) -> Answer:
        n = self.calls[seen.target] = self.calls.get(seen.target, 0) + 1
        if n == 1:
            return Answer(503, [(b"Retry-After", b"0")], b"busy")
        return Answer(200, [(b"Content-Type", b"text/plain")], b"done " + seen.target)


def test_worker_replays_pass_the_proxy_once_each_retries_included(
    tmp_path: Path, redis_server, spawn: Spawner
) -> None:
    flaky = Backend(Flaky())
    try:
        key = tmp_path / "key"
        key.write_bytes(KEY)
        front = spawn.proxy(flaky.address, redis_server.url, "--replay-key-file", str(key))
        # the worker's app is the proxy: each replay arrives there signed, as in a pod
        # whose app port is redirected to the proxy (tests/test_netns_transparent.py)
        spawn.worker(redis_server.url, f"127.0.0.1:{front.port}", "--replay-key-file", str(key))
        targets = [b"/jobs/%d" % n for n in range(5)]
        for target in targets:
            answer = request(
                front.port, b"POST", target, [(b"Host", b"a"), (b"Prefer", b"wait=15")], b"j"
            )
            assert (answer.status, answer.body) == (200, b"done " + target)
        # each target: the 503 and its retry, each with a token of its own, reached the app
        assert sorted(seen.target for seen in flaky.seen) == sorted(targets * 2)
        assert all(seen.header(HEADER) is None for seen in flaky.seen)
        admin = admin_client(redis_server.url)
        assert admin.xlen(STREAM) == 0  # no replay went back into the queue
        assert len(admin.keys(QueueKeys("default").spent("*"))) == 10
    finally:
        flaky.close()


def test_a_stale_connection_resend_carries_a_fresh_token() -> None:
    """The pool sends a request again when a kept connection closed without an answer
    (a proxy there may have read, and spent, the first token): the resend is stamped
    anew, and each stamp holds for the request."""
    writes: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        if i == 1:  # answers once, then reads the next request and closes
            writes.append(await read_request(reader))
            writer.write(OK)
            writes.append(await read_request(reader))
            return
        while True:
            writes.append(await read_request(reader))
            writer.write(OK)

    def stamp() -> tuple[bytes, bytes]:
        return HEADER, sign(KEY, RID, time.time(), method=b"POST", target=b"/", body=b"abc")

    async def body() -> None:
        async with App(script) as app_:
            pool = app_.pool()
            await pool.request(b"GET", b"/", [(b"Host", b"app")], b"")
            headers = [(b"Host", b"app"), (b"Content-Length", b"3")]
            response = await pool.request(b"POST", b"/", headers, b"abc", stamp=stamp)
            assert response.status == 200 and pool.stale_retries == 1
            await pool.close()

    asyncio.run(asyncio.wait_for(body(), 20))
    get, *posts = [_header(raw, HEADER) for raw in writes]
    assert get is None and len(posts) == 2 and None not in posts
    assert posts[0] != posts[1]
    for value in posts:
        assert value is not None
        parse(value).verify(KEY, method=b"POST", target=b"/", body=b"abc")


def _header(raw: bytes, name: bytes) -> bytes | None:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def test_the_embedded_queue_remembers_spent_tokens_bounded_and_until_they_expire() -> None:
    async def body() -> None:
        clock = HandClock(1_800_000_000.0)
        queue = MemoryQueue(clock=clock)
        assert await queue.spend("a", REMEMBER_S)
        assert not await queue.spend("a", REMEMBER_S)  # spent
        for n in range(MAX_SPENT_TOKENS - 1):
            assert await queue.spend(f"t{n}", REMEMBER_S)
        with pytest.raises(QueueFull):  # full of valid ones: refused, none forgotten
            await queue.spend("one-more", REMEMBER_S)
        assert not await queue.spend("a", REMEMBER_S)
        clock.now += REMEMBER_S  # every token expired: room again, and "a" forgotten
        assert await queue.spend("one-more", REMEMBER_S)
        assert await queue.spend("a", REMEMBER_S)

    asyncio.run(asyncio.wait_for(body(), 60))
