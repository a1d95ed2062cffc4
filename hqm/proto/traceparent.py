"""W3C Trace Context: the trace id of a request's ``traceparent`` header, sans-IO.

hqm records the id only (``RequestRecord.trace_id``, and the access-log lines of proxy
and worker) so one grep follows a request across the queue. It never rewrites
``traceparent`` or ``tracestate``: both are end-to-end headers and pass untouched, valid
or not (``hqm.proto.headers`` drops hop-by-hop fields only).

Accepted (W3C Trace Context, section 3.2): ``version "-" trace-id "-" parent-id "-"
flags``, all lower-case hex, of 2, 32, 16 and 2 digits. Version ``00`` is exactly those
55 characters; a later version (not ``ff``) may carry more after a ``-``, and its first
55 characters are read as version 00's. A trace id or parent id of all zeros, upper-case
hex, other lengths, or several ``traceparent`` lines mean no trace id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HEADER = b"traceparent"
#: version, trace-id, parent-id, flags; then, for a later version only, "-" and more.
_FORMAT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?", re.DOTALL)
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


def parse_trace_id(value: bytes) -> str:
    """The trace id (32 lower-case hex digits) of one traceparent value; "" if invalid.

    (Every request with the header pays this: one compiled match, no loop in Python.)
    """
    match = _FORMAT.fullmatch(value.strip(b" \t"))
    if match is None:
        return ""
    version, trace_id, parent_id, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return ""
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return ""
    return trace_id.decode("ascii")


def trace_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The trace id of a request's headers: "" without exactly one valid traceparent."""
    found: bytes | None = None
    for name, value in headers:
        if len(name) == len(HEADER) and name.lower() == HEADER:
            if found is not None:
                return ""  # several: which one the app will read is not ours to guess
            found = value
    return "" if found is None else parse_trace_id(found)
