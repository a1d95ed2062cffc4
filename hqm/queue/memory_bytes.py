"""What the embedded queue holds, in bytes, against ``--max-queue-bytes``: each request
until it is finished (or purged from the dead letters), each result until it expires.

A request is work accepted; a result is an answer its client may never collect. So only
requests make the queue full (``503 queue full``): when a request or a result needs room,
the oldest results are let go first, before their ``--result-ttl`` (a read of one then
finds it gone, as if expired). Without that, a busy embedded proxy would refuse every
request for up to a day, until results expired.
"""

from __future__ import annotations

from hqm.proto.envelope import RequestRecord, ResponseRecord

#: What a stored request or result costs besides its bytes (the record, its state, the
#: dict and list entries naming it), for --max-queue-bytes: measured with tracemalloc
#: over 10,000 small requests and results (tests/test_memory_budget.py checks it).
ITEM_OVERHEAD_BYTES = 1024


def held_bytes(record: RequestRecord | ResponseRecord) -> int:
    """What ``record`` counts against --max-queue-bytes."""
    headers = sum(len(name) + len(value) for name, value in record.headers)
    target = len(record.target) if isinstance(record, RequestRecord) else 0
    return ITEM_OVERHEAD_BYTES + len(record.body) + headers + target


class HeldBytes:
    __slots__ = ("_max", "_requests", "_results", "_results_total", "evicted", "held")

    def __init__(self, max_bytes: int) -> None:
        """``max_bytes``: --max-queue-bytes (0: no bound, only counted)."""
        self._max = max_bytes
        #: Bytes by request id; results in the order they were stored (oldest first).
        self._requests: dict[str, int] = {}
        self._results: dict[str, int] = {}
        self._results_total = 0
        self.held = 0
        #: Results let go before their TTL to make room.
        self.evicted = 0

    @property
    def max_bytes(self) -> int:
        return self._max

    def add_request(self, request_id: str, size: int) -> list[str] | None:
        """Count a request of ``size`` bytes (again: its new size). Returns the ids of the
        results to let go for it (already uncounted), or None when requests alone leave
        it no room (then nothing is counted nor let go)."""
        evict = self._room(size - self._requests.get(request_id, 0))
        if evict is not None:
            self.held += size - self._requests.get(request_id, 0)
            self._requests[request_id] = size
        return evict

    def add_result(self, request_id: str, size: int) -> list[str]:
        """Count a result (always: its request is done); the older results to let go."""
        self.drop_result(request_id)
        evict = self._room(size) or []
        self._results[request_id] = size
        self._results_total += size
        self.held += size
        return evict

    def drop_request(self, request_id: str) -> None:
        self.held -= self._requests.pop(request_id, 0)

    def drop_result(self, request_id: str) -> None:
        size = self._results.pop(request_id, 0)
        self._results_total -= size
        self.held -= size

    def _room(self, grows: int) -> list[str] | None:
        over = self.held + grows - self._max
        if not self._max or over <= 0:
            return []
        if over > self._results_total:
            return None
        evict = []
        for request_id in list(self._results):
            if over <= 0:
                break
            over -= self._results[request_id]
            self.drop_result(request_id)
            evict.append(request_id)
        self.evicted += len(evict)
        return evict
