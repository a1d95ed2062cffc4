"""The dead-letter stream of a Redis queue: list, get, replay, purge
(docs/architecture.md §4 and §5).

Letters are decoded defensively: whatever a field holds, a letter comes back (a
corrupt record as a placeholder that cannot be replayed, unreadable numbers as 0).
They are written by the worker's ``finish`` script (hqm.queue.redis_lua), which
XADDs them with ``*``: stream order, hence id order, is the order in which they were
dead-lettered, within one millisecond too (the sequence part counts up). Listing is
XRANGE in that order; paging goes on from an id, exclusive, whether or not the letter
of that id is still there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from hqm.proto.envelope import RequestRecord
from hqm.queue.base import DeadLetter, Status
from hqm.queue.entry_ids import parse_entry_id
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import (
    ATTEMPT_DIGITS,
    Corrupt,
    decode_record,
    errors,
    record_state,
    text,
)
from hqm.queue.redis_lua import PURGE, RECORD, REPLAY, Script

_LATEST_TS = 253402300799.0  # 9999-12-31T23:59:59Z: any later time cannot be shown


def _shown(value: float) -> float:
    """A time a user can be shown (epoch seconds, 0 to year 9999); 0.0 otherwise."""
    return value if math.isfinite(value) and 0.0 <= value <= _LATEST_TS else 0.0


def _timestamp(raw: bytes) -> float:
    try:
        return _shown(float(raw))
    except (ValueError, TypeError):
        return 0.0


def dead_letter(raw_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    """A dead-letter stream entry. A corrupt record (undecodable envelope, unusable id)
    comes back as an empty placeholder (id "", the raw bytes as body), which cannot be
    replayed; unreadable attempts and times as 0."""
    raw = fields.get(RECORD.encode(), b"")
    try:
        record = decode_record(raw)
        if _shown(record.received_at) != record.received_at:
            record = replace(record, received_at=0.0)
    except Corrupt:
        record = RequestRecord(id="", method=b"", target=b"", headers=(), body=raw)
    attempts = fields.get(b"attempts", b"0")
    return DeadLetter(
        entry_id=text(raw_id),
        record=record,
        error=text(fields.get(b"error", b"")),
        attempts=int(attempts) if ATTEMPT_DIGITS.fullmatch(attempts) else 0,
        dead_at=_timestamp(fields.get(b"dead_at", b"0")),
    )


#: ``RedisQueue._script``: (op, script, keys, args) -> its reply.
RunScript = Callable[[str, Script, list[Any], list[Any]], Awaitable[Any]]


class DeadLetters:
    def __init__(
        self,
        redis: Any,
        keys: QueueKeys,
        script: RunScript,
        ttl_ms: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._script = script
        self._ttl_ms = ttl_ms
        self._now = clock

    async def page(self, count: int, after: str | None) -> list[DeadLetter]:
        """Oldest first (dead-letter order); ``after`` an id to page on from (exclusive)."""
        if after and parse_entry_id(after) is None:
            return []
        start = f"({after}" if after else "-"
        with errors("dead_letters"):
            found = await self._redis.xrange(self._keys.dlq, start, "+", count=count)
        return [dead_letter(i, f) for i, f in found if f is not None]

    async def get(self, entry_id: str) -> DeadLetter | None:
        if parse_entry_id(entry_id) is None:
            return None
        with errors("dead_letter_get"):
            found = await self._redis.xrange(self._keys.dlq, entry_id, entry_id, count=1)
        return dead_letter(*found[0]) if found and found[0][1] is not None else None

    async def replay(self, entry_id: str) -> bool:
        """Queue the letter again as a fresh request (one atomic step: script ``replay``)."""
        letter = await self.get(entry_id)
        if letter is None or not letter.record.id:
            return False  # unknown, or a corrupt entry that cannot be replayed
        request_id = letter.record.id
        keys, args = REPLAY.bind(
            dlq=self._keys.dlq,
            stream=self._keys.stream,
            result_key=self._keys.result(request_id),
            state_key=self._keys.state(request_id),
            letter=letter.entry_id,
            id=request_id,
            state=record_state(letter.record, Status.QUEUED, now=self._now(), entry_slot=True),
            ttl_ms=self._ttl_ms,
        )
        return bool(await self._script("replay_dead_letter", REPLAY, keys, args))

    async def purge(self) -> int:
        keys, args = PURGE.bind(dlq=self._keys.dlq)
        return int(await self._script("purge_dead_letters", PURGE, keys, args))
