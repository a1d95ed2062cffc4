"""Poison: no content of what Redis holds makes a worker exit or loop, or an answer 5xx
(docs/architecture.md §4, §5). Each field of a request stream entry (r, a, i) is
replaced by garbage, empty, a number beyond 64 bits, a negative number and 70 KB, with
plain redis commands on a real redis-server; so are delayed-retry members, state JSON
and dead letters. Each such entry ends as a dead letter with its reason (or is
processed, where the value is harmless); the queue, two real ``hqm worker`` processes, a
real proxy and ``hqm dlq`` go on serving everything else."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from dataclasses import dataclass

import pytest
import redis
from click.testing import CliRunner

from hqm.cli.main import main
from hqm.proto.envelope import RequestRecord, encode_request, encode_response
from hqm.queue.base import Delivery, RequestState, Status
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import delayed_member
from hqm.queue.redis_lua import ATTEMPT, RECORD, REQUEST_ID
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisServer, redis_server
from tests.support import request, wait_until
from tests.test_queue_redis import eventually, record, response, run
from tests.test_worker_redis import (
    Spawner,
    app,
    collect,
    dlq,
    done_target,
    enqueue,
    ids_seen,
    log_records,
    spawn,
)

__all__ = ["app", "redis_server", "spawn"]  # fixtures, imported for pytest

VALUES = {
    "garbage": b"\x00\xffnot an hqm value\r\n\x80",
    "empty": b"",
    "beyond-64-bit": b"99999999999999999999999",
    "negative": b"-5",
    "70KB": b"7" * 70_000,
}


@dataclass(frozen=True)
class Case:
    """A stream entry as written: ``fields``, made from ``rec``; ``dead``: it must end
    as a dead letter (else: processed as ``rec``)."""

    name: str
    fields: dict[bytes, bytes]
    rec: RequestRecord
    dead: bool


def stream_cases(tag: str) -> list[Case]:
    out = []
    for field in (RECORD, ATTEMPT, REQUEST_ID):  # every field of an entry
        for name, value in VALUES.items():
            target = f"/{tag}/{field}/{name}".encode()
            rec = record(target=target, headers=((b"Host", b"app"),), body=b"poison")
            fields = {b"r": encode_request(rec), b"a": b"0", b"i": rec.id.encode()}
            assert set(fields) == {RECORD.encode(), ATTEMPT.encode(), REQUEST_ID.encode()}
            fields[field.encode()] = value
            out.append(Case(f"{field}={name}", fields, rec, dead=field != REQUEST_ID))
    rec = record(target=f"/{tag}/unknown".encode())
    out.append(Case("unknown fields only", {b"x": b"1", b"\xff": b"\x00" * 9}, rec, True))
    return out


def admin(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, protocol=2, socket_timeout=10)


def letters(r: redis.Redis, keys: QueueKeys) -> dict[bytes, dict[bytes, bytes]]:
    """Dead letters by the stream entry they came from (not those of delayed members)."""
    return {f[b"entry"]: f for _, f in r.xrange(keys.dlq) if f.get(b"entry")}


# --- the queue: claim (script), claim (XREADGROUP BLOCK), reclaim (XAUTOCLAIM) -------


async def _take(q: RedisQueue, r: redis.Redis, path: str, count: int) -> list[Delivery]:
    if path == "claim":  # the finish script's claim
        return await q.claim("c", count, 0)
    if path == "block":
        q._backlog = False  # no backlog seen: XREADGROUP BLOCK
        return await q.claim("c", count, 1.0)
    r.xreadgroup("hqm", "died", {q.keys.stream: ">"}, count=count)  # a worker that died
    return await q.reclaim("c", 0, count)


@pytest.mark.parametrize("path", ["claim", "block", "reclaim"])
def test_every_corrupt_field_is_dead_lettered_at_claim(redis_server: RedisServer, path: str):
    keys, r = QueueKeys("poison"), admin(redis_server.url)
    cases = stream_cases(path)
    good = [record(target=b"/good/1"), record(target=b"/good/2")]

    async def body() -> None:
        q = RedisQueue(redis_server.url, "poison")
        await q.start()
        await q.enqueue(good[0])
        entries = {r.xadd(keys.stream, c.fields): c for c in cases}
        await q.enqueue(good[1])
        got = await _take(q, r, path, 100)
        harmless = [c.rec for c in cases if not c.dead]
        assert sorted(d.record.target for d in got) == sorted(x.target for x in good + harmless)
        assert {d.attempt for d in got} == {0}
        dead = letters(r, keys)
        for entry_id, case in entries.items():
            if not case.dead:
                assert entry_id not in dead, case.name
                continue
            letter = dead.get(entry_id)
            assert letter is not None, f"{case.name}: not dead-lettered"
            assert letter[b"error"].startswith(b"corrupt entry: "), case.name
            assert letter[b"r"] == case.fields.get(b"r", b""), case.name
            if case.name != "unknown fields only":  # its request is known by its 'i'
                state = await q.state(case.rec.id)
                assert state is not None and state.status is Status.DEAD, case.name
                assert (await q.fetch_result(case.rec.id)).status == 502, case.name
        assert r.xlen(keys.stream) == len(got)  # the dead ones left the stream
        assert r.xpending(keys.stream, "hqm")["pending"] == len(got)
        for d in got:
            await q.complete(d, response())
        assert r.xlen(keys.stream) == 0
        assert await q.claim("c", 100, 0) == []  # nothing left to loop on
        await q.close()

    run(body())


def test_a_corrupt_attempt_letter_replays_as_a_fresh_request(redis_server: RedisServer):
    keys, r = QueueKeys("again"), admin(redis_server.url)
    rec = record()

    async def body() -> None:
        q = RedisQueue(redis_server.url, "again")
        await q.start()
        r.xadd(keys.stream, {"r": encode_request(rec), "a": b"99999999999999999999999"})
        assert await q.claim("c", 10, 0) == []
        [letter] = await q.dead_letters()
        assert letter.record == rec and letter.error.startswith("corrupt entry: bad attempt")
        assert await q.replay_dead_letter(letter.entry_id)
        [delivery] = await q.claim("c", 10, 0)
        assert (delivery.record, delivery.attempt) == (rec, 0)
        await q.close()

    run(body())


def test_a_corrupt_state_is_overwritten_by_the_processing_mark(redis_server: RedisServer):
    keys, r = QueueKeys("mark"), admin(redis_server.url)

    async def body() -> None:
        q = RedisQueue(redis_server.url, "mark")
        await q.start()
        rec = record()
        await q.enqueue(rec)
        r.set(keys.state(rec.id), b'{"s":"done"')  # truncated JSON: not a final state
        assert await q.state(rec.id) is None
        assert [d.record for d in await q.claim("c", 1, 0)] == [rec]
        processing = RequestState(Status.PROCESSING, 0)
        assert await eventually(lambda: _equals(q.state(rec.id), processing))
        await q.close()

    run(body())


async def _equals(value, expected) -> bool:
    state = await value  # (its times aside)
    return state is not None and (state.status, state.attempts, state.error) == (
        expected.status,
        expected.attempts,
        expected.error,
    )


# --- delayed retries -------------------------------------------------------------


def _members() -> dict[str, tuple[bytes, RequestRecord | None]]:
    """Corrupt delayed members, and the request each names (None: none usable)."""
    one, two = record(), record()
    head = struct.Struct(">IH8s")
    return {
        "garbage": (VALUES["garbage"], None),
        "empty": (b"", None),
        "beyond-64-bit": (VALUES["beyond-64-bit"], None),
        "negative": (VALUES["negative"], None),
        "70KB": (VALUES["70KB"], None),
        "id past the end": (head.pack(1, 60_000, b"12345678") + b"abc", None),
        "corrupt record": (delayed_member(1, one, b"HQM\x01\x01garbage"), one),
        "another request's record": (delayed_member(1, two, encode_request(record())), two),
    }


def test_corrupt_delayed_members_are_dead_lettered_good_ones_promoted(
    redis_server: RedisServer,
):
    keys, r = QueueKeys("later"), admin(redis_server.url)
    members = _members()
    good = [record(target=b"/later/%d" % n) for n in range(3)]

    async def body() -> None:
        q = RedisQueue(redis_server.url, "later")
        await q.start()
        r.zadd(keys.delayed, {m: 5.0 for m, _ in members.values()})
        r.zadd(keys.delayed, {delayed_member(2, g, encode_request(g)): 5.0 for g in good})
        assert await q.promote_due(10.0) == len(good)
        assert r.zcard(keys.delayed) == 0  # nothing left to trip over again
        dead = [f for _, f in r.xrange(keys.dlq)]
        assert sorted(f[b"r"] for f in dead) == sorted(m for m, _ in members.values())
        assert all(f[b"error"].startswith(b"corrupt retry: ") for f in dead)
        for name, (_, named) in members.items():
            if named is not None:  # a request it names is told
                assert (await q.state(named.id)).status is Status.DEAD, name
        got = await q.claim("c", 10, 0)
        assert sorted((d.record.target, d.attempt) for d in got) == [(g.target, 2) for g in good]
        await q.close()

    run(body())


def test_many_corrupt_members_never_stall_promotion(redis_server: RedisServer):
    """More corrupt members than one call moves: each call removes its share, so a good
    retry behind them goes out within a bounded number of calls."""
    keys, r = QueueKeys("stall"), admin(redis_server.url)
    good = record()

    async def body() -> None:
        q1, q2 = RedisQueue(redis_server.url, "stall"), RedisQueue(redis_server.url, "stall")
        await q1.start()
        r.zadd(keys.delayed, {b"junk %d" % n: 1.0 for n in range(250)})
        r.zadd(keys.delayed, {delayed_member(1, good, encode_request(good)): 2.0})
        promoted = 0
        for _ in range(3):  # 100 a call, two workers racing: each member handled once
            promoted += sum(await asyncio.gather(q1.promote_due(9.0), q2.promote_due(9.0)))
        assert (promoted, r.zcard(keys.delayed), r.xlen(keys.stream)) == (1, 0, 1)
        assert r.xlen(keys.dlq) == 250
        await q1.close()
        await q2.close()

    run(body())


# --- the results API and hqm dlq ---------------------------------------------------

STATES = {
    **VALUES,
    "not an object": b"[1, 2]",
    "unknown status": b'{"s": "nope", "a": 0}',
    "attempts beyond 64 bits": b'{"s": "queued", "a": 99999999999999999999999}',
    "attempts negative": b'{"s": "queued", "a": -5}',
    "attempts infinite": b'{"s": "queued", "a": 1e400}',
    "attempts a string": b'{"s": "queued", "a": "1"}',
    "error not a string": b'{"s": "retrying", "a": 1, "e": 5}',
    "70KB of JSON": b'{"s": "' + b"x" * 70_000 + b'"}',
}


def test_results_api_answers_every_corrupt_state_without_5xx(
    redis_server: RedisServer, spawn: Spawner
):
    keys, r = QueueKeys("default"), admin(redis_server.url)
    hqm = spawn.proxy("127.0.0.1:9", redis_server.url)
    stored = response(b"the stored answer")

    def get(request_id: str):
        return request(hqm.port, b"GET", b"/_hqm/requests/" + request_id.encode())

    for name, value in STATES.items():
        rid = record().id
        r.set(keys.state(rid), value)
        assert get(rid).status == 404, name  # unknown, not a failure
        r.set(keys.result(rid), encode_response(stored))
        answer = get(rid)  # the state is unreadable, the result is not: it is served
        assert (answer.status, answer.body) == (200, stored.body), name
    rid = record().id
    r.set(keys.state(rid), b'{"s": "done", "a": 1}')
    r.set(keys.result(rid), b"HQM\x01\x02garbage")
    assert get(rid).status == 404  # a corrupt result is no result
    assert "Traceback" not in hqm.log()


def test_dlq_commands_survive_corrupt_letters(redis_server: RedisServer):
    keys, r = QueueKeys("default"), admin(redis_server.url)
    rec = record()
    good = {b"r": encode_request(rec), b"error": b"x", b"attempts": b"1", b"dead_at": b"5"}
    far = encode_request(record(received_at=1e300))  # a valid record, an absurd time
    variants = [{**good, b"r": v} for v in VALUES.values()] + [{**good, b"r": far}]
    for field in (b"error", b"attempts", b"dead_at", b"entry"):
        variants += [{**good, field: v} for v in VALUES.values()]
    variants += [{b"x": b"1"}, {k: v for k, v in good.items() if k != b"r"}]
    ids = [r.xadd(keys.dlq, fields).decode() for fields in variants]
    for args in (("list",), ("list", "--json")):
        done = dlq(*args, "--redis", redis_server.url)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    listed = dlq("list", "--json", "--redis", redis_server.url).stdout.splitlines()
    assert [json.loads(line)["entry"] for line in listed] == ids
    shows = [(entry,) for entry in ids]  # and --json for those whose record differs
    shows += [(entry, "--json") for entry in ids[: len(VALUES) + 1]]  # (list --json: rest)
    for args in shows:  # in process (the same CLI code): ~40 process starts saved
        done = CliRunner().invoke(main, ["dlq", "show", *args, "--redis", redis_server.url])
        assert done.exception is None and done.exit_code == 0, done.output
    done = dlq("replay", "--all", "--json", "--redis", redis_server.url)
    assert done.returncode == 0, done.stderr
    replayable = [i for i, f in zip(ids, variants, strict=True) if f.get(b"r") in (good[b"r"], far)]
    assert json.loads(done.stdout)["replayed"] == replayable


# --- two workers, all of it at once, traffic before and after ----------------------


def test_two_workers_outlive_every_poison_and_traffic_flows(
    redis_server: RedisServer, app, spawn: Spawner
):
    keys, r = QueueKeys("default"), admin(redis_server.url)
    app.respond = done_target
    hqm = spawn.proxy(app.address, redis_server.url)
    flags = ("--visibility-timeout", "1", "--max-deliveries", "3")
    workers = [spawn.worker(redis_server.url, app.address, "--consumer", w, *flags) for w in "ab"]
    before = enqueue(hqm.port, [b"/before/%d" % n for n in range(20)])
    assert {x.status for x in collect(hqm.port, before).values()} == {200}

    cases = stream_cases("e2e")
    entries = {r.xadd(keys.stream, c.fields): c for c in cases}
    members = _members()
    r.zadd(keys.delayed, {m: time.time() - 1 for m, _ in members.values()})
    after = enqueue(hqm.port, [b"/after/%d" % n for n in range(20)])
    assert {x.status for x in collect(hqm.port, after).values()} == {200}

    def settled() -> bool:
        pending = r.xpending(keys.stream, "hqm")["pending"]
        return r.xlen(keys.stream) == pending == r.zcard(keys.delayed) == 0

    assert wait_until(settled), (r.xlen(keys.stream), r.zcard(keys.delayed))
    dead = letters(r, keys)
    for entry_id, case in entries.items():
        if case.dead:
            assert dead[entry_id][b"error"].startswith(b"corrupt entry: "), case.name
        else:  # harmless: replayed to the app, its answer stored
            assert entry_id not in dead and ids_seen(app)[case.rec.id] >= 1, case.name
            assert collect(hqm.port, [case.rec.id])[case.rec.id].status == 200, case.name
    retries = [f for _, f in r.xrange(keys.dlq) if f[b"error"].startswith(b"corrupt retry: ")]
    assert len(retries) == len(members)
    for case in cases:
        if case.dead and case.name != "unknown fields only":  # known by its 'i': told
            answer = collect(hqm.port, [case.rec.id])[case.rec.id]
            assert answer.status == 502 and b"corrupt entry" in answer.body, case.name
    for worker in workers:
        assert worker.proc.poll() is None, worker.log()  # none exited
        assert "Traceback" not in worker.log() and "worker failed" not in worker.log()
    # (a line for each; corrupt retries may be met by the proxy's promotion of due entries)
    said = [x.get("msg", "") for w in (*workers, hqm) for x in log_records(w)]
    dead_cases = sum(c.dead for c in cases)  # (a member both workers read: two lines)
    assert sum(m.startswith("dead-lettering corrupt entry ") for m in said) >= dead_cases
    assert sum(m.startswith("dead-lettering a corrupt retry: ") for m in said) >= len(members)
    last = enqueue(hqm.port, [b"/last/%d" % n for n in range(10)])
    assert {x.status for x in collect(hqm.port, last).values()} == {200}
