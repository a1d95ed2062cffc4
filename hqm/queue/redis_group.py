"""The consumer group of a queue's stream (docs/architecture.md §4 and §5).

Created at start (idempotent), and again whenever a command meets NOGROUP (Redis
restarted empty); entries held by a consumer for longer than the visibility timeout
taken over (XAUTOCLAIM) with their delivery counts; a consumer forgotten at clean
shutdown once it holds nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from hqm.queue.keys import GROUP
from hqm.queue.redis_codec import Entry, entries, errors, text


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

    async def release(self, consumer: str) -> None:
        """XGROUP DELCONSUMER, unless ``consumer`` still holds entries."""

        async def release() -> None:
            held = await self._redis.xpending_range(
                self._stream, GROUP, min="-", max="+", count=1, consumername=consumer
            )
            if not held:
                await self._redis.xgroup_delconsumer(self._stream, GROUP, consumer)

        await self.run("release", release)
