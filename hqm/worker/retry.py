"""Retry policy: which failures are retried, and when (exponential backoff, full jitter)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from hqm.proto.envelope import Headers
from hqm.proto.headers import header_value
from hqm.proto.methods import IDEMPOTENT_METHODS

#: 429 and 503 say "not processed, come back later" (RFC 9110 15.6.4, RFC 6585 4):
#: retried for any method. 502/504 may hide a processed request: idempotent only.
RETRY_ANY_METHOD = frozenset({429, 503})
RETRY_IDEMPOTENT = frozenset({502, 504})


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt."""

    error: str
    #: The request may have reached the app (False only for connect failures).
    reached: bool
    status: int | None = None
    retry_after_s: float | None = None
    permanent: bool = False


def may_retry(failure: Failure, method: bytes, headers: Headers) -> bool:
    """Whether asking again is safe and can help."""
    if failure.permanent:
        return False
    if not failure.reached or failure.status in RETRY_ANY_METHOD:
        return True
    if failure.status is not None and failure.status not in RETRY_IDEMPOTENT:
        return False
    return method in IDEMPOTENT_METHODS or header_value(headers, b"idempotency-key") is not None


def backoff_s(
    attempt: int, *, base_s: float, max_s: float, rng: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))]."""
    return rng() * min(max_s, base_s * (2 ** max(0, attempt - 1)))


def parse_retry_after(value: bytes | None, *, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None if absent/bad."""
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
