"""The embedded, in-process queue: zero setup, not durable.

Used when ``hqm proxy`` runs without ``--redis``: the proxy and an in-process worker
share one instance. It follows the consumer-group semantics of the Redis backend
(pending entries, reclaim after a visibility timeout, delayed retries, dead letters)
so the worker code is the same for both. Idempotency-Keys, delayed requests and
cancellation behave as in the Redis backend; each step is atomic as it never awaits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from hqm.proto.envelope import RequestRecord, ResponseRecord, error_response
from hqm.proto.limits import RESULT_TTL_S
from hqm.queue.base import (
    CancelOutcome,
    DeadLetter,
    Delivery,
    Enqueued,
    IdempotencyClaim,
    Queue,
    QueueFull,
    RequestState,
    Status,
)
from hqm.queue.entry_ids import EntryIds, parse_entry_id
from hqm.queue.memory_bytes import HeldBytes, held_bytes
from hqm.queue.spent import SpentTokens

log = logging.getLogger(__name__)

#: What ``cancel`` may take back: nobody holds it (a queued one is also not pending).
_CANCELLABLE = frozenset({Status.QUEUED, Status.DELAYED, Status.RETRYING})


@dataclass(slots=True)
class _Pending:
    consumer: str
    since: float
    deliveries: int


class MemoryQueue(Queue):
    def __init__(
        self,
        name: str = "default",
        *,
        max_depth: int = 0,
        result_ttl_s: float = RESULT_TTL_S,
        clock: Callable[[], float] = time.time,
        max_bytes: int = 0,
    ) -> None:
        """``max_bytes``: --max-queue-bytes, requests and results held (0: no bound)."""
        self.name = name
        self._max_depth = max_depth
        self._bytes = HeldBytes(max_bytes)
        self._ttl = result_ttl_s
        self._now = clock
        self._ids = itertools.count(1)
        self._entries: dict[str, tuple[RequestRecord, int]] = {}
        self._waiting: deque[str] = deque()
        self._pending: dict[str, _Pending] = {}
        self._deliveries: dict[str, int] = {}
        self._delayed: list[tuple[float, int, str]] = []
        #: Where each request waits or runs: its key in ``_entries``.
        self._located: dict[str, str] = {}
        #: Idempotency-Keys: (fingerprint, request id, expiry).
        self._idempotency: dict[str, tuple[str, str, float]] = {}
        self._results: dict[str, tuple[ResponseRecord, float]] = {}
        self._states: dict[str, tuple[RequestState, float]] = {}
        #: Dead letters by their own id, minted when dead-lettered as the Redis DLQ
        #: stream's XADD does (parsed: (ms, seq)); insertion order is id order is
        #: dead-letter order.
        self._dlq: OrderedDict[tuple[int, int], DeadLetter] = OrderedDict()
        self._dlq_ids = EntryIds()
        self._waiters: dict[str, list[asyncio.Future[ResponseRecord]]] = {}
        self._spent = SpentTokens()
        self._arrived = asyncio.Event()

    @property
    def reply_channel(self) -> str:
        return "embedded"

    # --- proxy side ---------------------------------------------------------
    async def enqueue(
        self, record: RequestRecord, *, idempotency: IdempotencyClaim | None = None
    ) -> Enqueued:
        now = self._now()
        if idempotency is not None:
            known = self._idempotency.get(idempotency.key)
            if known is not None and known[2] > now:
                same = known[0] == idempotency.fingerprint
                return Enqueued(request_id=known[1], duplicate=same, conflict=not same)
        if record.not_before > record.received_at:
            self._check_room(record)
            self._schedule(record, 0, record.not_before, Status.DELAYED)
        else:
            self._add(record, attempt=0)
        if idempotency is not None:
            expiry = now + idempotency.ttl_s
            self._idempotency[idempotency.key] = (idempotency.fingerprint, record.id, expiry)
        return Enqueued(request_id=record.id)

    def _check_room(self, record: RequestRecord) -> None:
        """QueueFull past --max-depth or --max-queue-bytes; else ``record`` is held."""
        if self._max_depth and self._depth() >= self._max_depth:
            raise QueueFull(f"queue {self.name!r} holds {self._max_depth} entries")
        evict = self._bytes.add_request(record.id, held_bytes(record))
        if evict is None:
            held, most = self._bytes.held, self._bytes.max_bytes
            raise QueueFull(f"queue {self.name!r} holds {held} of {most} bytes")
        self._let_go(evict)

    @property
    def held(self) -> int:
        """Bytes held, requests and results (hqm.queue.memory_bytes)."""
        return self._bytes.held

    def _let_go(self, results: list[str]) -> None:
        """Results let go before their TTL to make room (--max-queue-bytes)."""
        if results and self._bytes.evicted == len(results):  # the first ones
            log.warning(
                "embedded queue %r holds --max-queue-bytes (%d): the oldest results are "
                "dropped before --result-ttl from now on (not logged again)",
                self.name,
                self._bytes.max_bytes,
            )
        for request_id in results:  # (its state too: it was counted with the result)
            self._results.pop(request_id, None)
            self._states.pop(request_id, None)

    def _add(self, record: RequestRecord, attempt: int) -> str:
        self._check_room(record)
        return self._append(record, attempt, self._now())

    def _append(self, record: RequestRecord, attempt: int, now: float) -> str:
        entry_id = f"{int(now * 1000)}-{next(self._ids)}"
        self._entries[entry_id] = (record, attempt)
        self._waiting.append(entry_id)
        self._located[record.id] = entry_id
        self._set_state(record, Status.QUEUED, attempt)
        self._arrived.set()
        return entry_id

    def _schedule(
        self,
        record: RequestRecord,
        attempt: int,
        due_at: float,
        status: Status,
        error: str | None = None,
    ) -> None:
        key = f"retry-{next(self._ids)}"
        self._entries[key] = (record, attempt)
        heapq.heappush(self._delayed, (due_at, next(self._ids), key))
        self._located[record.id] = key
        self._set_state(record, status, attempt, error, not_before=due_at)

    def _set_state(
        self,
        record: RequestRecord,
        status: Status,
        attempts: int = 0,
        error: str | None = None,
        *,
        not_before: float = 0.0,
    ) -> None:
        now = self._now()
        state = RequestState(
            status,
            attempts,
            error,
            submitted_at=record.received_at,
            updated_at=now,
            not_before=not_before,
            owner=record.owner,
        )
        # (kept until due, then for the TTL: a delayed request's state outlives its wait)
        self._states[record.id] = (state, now + self._ttl + max(0.0, not_before - now))

    async def cancel(self, request_id: str) -> CancelOutcome:
        state = await self.state(request_id)
        if state is None:
            return CancelOutcome.UNKNOWN
        key = self._located.get(request_id)
        if state.status not in _CANCELLABLE or key is None or key in self._pending:
            return CancelOutcome.BUSY
        record, _ = self._entries.pop(key)
        del self._located[request_id]
        self._deliveries.pop(key, None)
        if state.status is Status.QUEUED:
            self._waiting.remove(key)
        else:
            self._delayed = [item for item in self._delayed if item[2] != key]
            heapq.heapify(self._delayed)
        self._set_state(record, Status.CANCELLED, state.attempts, state.error)
        self._bytes.drop_request(request_id)
        return CancelOutcome.CANCELLED

    async def state(self, request_id: str) -> RequestState | None:
        item = self._states.get(request_id)
        if item is None or item[1] <= self._now():
            return None
        return item[0]

    async def fetch_result(self, request_id: str) -> ResponseRecord | None:
        item = self._results.get(request_id)
        if item is None or item[1] <= self._now():
            return None
        return item[0]

    async def wait_result(self, request_id: str, timeout_s: float) -> ResponseRecord | None:
        result = await self.fetch_result(request_id)
        if result is not None:
            return result
        future: asyncio.Future[ResponseRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(request_id, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(request_id)
            if waiters is not None:
                if future in waiters:
                    waiters.remove(future)
                if not waiters:
                    del self._waiters[request_id]

    async def spend(self, token: str, ttl_s: float) -> bool:
        return self._spent.spend(token, ttl_s, self._now())

    # --- worker side --------------------------------------------------------
    async def claim(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        if not self._waiting and block_s > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), block_s)
            except TimeoutError:
                return []
        out = []
        while self._waiting and len(out) < count:
            entry_id = self._waiting.popleft()
            out.append(self._deliver(entry_id, consumer))
        return out

    def _deliver(self, entry_id: str, consumer: str) -> Delivery:
        record, attempt = self._entries[entry_id]
        deliveries = self._deliveries.get(entry_id, 0) + 1
        self._deliveries[entry_id] = deliveries
        self._pending[entry_id] = _Pending(consumer, self._now(), deliveries)
        self._set_state(record, Status.PROCESSING, attempt)
        return Delivery(entry_id, record, deliveries, attempt)

    async def reclaim(self, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        cutoff = self._now() - min_idle_s
        stale = [eid for eid, p in self._pending.items() if p.since <= cutoff][:count]
        return [self._deliver(eid, consumer) for eid in stale]

    async def touch(self, consumer: str, entry_ids: list[str]) -> None:
        now = self._now()
        for entry_id in entry_ids:
            pending = self._pending.get(entry_id)
            if pending is not None and pending.consumer == consumer:
                pending.since = now

    def _ack(self, entry_id: str) -> None:
        self._pending.pop(entry_id, None)
        self._deliveries.pop(entry_id, None)
        record, _ = self._entries.pop(entry_id, (None, 0))
        if record is not None and self._located.get(record.id) == entry_id:
            del self._located[record.id]

    def _store_result(
        self, record: RequestRecord, response: ResponseRecord, status: Status
    ) -> None:
        self._let_go(self._bytes.add_result(record.id, held_bytes(response)))
        self._results[record.id] = (response, self._now() + self._ttl)
        self._set_state(record, status, response.attempts, response.error)
        for future in self._waiters.pop(record.id, []):
            if not future.done():
                future.set_result(response)

    async def complete(self, delivery: Delivery, response: ResponseRecord) -> None:
        if delivery.entry_id not in self._entries:
            return  # already acknowledged by whoever reclaimed it
        if delivery.record.mode == "fire":  # no result kept
            self._set_state(delivery.record, Status.DONE, response.attempts)
        else:
            self._store_result(delivery.record, response, Status.DONE)
        self._ack(delivery.entry_id)
        self._bytes.drop_request(delivery.record.id)

    async def retry_later(self, delivery: Delivery, due_at: float, error: str) -> None:
        if delivery.entry_id not in self._entries:
            return
        self._ack(delivery.entry_id)
        self._schedule(delivery.record, delivery.attempt + 1, due_at, Status.RETRYING, error)

    async def promote_due(self, now: float) -> int:
        moved = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, _, retry_id = heapq.heappop(self._delayed)
            record, attempt = self._entries.pop(retry_id)
            self._append(record, attempt, now)
            moved += 1
        if moved:
            self._arrived.set()
        self._expire(now)
        return moved

    def _expire(self, now: float) -> None:
        for store in (self._results, self._states):
            for key in [k for k, (_, exp) in store.items() if exp <= now]:
                del store[key]
                if store is self._results:
                    self._bytes.drop_result(key)
        for key in [k for k, (_, _, exp) in self._idempotency.items() if exp <= now]:
            del self._idempotency[key]

    async def dead_letter(self, delivery: Delivery, error: str, attempts: int) -> None:
        if delivery.entry_id not in self._entries:
            return
        now = self._now()
        record = delivery.record
        ms, seq = key = self._dlq_ids.next(now)
        self._dlq[key] = DeadLetter(f"{ms}-{seq}", record, error, attempts, now)
        if record.mode == "fire":
            self._set_state(record, Status.DEAD, attempts, error)
        else:
            response = error_response(502, error, attempts=attempts, now=now)
            self._store_result(record, response, Status.DEAD)
        self._ack(delivery.entry_id)

    async def release(self, consumer: str) -> None:
        return None

    # --- admin --------------------------------------------------------------
    def _depth(self) -> int:
        return len(self._waiting) + len(self._pending) + len(self._delayed)

    async def depth(self) -> int:
        return self._depth()

    async def dead_letters(self, count: int = 100, after: str | None = None) -> list[DeadLetter]:
        if not after:
            return list(itertools.islice(self._dlq.values(), count))
        start = parse_entry_id(after)
        if start is None:
            return []
        # By id, as XRANGE: ``after`` itself may be gone (replayed, say) and paging
        # still goes on from where it was.
        later = (letter for key, letter in self._dlq.items() if key > start)
        return list(itertools.islice(later, count))

    async def dead_letter_get(self, entry_id: str) -> DeadLetter | None:
        key = parse_entry_id(entry_id)
        return None if key is None else self._dlq.get(key)

    async def replay_dead_letter(self, entry_id: str) -> bool:
        key = parse_entry_id(entry_id)
        letter = None if key is None else self._dlq.get(key)
        if letter is None:
            return False
        self._add(letter.record, attempt=0)  # (QueueFull: the letter stays where it is)
        del self._dlq[key]
        self._results.pop(letter.record.id, None)
        self._bytes.drop_result(letter.record.id)
        return True

    async def purge_dead_letters(self) -> int:
        count = len(self._dlq)
        for letter in self._dlq.values():
            if letter.record.id not in self._located:  # (not queued again since)
                self._bytes.drop_request(letter.record.id)
        self._dlq.clear()
        return count

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        for waiters in self._waiters.values():
            for future in waiters:
                future.cancel()
        self._waiters.clear()
