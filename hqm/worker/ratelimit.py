"""A hard requests/second limit (GCRA: each caller reserves the next free slot)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    """``await acquire()`` returns no more often than ``rate`` times per second overall.

    Reservations are spaced exactly ``1/rate`` apart from the previous one, so a late
    wake-up does not lose capacity and the long-run rate is exactly ``rate``.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = 0.0

    async def acquire(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)
