"""The proxy's options for what it admits (``hqm.ingress.admission``): how long an
Idempotency-Key is remembered, how far ahead HQM-Delay / HQM-Not-Before may schedule.

They belong to the PROXY table (``hqm.config.tables`` lists them); a module of their own
keeps that one small.
"""

from __future__ import annotations

from hqm.config.options import Option, choice, number
from hqm.ingress.routes import AMBIGUOUS_POLICIES, DEFAULT_AMBIGUOUS
from hqm.proto import limits as L

#: Seconds, above 0 and at most a year, as every duration of hqm.config.tables
#: (MAX_SECONDS there): beyond it a typo, not a wish.
_SECONDS = number(low=0.0, high=365 * 24 * 3600.0, low_open=True)

ADMISSION = (
    Option(
        "idempotency-ttl",
        "seconds",
        L.IDEMPOTENCY_TTL_S,
        "Seconds an Idempotency-Key is remembered: the same key and request again "
        "within it get the first request's id and answer.",
        _SECONDS,
    ),
    Option(
        "max-delay",
        "seconds",
        L.MAX_DELAY_S,
        "Furthest HQM-Delay / HQM-Not-Before accepted, seconds from now (400 beyond).",
        _SECONDS,
    ),
    Option(
        "ambiguous-path",
        "choice",
        DEFAULT_AMBIGUOUS,
        "A path apps may read as paths that take different routes (dot segments, %2F, "
        "//, ;, ...): reject (400) or normalize (forward it with dot segments removed, "
        "%2F and \\ as /, slashes merged).",
        choice(*AMBIGUOUS_POLICIES),
    ),
)
