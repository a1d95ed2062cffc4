"""The process-wide budget of response bytes in flight (``--max-inflight-bytes``).

Every response body a process holds counts against one budget: on the proxy the
pieces of a result being streamed to a client and a wait-mode answer being written;
on the worker an app's answer being received until it is recorded in the queue. What
happens beyond the budget is the caller's choice, and each side makes a different one:

- the proxy answers ``503`` + ``Retry-After`` (``try_take`` refuses): the client asks
  again later, nothing is lost since the result stays stored;
- the worker pauses reading answers (``Hold.charge`` then ``blocked``): the app's
  bytes wait in the socket buffers, the worker claims nothing new meanwhile, and the
  oldest answer always goes on, so the answers in hand finish, are recorded, and give
  their bytes back. Failing an answer instead would spend an attempt of a request the
  app has already executed.

No IO and no clock: callers pass callbacks to be told when bytes come back.
"""

from __future__ import annotations

from collections.abc import Callable


class ByteBudget:
    """``limit`` bytes; ``used`` never exceeds it through ``try_take``, and exceeds it
    through ``Hold.charge`` by at most one answer (the oldest hold, never paused)."""

    __slots__ = ("_holds", "_on_free", "held", "limit", "refused", "used")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a byte budget needs a positive limit")
        self.limit = limit
        self.used = 0
        #: The part of ``used`` charged to holds (answers being received).
        self.held = 0
        #: Requests refused for want of budget (the proxy's 503s), for the metrics.
        self.refused = 0
        #: Holds with bytes charged, oldest first (dicts keep insertion order).
        self._holds: dict[Hold, None] = {}
        self._on_free: list[Callable[[], None]] = []

    @property
    def over(self) -> bool:
        return self.used >= self.limit

    @property
    def answers_over(self) -> bool:
        """The answers in hand alone fill the budget (a worker claims nothing more;
        readers holding the rest slow its reads, never stop its claims)."""
        return self.held >= self.limit

    def try_take(self, size: int) -> bool:
        """Take ``size`` bytes if they fit; False (counted in ``refused``) if not."""
        if self.used + size > self.limit:
            self.refused += 1
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        """Give back bytes ``try_take`` took."""
        self.used -= size
        if self._on_free:  # (each looks again: the oldest answer may have changed)
            waiting, self._on_free = self._on_free, []
            for callback in waiting:
                callback()

    def when_free(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, the next time bytes come back."""
        self._on_free.append(callback)

    def hold(self) -> Hold:
        return Hold(self)

    def oldest(self, hold: Hold) -> bool:
        return next(iter(self._holds), hold) is hold


class Hold:
    """The bytes of one answer, charged as they arrive and given back all at once."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.size = 0

    def charge(self, size: int) -> None:
        if size <= 0:
            return
        budget = self._budget
        if not self.size:
            budget._holds[self] = None
        self.size += size
        budget.used += size
        budget.held += size

    def when_free(self, callback: Callable[[], None]) -> None:
        self._budget.when_free(callback)

    @property
    def blocked(self) -> bool:
        """Over the budget, and not the oldest answer: stop reading until it frees."""
        budget = self._budget
        return budget.over and not budget.oldest(self)

    def release(self) -> None:
        if self.size:
            size, self.size = self.size, 0
            del self._budget._holds[self]
            self._budget.held -= size
            self._budget.give(size)
