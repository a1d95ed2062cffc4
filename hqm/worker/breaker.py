"""The circuit breaker in front of the app: stop claiming while it cannot be reached.

Only connection failures count (refused, unreachable, connect timeout): they prove the
app is not there, and no request was sent. After ``THRESHOLD`` of them in a row the
breaker opens: the worker claims nothing (entries wait in the stream) and the requests
it holds wait too. After a cool-down it is half-open: one request goes out as a probe;
an answer of any kind closes it, another connection failure opens it again for twice
as long (up to ``MAX_COOLDOWN_S``).

Pure state and times; the worker loop does the waiting (docs/architecture.md §5).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

#: Connection failures in a row that open the breaker: one refused connect can be a
#: restart's blip; three in a row with nothing answering is an app that is down.
THRESHOLD = 3
#: First cool-down before a probe; doubled after each failed probe ...
BASE_COOLDOWN_S = 0.5
#: ... up to this: an app that returns is found again within about 5 s, for the price
#: of one connection attempt per 5 s while it is down.
MAX_COOLDOWN_S = 5.0


class State(IntEnum):
    """Values of the ``hqm_worker_breaker_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Breaker:
    def __init__(
        self,
        clock: Callable[[], float],
        on_change: Callable[[State, State], None] = lambda old, new: None,
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self.state = State.CLOSED
        self._failures = 0
        self._cooldown = BASE_COOLDOWN_S
        self._opened_at = 0.0
        self._probing = False

    def _become(self, state: State) -> None:
        if state is not self.state:
            old, self.state = self.state, state
            self._on_change(old, state)

    def allowed(self) -> int | None:
        """How many requests may go to the app now: None for any number, else 0 or 1."""
        if self.state is State.CLOSED:
            return None
        if self.state is State.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._become(State.HALF_OPEN)
        if self.state is State.HALF_OPEN and not self._probing:
            return 1
        return 0

    def start(self) -> bool:
        """Before sending: True if this request may go (it is the probe when half-open)."""
        allowed = self.allowed()
        if allowed is None:
            return True
        if allowed:
            self._probing = True
            return True
        return False

    def retry_in_s(self) -> float:
        """Until a probe may go (0 when closed or half-open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown - self._clock())

    def answered(self) -> None:
        """The app answered (any status): it is reachable."""
        self._failures = 0
        self._probing = False
        self._cooldown = BASE_COOLDOWN_S
        self._become(State.CLOSED)

    def abandon(self) -> None:
        """A request that went nowhere for reasons of its own: a probe may go again."""
        self._probing = False

    def unreachable(self) -> None:
        """A connection to the app could not be made."""
        self._failures += 1
        if self.state is State.HALF_OPEN and self._probing:
            self._cooldown = min(MAX_COOLDOWN_S, self._cooldown * 2)
            self._open()
        elif self.state is State.CLOSED and self._failures >= THRESHOLD:
            self._open()
        self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._become(State.OPEN)
