"""The log of an outage: a run of failures of one operation gets a warning at its
start and one recovery line with the number of failures, not a line per failure.

Used by the proxy (each queue operation its own: clients get 503 meanwhile) and by the
worker (its claims: it retries with a capped backoff meanwhile).
"""

from __future__ import annotations

import logging

#: Distinct failure details logged per outage: a failure that changes (refused, then
#: timing out, then a READONLY replica) is worth a line each, but an outage whose
#: details alternate must not write a line per failure again.
MAX_DETAILS_PER_OUTAGE = 3


class Trouble:
    """Failures of one operation, for the log: the first failure of a run with its
    detail (not one line, nor a traceback, per failure; a detail not seen yet in this
    run gets a line too, up to ``MAX_DETAILS_PER_OUTAGE``), and the recovery with the
    number of failures meanwhile. ``effect``: what the failure means meanwhile;
    ``details``: distinct failures logged per outage (1: the first only)."""

    __slots__ = ("_details", "_effect", "_log", "_op", "_seen", "failing", "failures")

    def __init__(
        self,
        op: str,
        *,
        logger: logging.Logger,
        effect: str,
        details: int = MAX_DETAILS_PER_OUTAGE,
    ) -> None:
        self._op = op
        self._details = details
        self._log = logger
        self._effect = effect
        self._seen: set[str] = set()
        self.failing = False
        self.failures = 0

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        self.failing = True
        detail = f"{type(exc).__name__}: {exc}"
        if detail in self._seen or len(self._seen) >= self._details:
            return
        self._seen.add(detail)
        self._log.warning(
            "queue %s failed: %s (%s; not logged again until it changes)"
            if self._details > 1
            else "queue %s failed: %s (%s; not logged again until it works)",
            self._op,
            detail,
            self._effect,
        )

    def recovered(self) -> None:
        failures = "1 failure" if self.failures == 1 else f"{self.failures} failures"
        self._log.info("queue %s works again after %s", self._op, failures)
        self.failing, self.failures = False, 0
        self._seen.clear()
