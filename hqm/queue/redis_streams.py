"""The Redis Streams backend: the production queue (DESIGN.md sections 5 and 7).

One stream per queue, read through the consumer group ``hqm``. A finished entry
(completed, scheduled for retry or dead-lettered) is XACKed and XDELed in the same
Lua script that records its outcome, so XLEN is the number of unfinished entries.
Scheduled retries wait in a sorted set and are moved back by ``promote_due``.

Round trips are shared (hqm.queue.batch): the enqueues of one event-loop turn go in
one script call, and so do a worker's outcomes (complete, retry_later, dead_letter)
together with its next non-blocking claim; XREADGROUP BLOCK only runs when no backlog
is left. Wait mode: see hqm.queue.redis_wait.

Every Redis failure surfaces as ``QueueUnavailable``; redis-py reconnects on the
next command, so the same object recovers when Redis comes back.

Corrupt stream entries (undecodable envelope) are dead-lettered with their raw bytes
and the error ``corrupt entry: ...``; they are listed by ``dead_letters`` with an
empty placeholder record (id "", the raw bytes as body) and cannot be replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from hqm.proto.envelope import (
    RequestRecord,
    ResponseRecord,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
)
from hqm.proto.limits import RESULT_TTL_S
from hqm.queue.base import (
    DeadLetter,
    Delivery,
    Queue,
    QueueError,
    QueueFull,
    QueueUnavailable,
    RequestState,
    Status,
)
from hqm.queue.batch import Batcher
from hqm.queue.keys import GROUP, QueueKeys
from hqm.queue.redis_conn import connect
from hqm.queue.redis_lua import CLAIM_ERROR, Scripts, pack_item, unpack_claimed
from hqm.queue.redis_wait import Replies, notification

log = logging.getLogger(__name__)

_MAX_BATCH = 512  # records per enqueue round trip ...
_MAX_BATCH_BYTES = 4 << 20  # ... or about this many bytes of records
_PROMOTE_LIMIT = 100  # retries moved back per promote_due call
_MARK_WITHIN_S = 0.1  # a claimed entry shows "processing" within this time
_ENTRY_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
#: Delayed-retry member: attempt u32 | len(request id) u16 | 8 random bytes | id | record.
_MEMBER = struct.Struct(">IH8s")


@contextlib.contextmanager
def _errors(op: str) -> Iterator[None]:
    """Turn every Redis/socket failure into QueueUnavailable."""
    try:
        yield
    except QueueError:
        raise
    except (RedisError, OSError, TimeoutError) as exc:
        raise QueueUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from exc


def _entries(reply: Any) -> list[Any]:
    """The entries of an XREADGROUP reply on one stream (None: nothing came)."""
    return [(i, f) for i, f in reply[0][1] if f is not None] if reply else []


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _failed(op: str) -> Callable[[BaseException], QueueUnavailable]:
    """What the callers of a failed batch get: QueueUnavailable, with the reason."""

    def failed(exc: BaseException) -> QueueUnavailable:
        if isinstance(exc, QueueError):
            return QueueUnavailable(str(exc))
        return QueueUnavailable(f"{op} aborted: {exc!r}")

    return failed


def _state(status: Status, attempts: int = 0, error: str | None = None) -> bytes:
    state: dict[str, Any] = {"s": status.value, "a": attempts}
    if error is not None:
        state["e"] = error
    return orjson.dumps(state)


_QUEUED = _state(Status.QUEUED)


class RedisQueue(Queue):
    def __init__(
        self,
        url: str,
        name: str = "default",
        *,
        max_depth: int = 0,
        result_ttl_s: float = RESULT_TTL_S,
        instance_id: str | None = None,
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.keys = QueueKeys(name)
        self.instance_id = instance_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        )
        self._max_depth = max_depth
        self._ttl_ms = max(1, round(result_ttl_s * 1000))
        self._timeout = command_timeout_s
        self._now = clock
        self._clients = connect(url, connect_timeout_s, command_timeout_s)
        self._redis = self._clients.main
        self._lua = Scripts(self._clients.blocking, GROUP, command_timeout_s)
        self._enqueues: Batcher[tuple[str, bytes], None] = Batcher(
            self._send,
            failed=_failed("enqueue"),
            max_items=_MAX_BATCH,
            max_bytes=_MAX_BATCH_BYTES,
            size=lambda item: len(item[1]),
        )
        #: The worker's round trips (script ``finish``): outcomes and claims of one loop
        #: turn, as (op, request id, args); a claim's outcome is its packed entries.
        self._outcomes: Batcher[tuple[str, str, list[Any]], bytes | None] = Batcher(
            self._finish, failed=_failed("finish"), max_items=_MAX_BATCH
        )
        self._replies = Replies(
            self._clients.blocking, self.keys.reply_channel(self.instance_id), self.fetch_result
        )
        self._cursor = "0-0"
        #: The last claim got all it asked for: more may be waiting (try the script first).
        self._backlog = True
        self._closed = False

    @property
    def batches_sent(self) -> int:
        """Round trips the enqueue flusher made (one per batch of enqueue calls)."""
        return self._enqueues.flushes

    @property
    def notifications(self) -> int:
        """Reply notifications received on ``reply_channel``."""
        return self._replies.notifications

    @property
    def reply_channel(self) -> str:
        return self._replies.channel

    async def start(self) -> None:
        """Create the consumer group (idempotent). QueueUnavailable when Redis is down."""
        with _errors("start"):
            await self._create_group()

    async def _create_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _grouped(self, op: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``call``; on NOGROUP (Redis restarted empty) create the group and retry once."""
        with _errors(op):
            try:
                return await call()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group()
                return await call()

    async def _script(
        self, op: str, name: str, keys: list[Any], args: list[Any], *, own: bool = False
    ) -> Any:
        with _errors(op):
            return await self._lua(name, keys, args, own=own)

    # --- proxy side ---------------------------------------------------------
    async def enqueue(self, record: RequestRecord) -> None:
        """Queue ``record``; calls made in one event-loop turn share one round trip."""
        if self._closed:
            raise QueueUnavailable("queue closed")
        if record.reply_to != self._replies.channel:
            await self._enqueues.submit((record.id, encode_request(record)))
            return
        # Wait mode: the waiter exists before the XADD, so no notification can miss it.
        self._replies.expect(record.id)
        try:
            await self._enqueues.submit((record.id, encode_request(record)))
        except BaseException:
            self._replies.forget(record.id)
            raise

    async def _send(self, batch: list[tuple[str, bytes]]) -> list[QueueFull | None]:
        # One EVALSHA per batch: XADD + SET state per record, and the --max-depth check
        # (XLEN + ZCARD delayed, exact, per record) in the same atomic step. Measured
        # ~3x the throughput of a pipeline of XADD/SET pairs (redis-py packs and parses
        # every pipelined command in Python; here it handles one).
        keys = [self.keys.stream, self.keys.delayed, *(self.keys.state(i) for i, _ in batch)]
        id_at = len(self.keys.state("")) + 1  # the script stores the id with the entry
        args = [self._max_depth, self._ttl_ms, _QUEUED, id_at, *(data for _, data in batch)]
        replies = await self._script("enqueue", "enqueue", keys, args)
        full = f"queue {self.name!r} holds {self._max_depth}"
        return [None if reply else QueueFull(full) for reply in replies]

    async def state(self, request_id: str) -> RequestState | None:
        with _errors("state"):
            raw = await self._redis.get(self.keys.state(request_id))
        if raw is None:
            return None
        try:
            state = orjson.loads(raw)
            return RequestState(Status(state["s"]), state.get("a", 0), state.get("e"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("unreadable state for request %s: %r", request_id, raw[:100])
            return None

    async def fetch_result(self, request_id: str) -> ResponseRecord | None:
        with _errors("fetch_result"):
            raw = await self._redis.get(self.keys.result(request_id))
        return None if raw is None else decode_response(raw)

    async def wait_result(self, request_id: str, timeout_s: float) -> ResponseRecord | None:
        """Notified with the result itself (``hqm.queue.redis_wait``); polls as well."""
        return await self._replies.wait(request_id, timeout_s)

    # --- worker side --------------------------------------------------------
    async def claim(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        """While there is a backlog: non-blocking, in the same script call as the
        outcomes of this loop turn (no round trip of its own, entries marked processing
        there, its reply one packed string). Otherwise, or when it found nothing,
        XREADGROUP BLOCK."""
        entries: list[tuple[str, bytes, bytes, bool]] = []
        if self._backlog or block_s <= 0:
            entries = await self._claim_now(consumer, count)
        if not entries and block_s > 0:  # BLOCK 0 would wait forever
            streams, block = {self.keys.stream: ">"}, max(1, round(block_s * 1000))

            async def read() -> Any:
                async with asyncio.timeout(block_s + self._timeout):
                    return await self._clients.blocking.xreadgroup(
                        GROUP, consumer, streams, count=count, block=block
                    )

            reply = await self._grouped("claim", read)
            entries = [
                (_s(i), f.get(b"r", b""), f.get(b"a", b"0"), False) for i, f in _entries(reply)
            ]
        self._backlog = len(entries) >= count
        return await self._deliver(entries, {}, 1)

    async def _claim_now(self, consumer: str, count: int) -> list[tuple[str, bytes, bytes, bool]]:
        for retry in (True, False):
            if self._outcomes.busy:  # do not queue behind the round trip in flight
                blob = (await self._finish([("n", "", [consumer, count])], own=False))[0]
            else:  # with the outcomes of this loop turn, in one round trip
                blob = await self._outcomes.submit(("n", "", [consumer, count]))
            if blob is None or blob[:1] != bytes((CLAIM_ERROR,)):
                return unpack_claimed(blob or b"")
            error = blob[1:].decode("utf-8", "replace")
            if "NOGROUP" not in error or not retry:
                raise QueueUnavailable(f"redis claim failed: {error}")
            with _errors("claim"):  # Redis restarted empty: the group again, then retry
                await self._create_group()
        return []

    async def reclaim(self, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        stream, idle_ms = self.keys.stream, max(0, round(min_idle_s * 1000))

        async def autoclaim() -> Any:
            return await self._redis.xautoclaim(
                stream, GROUP, consumer, idle_ms, start_id=self._cursor, count=count
            )

        reply = await self._grouped("reclaim", autoclaim)
        self._cursor = _s(reply[0])  # entries deleted meanwhile (reply[2]) are dropped
        entries = [(_s(i), f.get(b"r", b""), f.get(b"a", b"0"), False) for i, f in reply[1] if f]
        if not entries:
            return []
        with _errors("reclaim"):
            pipe = self._redis.pipeline(transaction=False)
            for entry_id, _, _, _ in entries:
                pipe.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        counts = {_s(p[0]["message_id"]): int(p[0]["times_delivered"]) for p in pending if p}
        return await self._deliver(entries, counts, 2)

    async def _deliver(
        self,
        entries: list[tuple[str, bytes, bytes, bool]],
        counts: dict[str, int],
        default: int,
    ) -> list[Delivery]:
        """``entries``: (entry id, record, attempt, already marked processing)."""
        deliveries: list[Delivery] = []
        unmarked: list[Delivery] = []
        for entry_id, raw, raw_attempt, marked in entries:
            try:
                record, attempt = decode_request(raw), int(raw_attempt)
            except ValueError as exc:  # EnvelopeError included
                log.error("dead-lettering corrupt entry %s of %s: %s", entry_id, self.name, exc)
                with contextlib.suppress(QueueUnavailable):  # else reclaimed and retried
                    await self._dead(entry_id, raw, f"corrupt entry: {exc}", 0, None, b"")
                continue
            delivery = Delivery(entry_id, record, counts.get(entry_id, default), attempt)
            deliveries.append(delivery)
            if not marked:
                unmarked.append(delivery)
        # Status "processing", best effort (the entries are ours whether or not it lands):
        # sent with the next round trip, within _MARK_WITHIN_S, not awaited; it costs no
        # round trip of its own when the outcome follows soon (it then rides with it,
        # and lands first), and never delays the replay.
        for d in unmarked:
            state = _state(Status.PROCESSING, d.attempt)
            self._outcomes.post(("p", d.record.id, [state]), _MARK_WITHIN_S)
        return deliveries

    async def touch(self, consumer: str, entry_ids: list[str]) -> None:
        if entry_ids:
            keys, args = [self.keys.stream], [consumer, *entry_ids]
            await self._grouped("touch", lambda: self._lua("touch", keys, args))

    async def complete(self, delivery: Delivery, response: ResponseRecord) -> None:
        """Batched with the other outcomes of this loop turn: one round trip for all."""
        record = delivery.record
        result = b"" if record.mode == "fire" else encode_response(response)
        state = _state(Status.DONE, response.attempts, response.error)
        message = notification(record.id, result) if record.reply_to else b""
        args = [delivery.entry_id, result, state, record.reply_to, message]
        await self._outcomes.submit(("c", record.id, args))

    async def retry_later(self, delivery: Delivery, due_at: float, error: str) -> None:
        record, attempt = delivery.record, delivery.attempt + 1
        request_id = record.id.encode()
        member = _MEMBER.pack(attempt, len(request_id), secrets.token_bytes(8))
        member += request_id + encode_request(record)
        state = _state(Status.RETRYING, attempt, error)
        args = [delivery.entry_id, repr(float(due_at)), member, state]
        await self._outcomes.submit(("r", record.id, args))

    async def promote_due(self, now: float) -> int:
        keys = [self.keys.stream, self.keys.delayed]
        args = [repr(float(now)), _PROMOTE_LIMIT, self.keys.state(""), self._ttl_ms]
        return int(await self._script("promote_due", "promote", keys, args))

    async def dead_letter(self, delivery: Delivery, error: str, attempts: int) -> None:
        record = delivery.record
        result = b""
        if record.mode != "fire":
            response = error_response(502, error, attempts=attempts, now=self._now())
            result = encode_response(response)
        raw = encode_request(record)
        await self._dead(delivery.entry_id, raw, error, attempts, record, result)

    async def _dead(
        self,
        entry_id: str,
        raw: bytes,
        error: str,
        attempts: int,
        record: RequestRecord | None,
        result: bytes,
    ) -> None:
        request_id = record.id if record is not None else ""
        state = _state(Status.DEAD, attempts, error) if record is not None else b""
        reply_to = record.reply_to if record is not None else ""
        message = notification(request_id, result) if reply_to else b""
        args = [entry_id, raw, error, attempts, repr(float(self._now())), result, state]
        await self._outcomes.submit(("d", request_id, [*args, reply_to, message]))

    async def _finish(
        self, batch: list[tuple[str, str, list[Any]]], *, own: bool = True
    ) -> list[bytes | None]:
        """One EVALSHA for every outcome and claim of the batch (script ``finish``)."""
        keys = [self.keys.stream, self.keys.delayed, self.keys.dlq]
        args = [self._ttl_ms, self.keys.prefix]
        args += (pack_item(op, request_id, *item_args) for op, request_id, item_args in batch)
        # (own: the flusher's connection; one flush is in flight at a time)
        claimed = iter(await self._script("finish", "finish", keys, args, own=own))
        return [next(claimed) if op == "n" else None for op, _, _ in batch]

    async def release(self, consumer: str) -> None:
        stream = self.keys.stream

        async def run() -> None:
            held = await self._redis.xpending_range(
                stream, GROUP, min="-", max="+", count=1, consumername=consumer
            )
            if not held:
                await self._redis.xgroup_delconsumer(stream, GROUP, consumer)

        await self._grouped("release", run)

    # --- admin --------------------------------------------------------------
    async def depth(self) -> int:
        with _errors("depth"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(self.keys.stream)
            pipe.zcard(self.keys.delayed)
            waiting, delayed = await pipe.execute()
        return int(waiting) + int(delayed)

    @staticmethod
    def _letter(raw_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
        raw = fields.get(b"r", b"")
        try:
            record = decode_request(raw)
        except ValueError:
            record = RequestRecord(id="", method=b"", target=b"", headers=(), body=raw)
        return DeadLetter(
            entry_id=_s(raw_id),
            record=record,
            error=_s(fields.get(b"error", b"")),
            attempts=int(fields.get(b"attempts", b"0")),
            dead_at=float(fields.get(b"dead_at", b"0")),
        )

    async def dead_letters(self, count: int = 100, after: str | None = None) -> list[DeadLetter]:
        start = f"({after}" if after else "-"
        if after and not _ENTRY_ID.fullmatch(after):
            return []
        with _errors("dead_letters"):
            entries = await self._redis.xrange(self.keys.dlq, start, "+", count=count)
        return [self._letter(i, f) for i, f in entries if f is not None]

    async def dead_letter_get(self, entry_id: str) -> DeadLetter | None:
        if not _ENTRY_ID.fullmatch(entry_id):
            return None
        with _errors("dead_letter_get"):
            entries = await self._redis.xrange(self.keys.dlq, entry_id, entry_id, count=1)
        return self._letter(*entries[0]) if entries and entries[0][1] is not None else None

    async def replay_dead_letter(self, entry_id: str) -> bool:
        letter = await self.dead_letter_get(entry_id)
        if letter is None or not letter.record.id:
            return False  # unknown, or a corrupt entry that cannot be replayed
        request_id = letter.record.id
        keys = [
            self.keys.dlq,
            self.keys.stream,
            self.keys.result(request_id),
            self.keys.state(request_id),
        ]
        args = [letter.entry_id, _QUEUED, self._ttl_ms, request_id]
        return bool(await self._script("replay_dead_letter", "replay", keys, args))

    async def purge_dead_letters(self) -> int:
        return int(await self._script("purge_dead_letters", "purge", [self.keys.dlq], []))

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), self._timeout))
        except Exception:
            return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        closed = QueueUnavailable("queue closed")
        await self._enqueues.close(self._timeout, closed)  # let the batch in flight land
        await self._outcomes.close(self._timeout, closed)
        with contextlib.suppress(Exception):
            await self._lua.close()
        await self._replies.close()
        for client in (self._clients.main, self._clients.blocking, *self._clients.extra):
            with contextlib.suppress(Exception):
                await client.aclose()
