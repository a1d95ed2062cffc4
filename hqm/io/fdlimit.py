"""The file-descriptor limit and the connection limit derived from it.

Pure part: ``connection_limit`` from numbers. I/O part: ``raise_nofile`` lifts the soft
RLIMIT_NOFILE to the hard one at start (what nginx's worker_rlimit_nofile and Envoy's
docs ask operators for), so the default limit is as high as the host allows.
"""

from __future__ import annotations

import resource

#: Descriptors kept back from clients: the admin listener and its scrapes, Redis,
#: connections to the app, log files. At least this many ...
RESERVE_MIN = 64
#: ... or this share of the limit, whichever is more.
RESERVE_SHARE = 0.1
#: An "unlimited" hard limit is taken as this many (a kernel's usual nr_open).
_UNLIMITED_AS = 1 << 20


def connection_limit(nofile: int, *, configured: int = 0) -> int:
    """Client connections a listener accepts: ``configured``, else what the descriptor
    limit leaves after the reserve."""
    if configured:
        return configured
    return max(1, nofile - max(RESERVE_MIN, int(nofile * RESERVE_SHARE)))


def raise_nofile() -> int:
    """Lift the soft descriptor limit to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_AS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return _UNLIMITED_AS if soft == resource.RLIM_INFINITY else soft
