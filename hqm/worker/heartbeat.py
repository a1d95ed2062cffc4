"""A worker's liveness, as ``hqm status`` and the ``hqm_queue_consumers`` gauge read it.

Every ``--heartbeat`` seconds the worker writes, per queue, one key of its own that
expires after ``TTL_INTERVALS`` of them (``QueueKeys.heartbeat``), and makes sure the
group lists its consumer (XGROUP CREATECONSUMER: Redis lists a consumer only from its
first entry, so an idle worker would not be listed); a clean exit deletes the key. A
consumer is alive while its key exists: consumer idle time cannot tell, it grows while
a worker blocks in XREADGROUP on an empty queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds between heartbeats: a killed worker shows as dead within 15 s (3 of them),
#: for one round trip (SET + XGROUP CREATECONSUMER) per queue every 5 s.
HEARTBEAT_S = 5.0
#: A heartbeat key lives this many intervals: two writes may be late (a slow Redis, a
#: long pause of the worker's loop) before a live worker shows as dead.
TTL_INTERVALS = 3


class Heartbeat:
    """When the next heartbeat is due (the worker's maintenance writes it)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next = 0.0

    @property
    def ttl_s(self) -> float:
        return self.interval_s * TTL_INTERVALS

    def due(self) -> bool:
        """A heartbeat should be written now (until one was, each round tries again)."""
        return self._clock() >= self._next

    def written(self) -> None:
        self._next = self._clock() + self.interval_s
