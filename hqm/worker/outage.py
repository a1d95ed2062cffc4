"""The worker while its queue cannot be reached (Redis down, restarting, stopped).

Claim rounds that fail are retried with a capped exponential backoff with full jitter
(``hqm.worker.retry.backoff_s``), not at a fixed pace; the log gets one warning when
the outage starts and one line when Redis answers again, with the number of failed
rounds (``hqm.ops.trouble``), as the proxy logs its own queue failures.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from hqm.ops.trouble import Trouble
from hqm.worker.retry import backoff_s

log = logging.getLogger("hqm.worker.loop")

#: First pause after a failed claim round: a Redis that blinked (a failover, a dropped
#: connection) is found again at once ...
FIRST_BACKOFF_S = 0.1
#: ... doubled per failed round up to this: a Redis that stays down costs one round
#: (a connection attempt per call) per 5 s at most, and its return is seen within 5 s.
MAX_BACKOFF_S = 5.0


class QueueUnreachable(Exception):
    """Burst mode gave up on a queue that stayed unreachable."""


class Outage:
    """Failed claim rounds in a row: how long to pause after each, and the log."""

    def __init__(
        self,
        *,
        burst_timeout_s: float | None,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Burst mode: give up once unreachable this long (a batch job must end).
        self._burst_timeout_s = burst_timeout_s
        self._rng = rng
        self._clock = clock
        self._since: float | None = None
        #: Rounds failed in a row (on the queue, or a bug's): the backoff's exponent.
        self._streak = 0
        self._trouble = Trouble(
            "claim loop",
            logger=log,
            effect=f"retried with backoff up to {MAX_BACKOFF_S:g} s",
            details=1,  # one outage, one warning: its calls (claim, promote, ...) fail alike
        )

    def failed(self, exc: Exception) -> float:
        """A round failed on the queue: the pause before the next (QueueUnreachable
        when burst mode has waited long enough)."""
        now = self._clock()
        self._since = self._since if self._since is not None else now
        limit = self._burst_timeout_s
        if limit is not None and now - self._since >= limit:
            raise QueueUnreachable(f"queue unreachable for {limit:g} s in burst mode: {exc}")
        self._trouble.failed(exc)
        return self.pause_s()

    def pause_s(self) -> float:
        """Another round failed (on the queue, or a bug's: retried too): the pause."""
        self._streak += 1
        return backoff_s(self._streak, base_s=FIRST_BACKOFF_S, max_s=MAX_BACKOFF_S, rng=self._rng)

    def answered(self) -> None:
        """The queue answered a call: the outage, if any, is over."""
        self._since, self._streak = None, 0
        if self._trouble.failing:
            self._trouble.recovered()
