"""Fleet limits of the embedded queue: its one in-process worker is the whole fleet.
The same rules as the Redis scripts (hqm.queue.redis_limits), on this process's clock."""

from __future__ import annotations

import time
from collections.abc import Callable

from hqm.queue.base import (
    DECREASE_EVERY_S,
    FLOOR_SHARE,
    STEP_SHARE,
    FleetLimits,
    Reservation,
)


def adjusted(rate: float, cap: float, *, successes: int, throttled: bool) -> float:
    """AIMD: the enforced rate after the answers since the last reservation."""
    if throttled:
        return max(cap * FLOOR_SHARE, rate / 2)
    return min(cap, rate + successes * cap * STEP_SHARE)


class MemoryLimits(FleetLimits):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next = 0.0  # GCRA: theoretical arrival time of the next request
        self._rate: float | None = None
        self._decreased_at = float("-inf")
        self._paused_until = 0.0
        self._leases: dict[str, float] = {}

    async def reserve(
        self, rate: float, burst: int, *, successes: int = 0, throttled: int = 0
    ) -> Reservation:
        now = self._clock()
        down = bool(throttled) and now - self._decreased_at >= DECREASE_EVERY_S
        if down:
            self._decreased_at = now
        current = rate if self._rate is None else min(self._rate, rate)
        self._rate = adjusted(current, rate, successes=successes, throttled=down)
        interval = 1.0 / self._rate
        due = max(self._next, now)
        at = max(now, due - (burst - 1) * interval, self._paused_until)
        self._next = max(due, at) + interval
        return Reservation(at - now, self._rate)

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def lease(self, holder: str, limit: int, ttl_s: float) -> bool:
        now = self._clock()
        self._leases = {h: t for h, t in self._leases.items() if t > now}
        if holder in self._leases or len(self._leases) < limit:
            self._leases[holder] = now + ttl_s
            return True
        return False

    async def renew(self, holders: list[str], ttl_s: float) -> None:
        until = self._clock() + ttl_s
        for holder in holders:
            if holder in self._leases:
                self._leases[holder] = until

    async def release(self, holder: str) -> None:
        self._leases.pop(holder, None)

    async def close(self) -> None:
        self._leases.clear()
