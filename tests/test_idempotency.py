"""Idempotency-Key: the same key and request within the TTL are stored once and answered
with the first request's id (and answer); another request under the key gets 422.

Queue level on both backends (the Redis one against a real redis-server), the header's
parsing, and end to end through real hqm processes with real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import h11
import pytest

from hqm.ingress.admission import AdmissionError, idempotency_claim, idempotency_key
from hqm.proto.envelope import RequestRecord
from hqm.proto.limits import MAX_IDEMPOTENCY_KEY_CHARS
from hqm.queue.base import IdempotencyClaim, Queue, QueueFull
from hqm.queue.keys import QueueKeys
from hqm.queue.memory import MemoryQueue
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisServer, redis_server
from tests.support import Backend, HandClock, Response, poll_result, proxy, request, wait_until
from tests.test_worker_redis import STREAM, Spawner, admin_client, app, spawn

__all__ = ["app", "redis_server", "spawn"]  # fixtures, imported for pytest

T = TypeVar("T")
START = 1_796_000_000.0
CLAIM = IdempotencyClaim(key="k" * 64, fingerprint="f" * 64, ttl_s=60.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60))


def record(n: int = 0, **overrides: Any) -> RequestRecord:
    fields: dict[str, Any] = {
        "id": f"{n:032x}",
        "method": b"POST",
        "target": b"/pay",
        "headers": ((b"Host", b"x"),),
        "body": b"%d" % n,
        "received_at": START,
    }
    fields.update(overrides)
    return RequestRecord(**fields)


class Subject:
    """One backend under test, on a hand clock (the Redis one against a real server)."""

    def __init__(self, kind: str, clock: HandClock, server: RedisServer | None) -> None:
        self.kind = kind
        self.clock = clock
        self.server = server

    async def open(self, **options: Any) -> Queue:
        if self.server is None:
            return MemoryQueue("t", clock=self.clock, **options)
        queue = RedisQueue(self.server.url, "t", clock=self.clock, **options)
        await queue.start()
        return queue

    async def forget(self, claim: IdempotencyClaim) -> None:
        """Let ``claim``'s TTL pass: the hand clock on, or Redis's own PX run out."""
        if self.server is None:
            self.clock.now += claim.ttl_s
            return
        admin = admin_client(self.server.url)
        key = QueueKeys("t").idem(claim.key)
        assert await asyncio.to_thread(wait_until, lambda: not admin.exists(key), 10)


@pytest.fixture(params=["memory", "redis"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    yield Subject(request.param, HandClock(START), server)


# --- the queue ------------------------------------------------------------------------


def test_the_same_request_again_is_the_first_one(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        first = await q.enqueue(record(1), idempotency=CLAIM)
        assert (first.request_id, first.duplicate, first.conflict) == (record(1).id, False, False)
        again = await q.enqueue(record(2), idempotency=CLAIM)
        assert (again.request_id, again.duplicate, again.conflict) == (record(1).id, True, False)
        assert await q.depth() == 1
        assert await q.state(record(2).id) is None  # nothing of the second was stored
        [delivery] = await q.claim("c", 10, 0)
        assert delivery.record.id == record(1).id
        await q.close()

    run(body())


def test_another_request_under_the_key_is_a_conflict(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        await q.enqueue(record(1), idempotency=CLAIM)
        other = IdempotencyClaim(key=CLAIM.key, fingerprint="g" * 64, ttl_s=60.0)
        clash = await q.enqueue(record(2), idempotency=other)
        assert (clash.duplicate, clash.conflict) == (False, True)
        assert await q.depth() == 1
        assert await q.state(record(2).id) is None
        await q.close()

    run(body())


def test_other_keys_and_no_key_are_independent(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        await q.enqueue(record(1), idempotency=CLAIM)
        other = IdempotencyClaim(key="j" * 64, fingerprint=CLAIM.fingerprint, ttl_s=60.0)
        assert not (await q.enqueue(record(2), idempotency=other)).duplicate
        assert not (await q.enqueue(record(3))).duplicate
        assert await q.depth() == 3
        await q.close()

    run(body())


def test_concurrent_duplicates_are_queued_once(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        outcomes = await asyncio.gather(
            *(q.enqueue(record(n), idempotency=CLAIM) for n in range(50))
        )
        assert len({o.request_id for o in outcomes}) == 1
        assert sum(not o.duplicate for o in outcomes) == 1
        assert await q.depth() == 1
        await q.close()

    run(body())


def test_the_key_is_forgotten_after_its_ttl(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        short = IdempotencyClaim(key=CLAIM.key, fingerprint=CLAIM.fingerprint, ttl_s=0.05)
        await q.enqueue(record(1), idempotency=short)
        assert (await q.enqueue(record(2), idempotency=short)).duplicate
        await subject.forget(short)
        fresh = await q.enqueue(record(3), idempotency=short)
        assert (fresh.request_id, fresh.duplicate) == (record(3).id, False)
        assert (await q.enqueue(record(4), idempotency=short)).request_id == record(3).id
        await q.close()

    run(body())


def test_a_full_queue_remembers_no_key(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open(max_depth=1)
        await q.enqueue(record(1))
        with pytest.raises(QueueFull):
            await q.enqueue(record(2), idempotency=CLAIM)
        [delivery] = await q.claim("c", 1, 0)
        await q.dead_letter(delivery, "gone", 1)  # room again
        assert not (await q.enqueue(record(3), idempotency=CLAIM)).duplicate
        await q.close()

    run(body())


# --- the header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        (b'"with \\"quotes\\" and \\\\"', 'with "quotes" and \\'),
        (b'"a b"', "a b"),
        (b"token-1:/x", "token-1:/x"),
    ],
)
def test_key_as_sf_string_or_token(value: bytes, key: str) -> None:
    assert idempotency_key(((b"idempotency-key", value),)) == key


@pytest.mark.parametrize(
    "value",
    [
        b'""',
        b'"unterminated',
        b'"bad \\n escape"',
        b'"tab\there"',
        b"1starts-with-a-digit",
        b"has space",
        b'"\xc3\xa9"',
        b'"' + b"x" * (MAX_IDEMPOTENCY_KEY_CHARS + 1) + b'"',
    ],
)
def test_malformed_keys_are_refused(value: bytes) -> None:
    with pytest.raises(AdmissionError) as caught:
        idempotency_key(((b"Idempotency-Key", value),))
    assert caught.value.payload["header"] == "Idempotency-Key"


def test_the_longest_key_and_no_key() -> None:
    longest = b'"' + b"x" * MAX_IDEMPOTENCY_KEY_CHARS + b'"'
    assert idempotency_key(((b"Idempotency-Key", longest),)) == "x" * MAX_IDEMPOTENCY_KEY_CHARS
    assert idempotency_key(((b"Host", b"x"),)) is None
    with pytest.raises(AdmissionError):
        idempotency_key(((b"Idempotency-Key", b'"a"'), (b"Idempotency-Key", b'"a"')))


def test_claims_are_scoped_to_the_route_and_caller_and_fingerprint_the_request() -> None:
    def claim(
        route: str = "", target: bytes = b"/a", body: bytes = b"x", caller: str = "alice"
    ) -> IdempotencyClaim:
        return idempotency_claim(
            "k", route=route, caller=caller, method=b"POST", target=target, body=body, ttl_s=1.0
        )

    assert claim() == claim()
    assert claim().key != claim(route="payments").key
    assert claim().key != claim(caller="mallory").key
    assert claim().fingerprint == claim(route="payments").fingerprint
    assert claim().fingerprint == claim(caller="mallory").fingerprint
    assert claim().fingerprint != claim(body=b"y").fingerprint
    assert claim().fingerprint != claim(target=b"/b").fingerprint
    # lengths are part of what is hashed: moving a byte from target to body differs
    assert claim(target=b"/ax", body=b"").fingerprint != claim(target=b"/a", body=b"x").fingerprint


# --- end to end -------------------------------------------------------------------


def _key(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Idempotency-Key", value)]


async def http(port: int, method: bytes, target: bytes, headers: list, body: bytes) -> Response:
    """One request on its own connection, with asyncio: many can be in flight at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    head = [(b"Host", b"t"), (b"Content-Length", b"%d" % len(body)), *headers]
    data = conn.send(h11.Request(method=method, target=target, headers=head))
    writer.write(data + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    await writer.drain()
    response, chunks = None, []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            chunks.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            break
    writer.close()
    assert response is not None
    return Response(response.status_code, list(response.headers.raw_items()), b"".join(chunks))


def test_a_resend_gets_the_first_id_and_location(redis_server, app: Backend, spawn: Spawner):
    hqm = spawn.proxy(app.address, redis_server.url)
    first = request(hqm.port, b"POST", b"/pay", _key(b'"order-7"'), b"10 EUR")
    again = request(hqm.port, b"POST", b"/pay", _key(b'"order-7"'), b"10 EUR")
    assert first.status == again.status == 202
    assert again.json() == first.json()
    assert again.header(b"Location") == first.header(b"Location")
    assert again.header(b"HQM-Request-Id") == first.header(b"HQM-Request-Id")
    other = request(hqm.port, b"POST", b"/pay", _key(b'"order-7"'), b"99 EUR")
    assert other.status == 422
    assert other.json()["header"] == "Idempotency-Key"
    assert "id" not in other.json()  # the first id is not handed to another request
    elsewhere = request(hqm.port, b"POST", b"/refund", _key(b'"order-7"'), b"10 EUR")
    assert elsewhere.status == 422  # same route, other target: another request
    bad = request(hqm.port, b"POST", b"/pay", _key(b'"no\\nescape"'), b"10 EUR")
    assert (bad.status, bad.json()["header"]) == (400, "Idempotency-Key")
    assert admin_client(redis_server.url).xlen(STREAM) == 1


def test_fifty_concurrent_duplicates_reach_the_app_once(redis_server, app: Backend, spawn):
    hqm = spawn.proxy(app.address, redis_server.url)

    async def send_all() -> list[Response]:
        once = _key(b"pay-once")
        return await asyncio.gather(
            *(http(hqm.port, b"POST", b"/pay", once, b"body") for _ in range(50))
        )

    responses = asyncio.run(asyncio.wait_for(send_all(), 30))
    assert {r.status for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert admin_client(redis_server.url).xlen(STREAM) == 1
    worker = spawn.worker(redis_server.url, app.address, "--burst")
    assert worker.proc.wait(20) == 0
    assert app.count() == 1
    assert poll_result(hqm.port, responses[0].json()["id"]).status == 200


def test_a_waiting_duplicate_gets_the_first_answer(redis_server, app: Backend, spawn: Spawner):
    hqm = spawn.proxy(app.address, redis_server.url)
    spawn.worker(redis_server.url, app.address)
    wait = [(b"Prefer", b"wait=10"), *_key(b"w-1")]
    first = request(hqm.port, b"POST", b"/w", wait, b"b")
    again = request(hqm.port, b"POST", b"/w", wait, b"b")
    assert first.status == again.status == 200
    assert again.body == first.body == b"you asked for /w"
    assert again.header(b"HQM-Request-Id") == first.header(b"HQM-Request-Id")
    assert app.count() == 1


def test_the_key_can_be_reused_after_idempotency_ttl(redis_server, app: Backend, spawn):
    hqm = spawn.proxy(app.address, redis_server.url, "--idempotency-ttl", "0.2")
    first = request(hqm.port, b"POST", b"/t", _key(b"t-1"), b"b").json()["id"]

    def fresh() -> bool:
        return request(hqm.port, b"POST", b"/t", _key(b"t-1"), b"b").json()["id"] != first

    assert wait_until(fresh, timeout=10)
    assert admin_client(redis_server.url).xlen(STREAM) == 2


def test_the_embedded_queue_dedupes_too(app: Backend):
    hqm = proxy(app.address, "--concurrency", "1")  # one at a time, in queue order
    try:
        ids = [request(hqm.port, b"PUT", b"/e", _key(b"e-1"), b"b").json()["id"] for _ in "ab"]
        assert ids[0] == ids[1]
        marker = request(hqm.port, b"PUT", b"/marker", body=b"m").json()["id"]
        assert poll_result(hqm.port, marker).status == 200  # a queued copy ran before it
        assert app.count(lambda seen: seen.target == b"/e") == 1
    finally:
        hqm.terminate()
