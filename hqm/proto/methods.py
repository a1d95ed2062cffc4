"""Request methods by their semantics (RFC 9110 section 9.2)."""

from __future__ import annotations

#: RFC 9110 9.2.2: asking again has the same effect as asking once, so a request that
#: may or may not have reached the app can be sent again.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
