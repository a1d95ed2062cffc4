"""``--concurrency`` as slots: requests at the app, or on their way to it, at once.

A hard cap. Claims are sized to the free slots, so a delivery normally takes one at
once; one that cannot (an idle queue's blocking read answered while the slots were
full, or a delivery whose app is back after an outage) waits its turn, first come
first served. A delivery waiting for an app that cannot be reached gives its slot
back meanwhile (it is parked): one app down does not hold the slots the other apps'
requests need (docs/architecture.md §5).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class Slots:
    def __init__(self, limit: int, on_free: Callable[[], None]) -> None:
        self.limit = limit
        self.taken = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._on_free = on_free

    @property
    def free(self) -> int:
        """Slots nobody holds or waits for (negative while deliveries wait)."""
        return self.limit - self.taken - len(self._waiters)

    def try_take(self) -> bool:
        if self.taken < self.limit and not self._waiters:
            self.taken += 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # granted as it was cancelled: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        self.taken -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.taken += 1
                waiter.set_result(None)
                return
        self._on_free()


class Seat:
    """One delivery's hold on a slot: taken when it starts (or as soon as one is free),
    given back once the app answered, and while the delivery is parked.

    ``on_park(+1)`` when it first parks and ``on_park(-1)`` when it finishes: it counts
    as parked until then, also while it goes out as a probe, so a queue's parked count
    does not dip (and let more be claimed) with every probe.
    """

    __slots__ = ("_on_park", "_slots", "held", "parked")

    def __init__(self, slots: Slots, *, on_park: Callable[[int], None]) -> None:
        self._slots = slots
        self._on_park = on_park
        self.held = slots.try_take()
        self.parked = False

    async def acquire(self) -> None:
        if not self.held:
            await self._slots.take()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._slots.give()

    def park(self) -> None:
        """Waiting for an app that cannot be reached: the slot goes to others."""
        if not self.parked:
            self.parked = True
            self._on_park(1)
        self.release()

    async def unpark(self) -> None:
        """May go again: a slot first."""
        await self.acquire()

    def finish(self) -> None:
        if self.parked:
            self.parked = False
            self._on_park(-1)
        self.release()
