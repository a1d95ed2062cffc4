"""The worker's side of what the whole fleet of a queue shares through the queue
backend: ``--global-rate`` / ``--global-burst`` (a rate the app's 429/503 lower for
everyone), ``--global-concurrency`` (leases), and pauses the app asks for with
Retry-After on a 429 or 503 (docs/architecture.md §5)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from hqm.queue.base import FleetLimits, QueueError

#: A lease lapses unless renewed this often; the worker renews its leases every
#: maintenance period (1 s at most), so a dead worker's slots return within this.
LEASE_TTL_S = 5.0
#: Waiting for a free lease: first retry after ..., doubling up to ...
_LEASE_RETRY_S = (0.01, 0.2)


class FleetGate:
    def __init__(
        self,
        limits: FleetLimits | None,
        *,
        holder: str = "",
        rate: float = 0.0,
        burst: int = 1,
        concurrency: int = 0,
        on_rate: Callable[[float], None] = lambda rate: None,
    ) -> None:
        self._limits = limits
        self._holder = holder
        self._rate = rate
        self._burst = burst
        self._concurrency = concurrency
        self._on_rate = on_rate
        self._leased: set[str] = set()
        self._reserving = asyncio.Lock()
        self._pause_only = _PauseOnly(self)
        #: Answers since the last reservation, reported with the next one.
        self._successes = 0
        self._throttled = 0
        #: What this worker knows of the queue's pause (monotonic deadline).
        self._paused_until = 0.0
        if rate:
            on_rate(rate)

    def slot(self, entry_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Around one send: wait out a pause, hold a lease (--global-concurrency) and
        take a rate slot (--global-rate). Without global limits only the pause is
        checked, by a shared object: no generator per request on the worker's hot path."""
        if self._limits is None or not (self._rate or self._concurrency):
            return self._pause_only
        return self._shared_slot(entry_id)

    @contextlib.asynccontextmanager
    async def _shared_slot(self, entry_id: str) -> AsyncIterator[None]:
        await self._wait_pause()
        limits = self._limits
        assert limits is not None
        holder = f"{self._holder}/{entry_id}"
        leased = bool(self._concurrency)
        if leased:
            await self._take(limits, holder)
        try:
            if self._rate:
                # One reservation of this worker at a time: none is taken far ahead, so
                # a pause or a lower rate holds back all but that one.
                async with self._reserving:
                    successes, throttled = self._successes, self._throttled
                    self._successes = self._throttled = 0
                    slot = await limits.reserve(
                        self._rate, self._burst, successes=successes, throttled=throttled
                    )
                    self._on_rate(slot.effective_rate)
                    if slot.wait_s > 0:
                        await asyncio.sleep(slot.wait_s)
                await self._wait_pause()  # one this worker learned of meanwhile
            yield
        finally:
            if leased:
                self._leased.discard(holder)
                with contextlib.suppress(QueueError):  # else it lapses by itself
                    await limits.release(holder)

    async def _wait_pause(self) -> None:
        left = self._paused_until - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)

    async def _take(self, limits: FleetLimits, holder: str) -> None:
        delay, cap = _LEASE_RETRY_S
        while not await limits.lease(holder, self._concurrency, LEASE_TTL_S):
            await asyncio.sleep(delay)
            delay = min(cap, delay * 2)
        self._leased.add(holder)

    def succeeded(self) -> None:
        self._successes += 1

    async def throttled(self, retry_after_s: float | None) -> None:
        """The app answered 429/503: slow the fleet down; with Retry-After, pause it."""
        self._throttled += 1
        if retry_after_s:
            self._paused_until = max(self._paused_until, time.monotonic() + retry_after_s)
            if self._limits is not None:
                with contextlib.suppress(QueueError):  # this worker pauses all the same
                    await self._limits.pause(retry_after_s)

    async def refresh(self) -> None:
        """Periodic: renew our leases, learn of pauses other workers were asked for."""
        if self._limits is None:
            return
        if self._leased:
            await self._limits.renew(sorted(self._leased), LEASE_TTL_S)
        left = await self._limits.paused_for()
        if left > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + left)

    async def close(self) -> None:
        if self._limits is not None:
            await self._limits.close()


class _PauseOnly:
    """``FleetGate.slot`` without global limits: only a pause the app asked for holds a
    send back."""

    __slots__ = ("_gate",)

    def __init__(self, gate: FleetGate) -> None:
        self._gate = gate

    async def __aenter__(self) -> None:
        await self._gate._wait_pause()

    async def __aexit__(self, *exc: object) -> None:
        return None
