"""The dead-letter stream of a Redis queue: list, get, replay, purge
(docs/architecture.md §4 and §5).

Letters are written by the worker's ``finish`` script (hqm.queue.redis_lua), which
XADDs them with ``*``: stream order, hence id order, is the order in which they were
dead-lettered, within one millisecond too (the sequence part counts up). Listing is
XRANGE in that order; paging goes on from an id, exclusive, whether or not the letter
of that id is still there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hqm.queue.base import DeadLetter
from hqm.queue.entry_ids import parse_entry_id
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import QUEUED, dead_letter, errors

#: ``RedisQueue._script``: (op, script name, keys, args) -> its reply.
RunScript = Callable[[str, str, list[Any], list[Any]], Awaitable[Any]]


class DeadLetters:
    def __init__(self, redis: Any, keys: QueueKeys, script: RunScript, ttl_ms: int) -> None:
        self._redis = redis
        self._keys = keys
        self._script = script
        self._ttl_ms = ttl_ms

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
        keys = [
            self._keys.dlq,
            self._keys.stream,
            self._keys.result(request_id),
            self._keys.state(request_id),
        ]
        args = [letter.entry_id, QUEUED, self._ttl_ms, request_id]
        return bool(await self._script("replay_dead_letter", "replay", keys, args))

    async def purge(self) -> int:
        return int(await self._script("purge_dead_letters", "purge", [self._keys.dlq], []))
