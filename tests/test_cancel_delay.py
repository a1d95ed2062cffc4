"""Cancel (``DELETE /_hqm/requests/{id}``) and delay (``HQM-Delay`` / ``HQM-Not-Before``).

Queue level on both backends through the same tests (a hand clock; the worker's
``promote_due(now)`` with a chosen ``now``, never a sleep), then end to end: real
redis-server, hqm proxy and ``hqm worker --burst`` processes, an app on real sockets.
"""

from __future__ import annotations

import asyncio
import threading

from hqm.queue.base import CancelOutcome, Queue, Status
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_streams import RedisQueue
from tests.support import Answer, Backend, Seen, poll_result, proxy, request, wait_until
from tests.test_idempotency import START, Subject, record, run, subject
from tests.test_queue_redis import response
from tests.test_worker_redis import STREAM, Spawner, admin_client, app, redis_server, spawn

__all__ = ["app", "redis_server", "spawn", "subject"]  # fixtures, imported for pytest

LATER = START + 3600.0


async def _nothing_claimable(q: Queue) -> bool:
    return await q.claim("c", 10, 0) == []


# --- delay ------------------------------------------------------------------------


def test_a_delayed_request_waits_until_due(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        later = record(1, not_before=LATER)
        assert (await q.enqueue(later)).request_id == later.id
        state = await q.state(later.id)
        assert (state.status, state.not_before, state.attempts) == (Status.DELAYED, LATER, 0)
        assert await q.depth() == 1  # counted, as a scheduled retry is
        assert await _nothing_claimable(q)
        assert await q.promote_due(LATER - 0.001) == 0
        assert await _nothing_claimable(q)
        assert await q.promote_due(LATER) == 1
        [delivery] = await q.claim("c", 10, 0)
        assert (delivery.record, delivery.attempt) == (later, 0)
        await q.close()

    run(body())


def test_not_before_at_or_before_reception_is_queued_at_once(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        await q.enqueue(record(1, not_before=START))
        await q.enqueue(record(2, not_before=START - 5))
        assert len(await q.claim("c", 10, 0)) == 2
        await q.close()

    run(body())


def test_state_times(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        rec = record(1, received_at=START - 2)
        await q.enqueue(rec)
        queued = await q.state(rec.id)
        assert (queued.submitted_at, queued.updated_at) == (START - 2, START)
        [delivery] = await q.claim("c", 1, 0)
        subject.clock.now += 5
        await q.complete(delivery, response())
        done = await q.state(rec.id)
        assert (done.status, done.submitted_at, done.updated_at) == (
            Status.DONE,
            START - 2,
            START + 5,
        )
        await q.close()

    run(body())


# --- cancel -----------------------------------------------------------------------


def test_cancel_a_queued_request(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        rec, kept = record(1), record(2)
        await q.enqueue(rec)
        await q.enqueue(kept)
        subject.clock.now += 1
        assert await q.cancel(rec.id) is CancelOutcome.CANCELLED
        state = await q.state(rec.id)
        assert (state.status, state.submitted_at, state.updated_at) == (
            Status.CANCELLED,
            START,
            START + 1,
        )
        assert await q.depth() == 1
        assert [d.record.id for d in await q.claim("c", 10, 0)] == [kept.id]
        assert await q.cancel(rec.id) is CancelOutcome.BUSY  # cancelled already
        assert await q.cancel("f" * 32) is CancelOutcome.UNKNOWN
        await q.close()

    run(body())


def test_cancel_a_delayed_request(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        # several due at the same instant: the right one is taken back
        same = [record(n, not_before=LATER) for n in range(3)]
        for rec in same:
            await q.enqueue(rec)
        assert await q.cancel(same[1].id) is CancelOutcome.CANCELLED
        assert (await q.state(same[1].id)).status is Status.CANCELLED
        assert await q.depth() == 2
        assert await q.promote_due(LATER + 1) == 2
        assert {d.record.id for d in await q.claim("c", 10, 0)} == {same[0].id, same[2].id}
        await q.close()

    run(body())


def test_cancel_a_request_waiting_to_be_retried(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        rec = record(1)
        await q.enqueue(rec)
        [delivery] = await q.claim("c", 1, 0)
        await q.retry_later(delivery, LATER, "app answered 503")
        retrying = await q.state(rec.id)
        assert (retrying.status, retrying.not_before) == (Status.RETRYING, LATER)
        assert await q.cancel(rec.id) is CancelOutcome.CANCELLED
        cancelled = await q.state(rec.id)
        assert (cancelled.status, cancelled.attempts, cancelled.error) == (
            Status.CANCELLED,
            1,
            "app answered 503",
        )
        assert await q.promote_due(LATER + 1) == 0
        assert await _nothing_claimable(q)
        assert await q.depth() == 0
        await q.close()

    run(body())


def test_too_late_once_claimed_or_done(subject: Subject) -> None:
    async def body() -> None:
        q = await subject.open()
        rec = record(1)
        await q.enqueue(rec)
        [delivery] = await q.claim("c", 1, 0)
        # at once: in Redis the "processing" mark may not have landed; the PEL says no
        assert await q.cancel(rec.id) is CancelOutcome.BUSY
        await q.complete(delivery, response())
        assert await q.cancel(rec.id) is CancelOutcome.BUSY
        assert (await q.state(rec.id)).status is Status.DONE
        await q.close()

    run(body())


def test_redis_keeps_a_delayed_state_until_due_and_reads_old_states(redis_server) -> None:
    async def body() -> None:
        q = RedisQueue(redis_server.url, "t", result_ttl_s=10.0, clock=lambda: START)
        await q.start()
        admin, keys = admin_client(redis_server.url), QueueKeys("t")
        later = record(1, not_before=LATER)
        await q.enqueue(later)
        assert admin.pttl(keys.state(later.id)) > 3600 * 1000  # not gone at --result-ttl
        old = record(2)  # a state as written before it kept its entry id
        await q.enqueue(old)
        admin.set(keys.state(old.id), b'{"s":"queued","a":0}')
        assert (await q.state(old.id)).status is Status.QUEUED
        assert await q.cancel(old.id) is CancelOutcome.BUSY
        assert admin.xlen(keys.stream) == 1  # left for a worker
        await q.close()

    run(body())


# --- end to end -------------------------------------------------------------------


def _get(port: int, request_id: str):
    return request(port, b"GET", b"/_hqm/requests/" + request_id.encode())


def _delete(port: int, request_id: str):
    return request(port, b"DELETE", b"/_hqm/requests/" + request_id.encode())


def test_a_cancelled_request_never_reaches_the_app(redis_server, app: Backend, spawn: Spawner):
    hqm = spawn.proxy(app.address, redis_server.url)
    gone = request(hqm.port, b"POST", b"/gone", body=b"x").json()["id"]
    kept = request(hqm.port, b"POST", b"/kept", body=b"x").json()["id"]
    cancelled = _delete(hqm.port, gone)
    assert (cancelled.status, cancelled.json()) == (200, {"id": gone, "status": "cancelled"})
    assert (_get(hqm.port, gone).status, _get(hqm.port, gone).json()["status"]) == (
        410,
        "cancelled",
    )
    assert _delete(hqm.port, gone).status == 409
    assert _delete(hqm.port, "0" * 32).status == 404
    worker = spawn.worker(redis_server.url, app.address, "--burst")
    assert worker.proc.wait(20) == 0
    assert [s.target for s in app.seen] == [b"/kept"]
    assert poll_result(hqm.port, kept).status == 200
    assert _get(hqm.port, gone).status == 410


def test_cancel_is_409_once_processing_and_once_done(redis_server, app: Backend, spawn):
    gate = threading.Event()

    def respond(seen: Seen) -> Answer:
        assert gate.wait(30), "the test never released the app"
        return Answer(200, [], b"ok")

    app.respond = respond
    hqm = spawn.proxy(app.address, redis_server.url)
    spawn.worker(redis_server.url, app.address)
    held = request(hqm.port, b"POST", b"/held", body=b"x").json()["id"]
    assert wait_until(lambda: app.in_flight == 1)
    busy = _delete(hqm.port, held)
    assert (busy.status, busy.json()["status"]) == (409, "processing")
    gate.set()
    assert poll_result(hqm.port, held).status == 200
    done = _delete(hqm.port, held)
    assert (done.status, done.json()["status"]) == (409, "done")
    assert app.count() == 1


def test_delay_headers_schedule_and_are_not_replayed(redis_server, app: Backend, spawn: Spawner):
    hqm = spawn.proxy(app.address, redis_server.url)
    delayed = [(b"HQM-Delay", b"3600"), (b"X-Keep", b"1")]
    accepted = request(hqm.port, b"POST", b"/later", delayed, b"x")
    assert accepted.status == 202
    rid = accepted.json()["id"]
    pending = _get(hqm.port, rid)
    assert (pending.status, pending.json()["status"]) == (202, "delayed")
    due = pending.json()["not_before"]
    assert int(pending.header(b"Retry-After")) > 3000
    past = [(b"HQM-Not-Before", b"2000-01-01T00:00:00Z")]  # due already: queued at once
    now_id = request(hqm.port, b"POST", b"/now", past, b"x").json()["id"]
    worker = spawn.worker(redis_server.url, app.address, "--burst")  # drains /now
    assert poll_result(hqm.port, now_id).status == 200
    assert admin_client(redis_server.url).xlen(STREAM) == 0  # /later is not in the stream

    async def promote(now: float) -> int:
        q = RedisQueue(redis_server.url)
        try:
            return await q.promote_due(now)
        finally:
            await q.close()

    assert asyncio.run(promote(due - 1)) == 0  # the worker's step, at a chosen time
    assert asyncio.run(promote(due)) == 1
    assert worker.proc.wait(20) == 0
    assert [s.target for s in app.seen] == [b"/now", b"/later"]
    for seen in app.seen:
        assert seen.header(b"HQM-Delay") is None and seen.header(b"HQM-Not-Before") is None
    assert app.seen[1].header(b"X-Keep") == b"1"
    assert poll_result(hqm.port, rid).status == 200


def test_cancel_a_delayed_request_over_http_and_bounds(redis_server, app: Backend, spawn):
    hqm = spawn.proxy(app.address, redis_server.url, "--max-delay", "60")
    waiting = [(b"HQM-Delay", b"30"), (b"Prefer", b"wait=20")]
    accepted = request(hqm.port, b"POST", b"/d", waiting, b"x")
    assert accepted.status == 202  # at once: its answer cannot come within the wait
    assert accepted.header(b"Preference-Applied") is None
    assert _delete(hqm.port, accepted.json()["id"]).status == 200
    assert admin_client(redis_server.url).zcard(QueueKeys("default").delayed) == 0
    for header, value in [
        (b"HQM-Delay", b"61"),
        (b"HQM-Delay", b"soon"),
        (b"HQM-Not-Before", b"%d" % 4_000_000_000),
        (b"HQM-Not-Before", b"2026-13-01T00:00:00Z"),
    ]:
        refused = request(hqm.port, b"POST", b"/d", [(header, value)], b"x")
        assert refused.status == 400, (header, value)
        assert refused.json()["header"].lower() == header.decode().lower()
    assert app.count() == 0


def test_the_embedded_queue_delays_and_cancels(app: Backend):
    hqm = proxy(app.address)
    try:
        rid = request(hqm.port, b"POST", b"/e", [(b"HQM-Delay", b"3600")], b"x").json()["id"]
        assert _get(hqm.port, rid).json()["status"] == "delayed"
        assert _delete(hqm.port, rid).status == 200
        assert _get(hqm.port, rid).status == 410
        marker = request(hqm.port, b"POST", b"/marker", body=b"m").json()["id"]
        assert poll_result(hqm.port, marker).status == 200
        assert [s.target for s in app.seen] == [b"/marker"]
    finally:
        hqm.terminate()


def test_the_202_of_a_delayed_request_says_delayed_and_when(redis_server, app, spawn: Spawner):
    embedded = proxy(app.address)
    spawn.procs.append(embedded)
    for hqm in (spawn.proxy(app.address, redis_server.url), embedded):
        accepted = request(hqm.port, b"POST", b"/later", [(b"HQM-Delay", b"3600")], b"x")
        body = accepted.json()
        assert (accepted.status, body["status"]) == (202, "delayed")
        assert body["location"] == accepted.header(b"Location").decode()
        assert body["not_before"] == _get(hqm.port, body["id"]).json()["not_before"]
        now = request(hqm.port, b"POST", b"/now", body=b"x").json()
        assert now["status"] == "queued" and "not_before" not in now
