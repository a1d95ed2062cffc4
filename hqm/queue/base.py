"""The ``Queue`` interface: what the proxy and the worker need from a queue backend.

Shaped after Redis Streams consumer groups: entries are claimed by a named consumer,
stay pending until acknowledged, and are reclaimed from dead consumers after a
visibility timeout. The embedded backend (``hqm.queue.memory``) and the Redis Streams
backend (``hqm.queue.redis_streams``) both implement it.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from hqm.proto.envelope import RequestRecord, ResponseRecord


class QueueError(Exception):
    """Base for queue failures; ``error_status_hint`` is the status a client gets."""

    error_status_hint = 503


class QueueFull(QueueError):
    """The backlog reached --max-depth."""


class QueueUnavailable(QueueError):
    """The backend could not be reached, or did not answer: a write may or may not have
    been stored (it can land and its reply be lost)."""


class QueueRefused(QueueError):
    """The backend answered and refused the write before storing any of it (a read-only
    replica, no or wrong credentials, a script it would not run, a key of the wrong
    type): nothing was stored."""


class QueueOutOfMemory(QueueFull, QueueRefused):
    """Redis refused the write at ``maxmemory`` (OOM): nothing was stored."""


class Status(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"
    #: Scheduled for later (HQM-Delay / HQM-Not-Before): not yet in the stream.
    DELAYED = "delayed"
    #: Cancelled by ``DELETE /_hqm/requests/{id}`` before a worker took it.
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class RequestState:
    """What ``GET /_hqm/requests/{id}`` reports about a request."""

    status: Status
    attempts: int = 0
    error: str | None = None
    #: Epoch seconds the proxy accepted it, and of the last change of status (0.0 when
    #: the backend does not know).
    submitted_at: float = 0.0
    updated_at: float = 0.0
    #: Epoch seconds a delayed request, or a retry, is due (0.0 when neither).
    not_before: float = 0.0
    #: Who may read it ("": whoever has the id): ``RequestRecord.owner``.
    owner: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyClaim:
    """An Idempotency-Key to remember with a request: ``key`` already scoped to its
    route (and hashed) by the caller, ``fingerprint`` what the request was (method,
    target, body), ``ttl_s`` how long the key is remembered."""

    key: str
    fingerprint: str
    ttl_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueued:
    """What ``enqueue`` did: queued ``request_id``; or, for a known Idempotency-Key,
    nothing, ``request_id`` being the id the key names: ``duplicate`` (the same request
    again) or ``conflict`` (another request under that key)."""

    request_id: str
    duplicate: bool = False
    conflict: bool = False


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    #: Too late: claimed by a worker, or finished (done, dead, cancelled already).
    BUSY = "busy"
    #: No state: never known, or expired.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry handed to one worker."""

    entry_id: str
    record: RequestRecord
    #: Times this entry has been handed to a worker, this time included.
    deliveries: int
    #: App attempts already made for this request before this delivery (0 on the first).
    attempt: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    record: RequestRecord
    error: str
    attempts: int
    dead_at: float


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A stored response opened to be read in pieces (``Queue.open_result``): its
    status and headers (``head``, body empty), its body's length, and ``read(offset,
    length)``, the body's bytes there (QueueUnavailable when the result went away or
    changed meanwhile: a reader then breaks off, having sent only true bytes)."""

    head: ResponseRecord
    size: int
    read: Callable[[int, int], Awaitable[bytes | memoryview]]


def whole_result(record: ResponseRecord) -> StoredResult:
    """A result held in memory as one record, read in pieces without copying it."""
    view = memoryview(record.body)

    async def read(offset: int, length: int) -> memoryview:
        return view[offset : offset + length]

    head = ResponseRecord(
        record.status,
        record.reason,
        record.headers,
        b"",
        record.http_version,
        record.attempts,
        record.completed_at,
        record.error,
        record.request_method,
    )
    return StoredResult(head, len(record.body), read)


class Queue(abc.ABC):
    """A durable (or, embedded, in-process) request queue with results."""

    name: str

    # --- proxy side ---------------------------------------------------------
    @property
    @abc.abstractmethod
    def reply_channel(self) -> str:
        """Where workers notify this process of finished requests (``record.reply_to``)."""

    @abc.abstractmethod
    async def enqueue(
        self, record: RequestRecord, *, idempotency: IdempotencyClaim | None = None
    ) -> Enqueued:
        """Store the request; returns only once it is durable. QueueFull (nothing
        stored), QueueRefused (nothing stored), QueueUnavailable (perhaps stored).

        ``record.not_before`` later than ``record.received_at``: scheduled (status
        delayed, counted in ``depth``, moved into the queue by ``promote_due`` once due).
        With ``idempotency``, atomically with the write: a key remembered with the same
        fingerprint queues nothing (``duplicate``), with another one neither
        (``conflict``); else the request is queued and the key remembered for its TTL.
        """

    @abc.abstractmethod
    async def cancel(self, request_id: str) -> CancelOutcome:
        """Atomically take back a request no worker holds (queued, delayed, or waiting
        to be retried): it is removed and never replayed, its status becomes cancelled
        (kept for the result TTL). BUSY once claimed or finished; UNKNOWN without state."""

    @abc.abstractmethod
    async def state(self, request_id: str) -> RequestState | None:
        """The request's status, or None when the id is unknown or expired."""

    @abc.abstractmethod
    async def fetch_result(self, request_id: str) -> ResponseRecord | None:
        """The stored response, or None while pending or when unknown."""

    async def open_result(self, request_id: str) -> StoredResult | None:
        """The stored response to be read in pieces (None as ``fetch_result``). This
        default holds it whole, as ``fetch_result`` returns it (the embedded queue's
        results are in memory anyway); the Redis backend reads pieces with GETRANGE."""
        record = await self.fetch_result(request_id)
        return None if record is None else whole_result(record)

    @abc.abstractmethod
    async def wait_result(self, request_id: str, timeout_s: float) -> ResponseRecord | None:
        """The response once recorded, or None after ``timeout_s``.

        Never stranded by a lost notification: implementations also poll.
        """

    @abc.abstractmethod
    async def spend(self, token: str, ttl_s: float) -> bool:
        """Remember the single-use ``token`` (a digest naming it, e.g. a replay token's
        ``spent_id``) for ``ttl_s``: True the first time, False while it is remembered.
        QueueFull when it cannot be remembered (nothing is then to be let through)."""

    async def wait_stored(self, request_id: str, timeout_s: float) -> StoredResult | None:
        """``wait_result``, the result opened as ``open_result`` opens it (what the
        proxy answers a waiting client with, streamed)."""
        record = await self.wait_result(request_id, timeout_s)
        return None if record is None else whole_result(record)

    # --- worker side --------------------------------------------------------
    @abc.abstractmethod
    async def claim(self, consumer: str, count: int, block_s: float) -> list[Delivery]:
        """Up to ``count`` new entries for ``consumer``, waiting up to ``block_s`` (0: not
        at all). Claimed entries show status processing (soon after, at the latest)."""

    @abc.abstractmethod
    async def reclaim(self, consumer: str, min_idle_s: float, count: int) -> list[Delivery]:
        """Entries other consumers held for longer than ``min_idle_s``, now ours."""

    @abc.abstractmethod
    async def touch(self, consumer: str, entry_ids: list[str]) -> None:
        """Renew our claim on entries still in progress (resets their idle time)."""

    @abc.abstractmethod
    async def complete(self, delivery: Delivery, response: ResponseRecord) -> None:
        """Record the result, acknowledge and notify, atomically (fire mode: no result)."""

    @abc.abstractmethod
    async def retry_later(self, delivery: Delivery, due_at: float, error: str) -> None:
        """Acknowledge now and schedule the request again at ``due_at`` (epoch seconds).

        The retry carries ``attempt = delivery.attempt + 1``; status becomes retrying.
        """

    @abc.abstractmethod
    async def promote_due(self, now: float) -> int:
        """Move retries and delayed requests due by ``now`` into the queue (a delayed
        one with attempt 0); returns how many moved."""

    @abc.abstractmethod
    async def dead_letter(self, delivery: Delivery, error: str, attempts: int) -> None:
        """Move the entry to the dead-letter store, record a 502 result, acknowledge."""

    async def heartbeat(self, consumer: str, ttl_s: float) -> None:
        """``consumer`` is alive for ``ttl_s`` more (``hqm status``); an embedded queue's
        worker lives in its process: nothing to write."""
        return None

    @abc.abstractmethod
    async def release(self, consumer: str) -> None:
        """Forget ``consumer`` once it holds nothing (clean worker shutdown)."""

    # --- admin --------------------------------------------------------------
    @abc.abstractmethod
    async def depth(self) -> int:
        """Entries not yet acknowledged: waiting, in flight, delayed, scheduled for retry."""

    @abc.abstractmethod
    async def dead_letters(self, count: int = 100, after: str | None = None) -> list[DeadLetter]:
        """Oldest first; ``after`` an entry id to page on from (exclusive)."""

    @abc.abstractmethod
    async def dead_letter_get(self, entry_id: str) -> DeadLetter | None: ...

    @abc.abstractmethod
    async def replay_dead_letter(self, entry_id: str) -> bool:
        """Queue the dead letter again as a fresh request (attempts reset); False if unknown."""

    @abc.abstractmethod
    async def purge_dead_letters(self) -> int: ...

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers."""

    async def probe_write(self) -> None:
        """Raise QueueError unless the backend takes a write now (the proxy's /readyz):
        by default, unless it answers."""
        if not await self.ping():
            raise QueueUnavailable("no answer")

    @abc.abstractmethod
    async def close(self) -> None: ...


def distinct(queues: Iterable[Queue]) -> list[Queue]:
    """Each queue object once, in order (several names may share one embedded queue)."""
    return list({id(queue): queue for queue in queues}.values())


#: The fleet's enforced rate (AIMD, Cloud Tasks' "enforced rate"): halved at most this
#: often (one burst of 429s is one signal), never below FLOOR_SHARE of the configured
#: cap, raised by STEP_SHARE of the cap per success.
DECREASE_EVERY_S = 1.0
FLOOR_SHARE = 0.01
STEP_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class Reservation:
    """A fleet-wide rate slot: when to send, and the rate the fleet runs at now."""

    wait_s: float
    #: The enforced rate: the configured one, lowered while the app says 429/503.
    effective_rate: float


class FleetLimits(abc.ABC):
    """Limits all workers of one queue share (docs/architecture.md §5): a request rate
    that the app's 429/503 lower for everyone (halved at most once a second, raised by
    a hundredth of the cap per success), a pause the app's Retry-After sets for the
    whole queue, and a number of requests in flight at the app."""

    @abc.abstractmethod
    async def reserve(
        self, rate: float, burst: int, *, successes: int = 0, throttled: int = 0
    ) -> Reservation:
        """Reserve the next send slot of a fleet-wide rate capped at ``rate``
        (requests/s, ``burst`` at once), reporting the answers since the last call."""

    @abc.abstractmethod
    async def pause(self, seconds: float) -> None:
        """The app asked to wait (Retry-After): nobody sends for ``seconds``."""

    @abc.abstractmethod
    async def paused_for(self) -> float:
        """Seconds left of a pause (0 when none)."""

    @abc.abstractmethod
    async def lease(self, holder: str, limit: int, ttl_s: float) -> bool:
        """Take one of ``limit`` leases for ``holder``; False when all are taken. A
        lease not renewed within ``ttl_s`` lapses (a dead worker's come back)."""

    @abc.abstractmethod
    async def renew(self, holders: list[str], ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def release(self, holder: str) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the backend holds (connections)."""
