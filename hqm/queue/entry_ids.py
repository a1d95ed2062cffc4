"""Stream entry ids, ``<ms>-<seq>`` as Redis makes them: parsing, ordering, minting.

Both backends name a dead letter by such an id, assigned when it is dead-lettered, so
that id order is dead-letter order and ``dead_letters(after=ID)`` pages on by id,
whether or not the letter ``ID`` is still there (docs/architecture.md §4).
"""

from __future__ import annotations

import re

_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")
_MAX = (1 << 64) - 1  # both parts are unsigned 64-bit integers in Redis


def parse_entry_id(text: str) -> tuple[int, int] | None:
    """``"ms-seq"`` (or ``"ms"``, read as ``ms-0`` as XRANGE does) as a sortable pair;
    None when it is not an entry id Redis would accept."""
    match = _ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2] or 0)
    return (ms, seq) if ms <= _MAX and seq <= _MAX else None


class EntryIds:
    """Mints ids the way XADD ``*`` does: the clock's millisecond, and a sequence number
    that counts up within one millisecond; never lower than the last one, even if the
    clock steps back."""

    def __init__(self) -> None:
        self._last = (0, -1)

    def next(self, now_s: float) -> tuple[int, int]:
        """The next id, as (ms, seq): ``f"{ms}-{seq}"`` is its text."""
        last_ms, last_seq = self._last
        ms = max(int(now_s * 1000), last_ms)
        self._last = (ms, last_seq + 1 if ms == last_ms else 0)
        return self._last
