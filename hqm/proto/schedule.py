"""When a request may first be replayed: ``HQM-Delay`` and ``HQM-Not-Before`` (sans-IO).

- ``HQM-Delay: SECONDS``: a non-negative decimal number of seconds from now (digits, an
  optional fraction: ``90``, ``2.5``), as Retry-After's delay-seconds with fractions.
- ``HQM-Not-Before``: an instant, as an RFC 3339 date-time with ``Z`` or an offset
  (``2026-12-01T10:00:00Z``, ``2026-12-01T11:00:00.5+01:00``), or as epoch seconds
  (``1796162400``).

At most one of them, once: anything else, a malformed value, or a time further than
``max_delay_s`` from now is a ``ScheduleError`` naming the header (the proxy answers
400). Both are removed from the stored request (``HEADER_NAMES``, by the proxy's
admission): they are addressed to hqm, not to the app. ``now`` comes from the caller (no clock here).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from hqm.proto.envelope import Headers

DELAY, NOT_BEFORE = "HQM-Delay", "HQM-Not-Before"
_NAMES = {DELAY.lower().encode(): DELAY, NOT_BEFORE.lower().encode(): NOT_BEFORE}
#: Their names, lower case.
HEADER_NAMES = frozenset(_NAMES)
#: Digits before and after the point: a year of seconds has 8, epoch seconds 10 until
#: 2286; a nanosecond is the finest a client can mean.
_DECIMAL = re.compile(rb"([0-9]{1,12})(?:\.([0-9]{1,9}))?")
_RFC3339 = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    rb"(?:\.([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


class ScheduleError(ValueError):
    """A schedule header the proxy refuses; ``header`` names it."""

    def __init__(self, header: str, reason: str) -> None:
        super().__init__(f"{header}: {reason}")
        self.header = header
        self.reason = reason


def _decimal(value: bytes) -> float | None:
    match = _DECIMAL.fullmatch(value)
    if match is None:
        return None
    whole, fraction = match.groups()
    return int(whole) + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def parse_delay(value: bytes) -> float:
    """Seconds from ``HQM-Delay``; ValueError when it is not a non-negative decimal."""
    seconds = _decimal(value)
    if seconds is None:
        raise ValueError("not a number of seconds (digits, an optional fraction)")
    return seconds


def parse_not_before(value: bytes) -> float:
    """Epoch seconds from ``HQM-Not-Before`` (RFC 3339 or epoch seconds); ValueError."""
    epoch = _decimal(value)
    if epoch is not None:
        return epoch
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError("not an RFC 3339 date-time with an offset, nor epoch seconds")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, off_h, off_m = match.groups()[6:]
    offset = timedelta(0)
    if not zulu:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError("offset out of range")
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        offset = -offset if sign == b"-" else offset
    leap = second == 60  # RFC 3339 allows a leap second; POSIX time folds it over
    stamp = datetime(year, month, day, hour, minute, 59 if leap else second)  # ValueError
    stamp = stamp.replace(tzinfo=timezone(offset))
    extra = (int(fraction) / 10 ** len(fraction) if fraction else 0.0) + (1 if leap else 0)
    return stamp.timestamp() + extra


def not_before(headers: Headers, *, now: float, max_delay_s: float) -> float:
    """Epoch seconds the request must not be replayed before (0.0: no schedule header)."""
    found = [(_NAMES[name.lower()], value) for name, value in headers if name.lower() in _NAMES]
    if not found:
        return 0.0
    header, value = found[0]
    if len(found) > 1:
        if len({name for name, _ in found}) > 1:
            raise ScheduleError(DELAY, f"give {DELAY} or {NOT_BEFORE}, not both")
        raise ScheduleError(header, "given more than once")
    try:
        due = now + parse_delay(value) if header == DELAY else parse_not_before(value)
    except (ValueError, OverflowError) as exc:
        raise ScheduleError(header, str(exc)) from None
    if due - now > max_delay_s:
        raise ScheduleError(header, f"more than {max_delay_s:g} s from now (--max-delay)")
    return due
