"""Wait-mode clients held for their result (``Prefer: wait``), and their release when
the drain runs out: each is then answered as async (202 + Location: its request is
stored and will run), never closed without learning its id."""

from __future__ import annotations

import asyncio

from hqm.queue.base import Queue, StoredResult


class HeldWaits:
    __slots__ = ("_held", "released")

    def __init__(self) -> None:
        self._held: set[asyncio.Timeout] = set()
        #: Once released, a wait ends before it starts.
        self.released = False

    async def wait(self, queue: Queue, request_id: str, timeout_s: float) -> StoredResult | None:
        """``queue.wait_stored``; None at once once released."""
        if self.released:
            return None
        try:
            async with asyncio.timeout(None) as held:
                self._held.add(held)
                try:
                    return await queue.wait_stored(request_id, timeout_s)
                finally:
                    self._held.discard(held)
        except TimeoutError:
            if not held.expired():
                raise  # not ours
            return None

    def release(self) -> int:
        """End every wait now (and any later one at once); returns how many were held."""
        self.released = True
        now = asyncio.get_running_loop().time()
        held = list(self._held)
        for timeout in held:
            timeout.reschedule(now)
        return len(held)
