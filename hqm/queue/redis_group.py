"""The consumer group of a queue's stream (docs/architecture.md §4 and §5).

Created at start (idempotent), and again whenever a command meets NOGROUP (Redis
restarted empty); entries held by a consumer for longer than the visibility timeout
taken over (XAUTOCLAIM) with their delivery counts; a consumer forgotten at clean
shutdown once it holds nothing. And what a claim reads: entries as stored, decoded
into deliveries, those that do not decode into dead letters.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from hqm.queue.base import Delivery
from hqm.queue.keys import GROUP
from hqm.queue.redis_codec import (
    Corrupt,
    Item,
    dead_item,
    decode_entry,
    errors,
    log,
    text,
    valid_request_id,
)
from hqm.queue.redis_lua import ATTEMPT, RECORD, REQUEST_ID

#: A stream entry read back, fields as stored: (entry id, record, attempt, request id).
Entry = tuple[str, bytes, bytes, bytes]
_F_RECORD, _F_ATTEMPT, _F_ID = RECORD.encode(), ATTEMPT.encode(), REQUEST_ID.encode()
#: One entry in a claim reply (redis_lua op ``claim``): lengths of entry id (u8),
#: attempt, request id and record (u32 each), then the four strings.
_CLAIMED = struct.Struct(">BIII")


def entries(items: list[Any]) -> list[Entry]:
    """Stream entries as XREADGROUP or XAUTOCLAIM return them; entries deleted
    meanwhile (no fields) are left out."""
    return [
        (text(i), f.get(_F_RECORD, b""), f.get(_F_ATTEMPT, b"0"), f.get(_F_ID, b""))
        for i, f in items
        if f
    ]


def read_entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply on one stream (None: nothing came)."""
    return entries(reply[0][1]) if reply else []


def unpack_claimed(blob: bytes) -> list[Entry]:
    """Entries of a claim reply: (entry id, record, attempt, request id), the fields as
    stored (not decoded yet)."""
    out, pos, end = [], 0, len(blob)
    while pos < end:
        id_len, attempt_len, rid_len, record_len = _CLAIMED.unpack_from(blob, pos)
        pos += _CLAIMED.size
        entry_id = blob[pos : pos + id_len].decode("ascii")
        pos += id_len
        attempt = blob[pos : pos + attempt_len]
        pos += attempt_len
        rid = blob[pos : pos + rid_len]
        pos += rid_len
        out.append((entry_id, blob[pos : pos + record_len], attempt, rid))
        pos += record_len
    return out


def decode_entries(
    got: list[Entry], counts: dict[str, int], default: int, now: float
) -> tuple[list[Delivery], list[Item]]:
    """The deliveries of claimed entries (``counts``: delivery count by entry id, else
    ``default``), and an op ``dead`` for each one that does not decode."""
    deliveries: list[Delivery] = []
    corrupt: list[Item] = []
    for entry_id, raw, raw_attempt, raw_id in got:
        try:
            record, attempt = decode_entry(raw, raw_attempt)
        except Corrupt as exc:
            log.error("dead-lettering corrupt entry %s: %s", entry_id, exc)
            rid = valid_request_id(raw_id) or ""  # its state and result, if known
            corrupt.append(dead_item(entry_id, raw, f"corrupt entry: {exc}", 0, now, rid))
            continue
        deliveries.append(Delivery(entry_id, record, counts.get(entry_id, default), attempt))
    return deliveries, corrupt


class ConsumerGroup:
    def __init__(self, redis: Any, stream: str) -> None:
        self._redis = redis
        self._stream = stream
        #: Where the next XAUTOCLAIM scan goes on from (it wraps to 0-0 at the end).
        self._cursor = "0-0"

    async def create(self) -> None:
        """XGROUP CREATE (MKSTREAM); an existing group is fine."""
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, op: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``call``; on NOGROUP (Redis restarted empty) create the group and retry once.
        Failures surface as QueueUnavailable."""
        with errors(op):
            try:
                return await call()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.create()
                return await call()

    async def take_over(
        self, consumer: str, min_idle_s: float, count: int
    ) -> tuple[list[Entry], dict[str, int]]:
        """Up to ``count`` entries idle for ``min_idle_s``, now ``consumer``'s, and how
        many times each has been delivered (this time included)."""
        stream, idle_ms = self._stream, max(0, round(min_idle_s * 1000))

        async def autoclaim() -> Any:
            return await self._redis.xautoclaim(
                stream, GROUP, consumer, idle_ms, start_id=self._cursor, count=count
            )

        reply = await self.run("reclaim", autoclaim)
        self._cursor = text(reply[0])  # entries deleted meanwhile (reply[2]) are dropped
        got = entries(reply[1])
        if not got:
            return [], {}
        with errors("reclaim"):
            pipe = self._redis.pipeline(transaction=False)
            for entry_id, _, _, _ in got:
                pipe.xpending_range(stream, GROUP, min=entry_id, max=entry_id, count=1)
            pending = await pipe.execute()
        counts = {text(p[0]["message_id"]): int(p[0]["times_delivered"]) for p in pending if p}
        return got, counts

    async def heartbeat(self, consumer: str, key: str, ttl_s: float) -> None:
        """SET ``key`` (``consumer``'s liveness) to expire after ``ttl_s``, and the
        consumer in the group (XGROUP CREATECONSUMER): one round trip."""

        async def beat() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(key, b"1", px=max(1, round(ttl_s * 1000)))
            pipe.xgroup_createconsumer(self._stream, GROUP, consumer)
            written, listed = await pipe.execute(raise_on_error=False)
            if isinstance(written, Exception):
                raise written
            if isinstance(listed, ResponseError):  # Redis restarted empty: no stream yet
                await self.create()
                await self._redis.xgroup_createconsumer(self._stream, GROUP, consumer)

        await self.run("heartbeat", beat)

    async def release(self, consumer: str, heartbeat: str) -> None:
        """Delete the ``heartbeat`` key; XGROUP DELCONSUMER, unless ``consumer`` still
        holds entries."""

        async def release() -> None:
            await self._redis.delete(heartbeat)
            held = await self._redis.xpending_range(
                self._stream, GROUP, min="-", max="+", count=1, consumername=consumer
            )
            if not held:
                await self._redis.xgroup_delconsumer(self._stream, GROUP, consumer)

        await self.run("release", release)
