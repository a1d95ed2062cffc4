"""The memory options (README "Memory"): the worker's largest answer, the budget of
response bytes in flight of one process; and the queue's bounds (--max-depth, and the
embedded queue's --max-queue-bytes).

They belong to the proxy's and worker's tables (``hqm.config.tables`` lists them); a
module of their own keeps that one small.
"""

from __future__ import annotations

from hqm.config.options import Option, integer, number
from hqm.proto import limits as L

MAX_RESPONSE = Option(
    "max-response",
    "bytes",
    L.MAX_RESPONSE_BYTES,
    "Largest app answer recorded; a bigger one is recorded as a 502.",
    integer(low=1, high=1 << 40),
)
MAX_INFLIGHT = Option(
    "max-inflight-bytes",
    "bytes",
    L.MAX_INFLIGHT_BYTES,
    "Response bytes the process holds at once (results being read, wait-mode answers, "
    "answers being received): the proxy answers 503 beyond it, the worker reads slower.",
    integer(low=L.RESULT_CHUNK_BYTES, high=1 << 40),
    shared=True,
)
SEND_TIMEOUT = Option(
    "send-timeout",
    "seconds",
    L.SEND_TIMEOUT_S,
    "A client that takes nothing of a streamed answer (a result, a pass-through answer) "
    "for this long is cut off, freeing its share of --max-inflight-bytes.",
    number(low=0.0, high=365 * 24 * 3600.0, low_open=True),
)
#: The proxy's: its budget, and how long a reader that reads nothing may hold its part.
PROXY_MEMORY = (MAX_INFLIGHT, SEND_TIMEOUT)
#: ``hqm proxy``'s bounds of its queue: entries waiting (any backend), bytes held (the
#: embedded queue: an option of its in-process worker's, refused with --redis).
QUEUE_BOUNDS = (
    Option("max-depth", "int", 0, "Backlog limit (503); 0 = none.", integer(low=0, high=1 << 40)),
    Option(
        "max-queue-bytes",
        "bytes",
        L.MAX_QUEUE_BYTES,
        "Bytes held, requests and results together: past it the oldest results go before "
        "--result-ttl, then requests get 503 queue full; 0 = no bound. (embedded queue only)",
        integer(low=0, high=1 << 40),
        embedded_worker=True,
    ),
)
