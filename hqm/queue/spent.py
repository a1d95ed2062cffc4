"""Single-use tokens spent in this process (the embedded queue's ``Queue.spend``; with
Redis they are keys, hqm.queue.keys ``spent``): remembered until they expire, and at
most MAX_SPENT_TOKENS at once, so a flood of replays cannot grow memory without end."""

from __future__ import annotations

from collections import OrderedDict

from hqm.proto.limits import MAX_SPENT_TOKENS
from hqm.queue.base import QueueFull


class SpentTokens:
    __slots__ = ("_expiry",)

    def __init__(self) -> None:
        #: Token -> expiry. One TTL for all: insertion order is expiry order.
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def spend(self, token: str, ttl_s: float, now: float) -> bool:
        """True the first time ``token`` is spent, False while it is remembered;
        QueueFull when MAX_SPENT_TOKENS unexpired ones are held (none is forgotten
        early: forgetting a valid one would let it be spent again)."""
        expiry = self._expiry
        while expiry and next(iter(expiry.values())) <= now:
            expiry.popitem(last=False)
        if token in expiry:
            return False
        if len(expiry) >= MAX_SPENT_TOKENS:
            raise QueueFull(f"{MAX_SPENT_TOKENS} spent tokens remembered (replays too fast)")
        expiry[token] = now + ttl_s
        return True
