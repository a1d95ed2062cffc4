"""The results API on the proxy listener (docs/architecture.md §6):
``GET`` / ``HEAD`` / ``DELETE /_hqm/requests/{id}``.

- GET, HEAD: 202 + Retry-After + JSON ``{id, status, attempts, error?, not_before?}``
  while queued, delayed, processing or retrying (a delayed one: Retry-After until it
  is due); the stored response verbatim once done, the stored 502 record once dead;
  410 ``{id, status: "cancelled"}`` once cancelled; 404 unknown or expired.
- DELETE: cancels a request no worker has taken yet: 200 ``{id, status: "cancelled"}``;
  409 once it is processing or finished, saying which; 404 unknown.
- 503 when the queue cannot be read, or when the process's budget of response bytes
  in flight (--max-inflight-bytes) is spent: ``{"error": "too many responses in
  flight", "retry_after": 1}``; 405 (with ``Allow``) for other methods.
- A request whose route has ``result_access = "caller"`` is known only to its
  submitter (the same credentials, hqm.ingress.caller): anyone else gets the 404 of
  an unknown id, for GET, HEAD and DELETE alike (nothing is cancelled).

A stored response is written as the client takes it, read from the queue a piece at a
time (``Queue.open_result``): each reader holds a piece of it, charged to the budget,
never the whole result.

Also the pieces the proxy's handler answers with: JSON replies, stored responses, the
log of queue failures.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence

import orjson

from hqm.ingress.caller import owns
from hqm.io.budget import ByteBudget
from hqm.io.http_server import Reply
from hqm.io.http_streaming import StreamedReply
from hqm.io.streams import AnswerBroken, ResponseStream
from hqm.ops.trouble import Trouble as QueueTrouble
from hqm.proto.envelope import ResponseRecord
from hqm.proto.headers import REQUEST_ID, result_response_headers
from hqm.proto.limits import RESULT_CHUNK_BYTES, RETRY_AFTER_S
from hqm.proto.server import RequestHead
from hqm.queue.base import (
    CancelOutcome,
    Queue,
    QueueError,
    QueueFull,
    QueueRefused,
    RequestState,
    Status,
    StoredResult,
)

REQUESTS_PATH = b"/_hqm/requests/"
API_PREFIX = b"/_hqm/"
_ID_RE = re.compile(rb"[0-9a-f]{32}")
JSON = (b"Content-Type", b"application/json")
RETRY_AFTER = (b"Retry-After", str(RETRY_AFTER_S).encode())
UNAVAILABLE = {"error": "queue unavailable", "retry_after": RETRY_AFTER_S}
FULL = {"error": "queue full", "retry_after": RETRY_AFTER_S}
BUSY = {"error": "too many responses in flight", "retry_after": RETRY_AFTER_S}
#: Redis answered and stored nothing (READONLY, NOAUTH, ...): unlike "queue unavailable",
#: the client knows a resend is a first send.
REFUSED = {"error": "queue refused the write", "retry_after": RETRY_AFTER_S}
_PENDING = frozenset({Status.QUEUED, Status.DELAYED, Status.PROCESSING, Status.RETRYING})
_STORED = frozenset({Status.DONE, Status.DEAD})
_METHODS = (b"GET", b"HEAD", b"DELETE")
_ALLOW = (b"Allow", b", ".join(_METHODS))
_UNKNOWN = "unknown or expired request id"

log = logging.getLogger("hqm.ingress")


def json_reply(status: int, payload: dict, *extra: tuple[bytes, bytes]) -> Reply:
    return Reply(status, [JSON, *extra], orjson.dumps(payload))


def queue_failure(exc: QueueError) -> tuple[str, dict]:
    """The outcome and 503 body of a failed queue write: "queue full" (--max-depth, the
    embedded queue's bytes, Redis at maxmemory) and "queue refused the write" stored
    nothing; "queue unavailable" may have stored it."""
    if isinstance(exc, QueueFull):
        return "full", FULL
    if isinstance(exc, QueueRefused):
        return "write_refused", REFUSED
    return "unavailable", UNAVAILABLE


def accepted_reply(request_id: str, mode: str, applied: bytes, not_before: float) -> Reply:
    """The 202 of a stored request: its id, where its result will be (but in fire mode),
    and for a delayed one status ``delayed`` with ``not_before`` (epoch s, as GET says)."""
    headers = [JSON, (REQUEST_ID, request_id.encode())]
    payload: dict = {"id": request_id, "status": "accepted"}
    if mode != "fire":
        location = (REQUESTS_PATH + request_id.encode()).decode()
        headers.append((b"Location", location.encode()))
        payload = {"id": request_id, "status": Status.QUEUED.value, "location": location}
    if not_before:
        payload.update(status=Status.DELAYED.value, not_before=not_before)
    if applied:
        headers.append((b"Preference-Applied", applied))
    return Reply(202, headers, orjson.dumps(payload))


def busy_reply() -> Reply:
    """503: the process holds as many response bytes as --max-inflight-bytes allows."""
    return json_reply(503, BUSY, RETRY_AFTER)


def stored_reply(
    request_id: str,
    stored: StoredResult,
    *extra: tuple[bytes, bytes],
    method: bytes,
    budget: ByteBudget,
    charge: int,
    answered: bytes = b"",
) -> StreamedReply:
    """``record_reply`` of a stored result, its body written a piece at a time as the
    client takes it; ``charge`` bytes of ``budget`` (taken by the caller) are given back
    when the answer is over."""
    head = record_reply(
        request_id, stored.head, *extra, method=method, answered=answered, size=stored.size
    )

    async def write(out: ResponseStream) -> None:
        offset, size = 0, stored.size
        while offset < size:
            try:
                piece = await stored.read(offset, min(RESULT_CHUNK_BYTES, size - offset))
            except QueueError as exc:
                log.warning("result %s broke off after %d bytes: %s", request_id, offset, exc)
                raise AnswerBroken from None
            await out.write(piece)
            offset += len(piece)

    return StreamedReply(
        head.status,
        head.headers,
        head.reason,
        head.frame_from_body,
        size=stored.size,
        write=write,
        release=lambda: budget.give(charge),
    )


def record_reply(
    request_id: str,
    record: ResponseRecord,
    *extra: tuple[bytes, bytes],
    method: bytes,
    answered: bytes = b"",
    size: int | None = None,
) -> Reply:
    """A stored app response, as the client asking with ``method`` gets it.

    ``answered``: the method of the request the app answered (default: what the record
    says). An answer to HEAD has no body: read with HEAD the client gets the app's
    status and headers exactly as sent; read with another method, the framing of the
    empty body it carries (Content-Length: 0) and ``HQM-Original-Method: HEAD``. Other
    answers go to a HEAD framed as to a GET. A record of unknown method (stored before
    the method was kept) with an empty body keeps its headers for a HEAD, as before.
    A response hqm made up (``record.error`` set) without a phrase gets the standard one.
    ``size``: its body's length when the record's body is not in it (``stored_reply``).
    """
    answered = answered or record.request_method
    empty = not record.body if size is None else not size
    head_answer = answered == b"HEAD" or (not answered and empty)
    original = b"HEAD" if answered == b"HEAD" and method != b"HEAD" else None
    headers = result_response_headers(
        record.headers, request_id=request_id, original_method=original
    )
    headers.extend(extra)
    reason = record.reason if record.error is None or record.reason else None
    return Reply(record.status, headers, record.body, reason, frame_from_body=not head_answer)


class Trouble(QueueTrouble):
    """The proxy's log of queue failures (``hqm.ops.trouble``): clients get 503 meanwhile."""

    __slots__ = ()

    def __init__(self, op: str) -> None:
        super().__init__(op, logger=log, effect="clients get 503")


class ResultsApi:
    """``/_hqm/requests/{id}`` over every queue the proxy writes to (routes may name
    several): the one holding the id answers; the default queue is asked first."""

    def __init__(
        self,
        *,
        queues: Sequence[Queue],
        budget: ByteBudget,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._queues = list({id(queue): queue for queue in queues}.values())
        self._budget = budget
        self._now = wall_clock
        self._trouble = Trouble("results read")

    async def __call__(self, head: RequestHead, client: str) -> Reply | StreamedReply:
        """``client``: the reader's address (a route's caller may be its address)."""
        path = head.target.split(b"?", 1)[0]
        if not path.startswith(REQUESTS_PATH):
            return json_reply(404, {"error": "no such hqm endpoint"})
        if head.method not in _METHODS:
            return json_reply(405, {"error": "use GET, HEAD or DELETE"}, _ALLOW)
        request_id = path[len(REQUESTS_PATH) :]
        if not _ID_RE.fullmatch(request_id):
            return json_reply(404, {"error": _UNKNOWN})
        rid = request_id.decode()
        outcome, result = None, None
        try:
            queue, state = await self._locate(rid)
            if state is not None and not owns(state.owner, head, client):
                queue, state = None, None  # another caller's: as if unknown
            if head.method == b"DELETE":
                outcome = CancelOutcome.UNKNOWN if queue is None else await queue.cancel(rid)
            stored = state is not None and state.status in _STORED
            if outcome is None and queue is not None and stored:
                result = await queue.open_result(rid)
        except QueueError as exc:
            self._trouble.failed(exc)
            return json_reply(503, UNAVAILABLE, RETRY_AFTER)
        if self._trouble.failing:
            self._trouble.recovered()
        if outcome is not None:
            return self._cancelled(rid, outcome, state)
        if state is None:
            return json_reply(404, {"error": _UNKNOWN, "id": rid})
        if state.status in _PENDING:
            return self._pending(rid, state)
        if state.status is Status.CANCELLED:
            return json_reply(410, {"id": rid, "status": Status.CANCELLED.value})
        if result is None:
            return json_reply(404, {"error": _UNKNOWN, "id": rid})
        return self.reply(rid, result, method=head.method)

    def reply(
        self,
        rid: str,
        result: StoredResult,
        *extra: tuple[bytes, bytes],
        method: bytes,
        answered: bytes = b"",
    ) -> Reply | StreamedReply:
        """The stored answer, streamed; 503 when the budget cannot take one piece of it
        (two: the piece in hand and the one the client's socket buffer may hold)."""
        charge = 2 * min(result.size, RESULT_CHUNK_BYTES)
        if not self._budget.try_take(charge):
            return busy_reply()
        return stored_reply(
            rid,
            result,
            *extra,
            method=method,
            budget=self._budget,
            charge=charge,
            answered=answered,
        )

    async def _locate(self, rid: str) -> tuple[Queue | None, RequestState | None]:
        for queue in self._queues:
            state = await queue.state(rid)
            if state is not None:
                return queue, state
        return None, None

    def _pending(self, rid: str, state: RequestState) -> Reply:
        payload: dict = {"id": rid, "status": state.status.value, "attempts": state.attempts}
        if state.error:
            payload["error"] = state.error
        retry_after = RETRY_AFTER
        if state.not_before:
            payload["not_before"] = state.not_before
        if state.status is Status.DELAYED:  # nothing to see before it is due
            wait = max(RETRY_AFTER_S, math.ceil(state.not_before - self._now()))
            retry_after = (b"Retry-After", b"%d" % wait)
        return json_reply(202, payload, retry_after)

    def _cancelled(self, rid: str, outcome: CancelOutcome, state: RequestState | None) -> Reply:
        if outcome is CancelOutcome.CANCELLED:
            return json_reply(200, {"id": rid, "status": Status.CANCELLED.value})
        if outcome is CancelOutcome.UNKNOWN or state is None:
            return json_reply(404, {"error": _UNKNOWN, "id": rid})
        # Not cancellable: a state still saying "waiting" means a worker has claimed it.
        status = Status.PROCESSING if state.status in _PENDING else state.status
        error = f"too late to cancel: the request is {status.value}"
        return json_reply(409, {"error": error, "id": rid, "status": status.value})
