"""The original OpenHQM's API on the proxy listener (``--openhqm-api``, on by default):

- ``POST /api/v1/submit`` ``{"payload", "headers"?, "metadata"?}``: 202
  ``{"correlation_id", "status": "PENDING", "submitted_at"}``. The submit becomes an
  ordinary request record, replayed by the worker as the original's worker did in
  proxy mode: a JSON POST of the payload with the given headers to the endpoint.
  ``metadata.endpoint`` names an ``[upstreams]`` entry (unknown: 422, nothing queued),
  ``metadata.method`` replaces POST. The target is ``--openhqm-target`` on the default
  upstream (the path of ``OPENHQM_PROXY__DEFAULT_ENDPOINT``), ``/`` on a named one.
- ``GET /api/v1/status/{id}``: ``{"correlation_id", "status", "submitted_at",
  "updated_at"}``.
- ``GET /api/v1/response/{id}``: every field of the original's ``ResultResponse``; 202
  while pending, ``result`` the app's body (any JSON value, else its text).

The correlation id is the request's hqm id written as a UUID, so
``/_hqm/requests/{hex}`` reads the same request, and any request's hqm id works here.
Unknown ids are 404 ``{"detail": "Request not found or expired"}``, as in the original;
so is a request whose route binds its result to its caller (``result_access =
"caller"``, hqm.ingress.caller) to anyone else, as on ``/_hqm/requests/{id}``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from hqm.ingress.caller import owns
from hqm.ingress.openhqm_models import (
    SubmitInvalid,
    app_headers,
    app_result,
    error,
    parse_submit,
    request_headers,
    result_answer,
    status_answer,
    submit_answer,
)
from hqm.ingress.settings import ProxySettings
from hqm.io.budget import ByteBudget
from hqm.io.http_server import Peer, Reply
from hqm.ops.metrics import ProxyMetrics
from hqm.proto.envelope import RequestRecord
from hqm.proto.limits import RETRY_AFTER_S
from hqm.proto.server import RequestHead
from hqm.queue.base import Queue, QueueError, QueueFull, RequestState, Status

PREFIX = b"/api/v1/"
SUBMIT = b"/api/v1/submit"
STATUS = b"/api/v1/status/"
RESPONSE = b"/api/v1/response/"
#: The name the default upstream (``--upstream``) goes by in a record.
DEFAULT_UPSTREAM = "default"
#: hqm's status -> the original's ``RequestStatus`` (its TIMEOUT is never set).
STATUS_NAMES = {
    Status.QUEUED: "PENDING",
    Status.DELAYED: "PENDING",
    Status.RETRYING: "PENDING",
    Status.PROCESSING: "PROCESSING",
    Status.DONE: "COMPLETED",
    Status.DEAD: "FAILED",
    Status.CANCELLED: "FAILED",
}
_JSON = (b"Content-Type", b"application/json")
_RETRY_AFTER = (b"Retry-After", str(RETRY_AFTER_S).encode())
_NOT_FOUND = "Request not found or expired"
#: The original's words for a failed publish; hqm's depth limit has its own.
_UNAVAILABLE = "Unable to queue request. Service temporarily unavailable."
_FULL = "Queue full. Try again later."

log = logging.getLogger("hqm.ingress.openhqm")


def _reply(status: int, payload: Any, *extra: tuple[bytes, bytes]) -> Reply:
    return Reply(status, [_JSON, *extra], orjson.dumps(payload))


def _detail(status: int, detail: Any, *extra: tuple[bytes, bytes]) -> Reply:
    return _reply(status, {"detail": detail}, *extra)


def _request_id(raw: bytes) -> str | None:
    """A correlation id (a UUID in any of its spellings, or hqm's 32 hex digits) as
    hqm's request id; None for anything else."""
    try:
        return uuid.UUID(raw.decode("ascii")).hex
    except (UnicodeDecodeError, ValueError):
        return None


class _Outage:
    """Queue failures for the log: the first of a run, and the recovery."""

    __slots__ = ("failing",)

    def __init__(self) -> None:
        self.failing = False

    def failed(self, op: str, exc: Exception) -> None:
        if not self.failing:
            self.failing = True
            log.warning("OpenHQM API: queue %s failed: %s: %s", op, type(exc).__name__, exc)

    def ok(self) -> None:
        if self.failing:
            self.failing = False
            log.info("OpenHQM API: the queue works again")


class OpenHqmApi:
    """Answers every request under ``/api/v1/``."""

    def __init__(
        self,
        *,
        queue: Queue,
        settings: ProxySettings,
        metrics: ProxyMetrics,
        budget: ByteBudget,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        #: --max-inflight-bytes: a result is read whole here (its body goes into JSON).
        self._budget = budget
        self._settings = settings
        self._now = wall_clock
        self._outage = _Outage()
        self._counters = {
            outcome: metrics.requests.labels("async", outcome)
            for outcome in ("accepted", "full", "unavailable")
        }
        self._enqueue_seconds = metrics.enqueue_seconds

    async def __call__(self, head: RequestHead, body: bytes, peer: Peer) -> Reply:
        path = head.target.split(b"?", 1)[0]
        if path == SUBMIT:
            if head.method != b"POST":
                return _detail(405, "Method Not Allowed", (b"Allow", b"POST"))
            return await self._submit(body, peer)
        for prefix, answer in ((STATUS, self._status), (RESPONSE, self._response)):
            raw_id = path[len(prefix) :] if path.startswith(prefix) else b""
            if raw_id and b"/" not in raw_id:
                if head.method != b"GET":
                    return _detail(405, "Method Not Allowed", (b"Allow", b"GET"))
                return await answer(raw_id, head, peer.host)
        return _detail(404, "Not Found")

    def _destination(self, endpoint: str | None) -> tuple[str, bytes] | None:
        """(upstream name, target) for ``metadata.endpoint``; None when unknown."""
        if endpoint is None or endpoint == DEFAULT_UPSTREAM:
            return DEFAULT_UPSTREAM, self._settings.openhqm_target
        if endpoint in self._settings.upstreams:
            return endpoint, b"/"
        return None

    async def _submit(self, body: bytes, peer: Peer) -> Reply:
        try:
            submit = parse_submit(body)
        except SubmitInvalid as exc:
            return _detail(422, exc.errors)
        destination = self._destination(submit.endpoint)
        if destination is None:
            known = ", ".join([DEFAULT_UPSTREAM, *sorted(self._settings.upstreams)])
            msg = f"Value error, no such endpoint in [upstreams]; known: {known}"
            return _detail(
                422, [error("value_error", ("metadata", "endpoint"), msg, submit.endpoint)]
            )
        upstream, target = destination
        request_id = uuid.uuid4().hex  # 122 random bits, written as the original's ids are
        payload = orjson.dumps(submit.payload)
        submitted_at = self._now()
        record = RequestRecord(
            id=request_id,
            method=submit.method or b"POST",
            target=target,
            headers=request_headers(submit, payload),
            body=payload,
            client=peer.host,
            received_at=submitted_at,
            upstream=upstream,
            timeout_s=submit.timeout_s or 0.0,
        )
        started = time.perf_counter()
        try:
            await self._queue.enqueue(record)
        except QueueError as exc:
            self._outage.failed("enqueue", exc)
            full = isinstance(exc, QueueFull)
            self._counters["full" if full else "unavailable"].inc()
            return _detail(503, _FULL if full else _UNAVAILABLE, _RETRY_AFTER)
        self._outage.ok()
        self._enqueue_seconds.observe(time.perf_counter() - started)
        self._counters["accepted"].inc()
        return _reply(202, submit_answer(str(uuid.UUID(hex=request_id)), submitted_at))

    async def _state(self, request_id: str, head: RequestHead, client: str) -> RequestState | None:
        """The state, or None when unknown or another caller's (``client``: the
        reader's address)."""
        state = await self._queue.state(request_id)
        self._outage.ok()
        return state if state is None or owns(state.owner, head, client) else None

    async def _status(self, raw_id: bytes, head: RequestHead, client: str) -> Reply:
        request_id = _request_id(raw_id)
        try:
            state = await self._state(request_id, head, client) if request_id else None
        except QueueError as exc:
            self._outage.failed("read", exc)
            return _detail(503, "Queue unavailable. Try again later.", _RETRY_AFTER)
        if state is None:
            return _detail(404, _NOT_FOUND)
        # A backend that does not know a time says 0.0: the nearest time it does know.
        submitted = state.submitted_at or state.updated_at or self._now()
        answer = status_answer(
            raw_id.decode("latin-1"), STATUS_NAMES.get(state.status, "PENDING"), submitted,
            state.updated_at or submitted,
        )  # fmt: skip
        return _reply(200, answer)

    async def _response(self, raw_id: bytes, head: RequestHead, client: str) -> Reply:
        """The result, read whole (it goes into a JSON body): its bytes are taken from
        the budget until the answer is made (503 when they cannot be)."""
        held = [0]  # (bytes taken, set by _result)
        try:
            return await self._result(raw_id, held, head, client)
        finally:
            if held[0]:
                self._budget.give(held[0])

    async def _result(
        self, raw_id: bytes, charge: list[int], head: RequestHead, client: str
    ) -> Reply:
        request_id = _request_id(raw_id)
        correlation_id = raw_id.decode("latin-1")
        result = None
        try:
            state = await self._state(request_id, head, client) if request_id else None
            status = STATUS_NAMES.get(state.status, "PENDING") if state else ""
            if request_id and state is not None and status in ("COMPLETED", "FAILED"):
                stored = await self._queue.open_result(request_id)
                if stored is not None:
                    if not self._budget.try_take(stored.size):
                        return _detail(503, "Too many responses in flight.", _RETRY_AFTER)
                    charge[0] = stored.size
                    body = bytes(await stored.read(0, stored.size)) if stored.size else b""
                    result = replace(stored.head, body=body)
        except QueueError as exc:
            self._outage.failed("read", exc)
            return _detail(503, "Queue unavailable. Try again later.", _RETRY_AFTER)
        if state is None or (status == "COMPLETED" and result is None):
            return _detail(404, _NOT_FOUND)
        if status == "COMPLETED":
            assert result is not None
            completed = result.completed_at or state.updated_at or self._now()
            took = None
            if state.submitted_at:
                took = max(0, round((completed - state.submitted_at) * 1000))
            answer = result_answer(
                correlation_id, status, result=app_result(result), headers=app_headers(result),
                status_code=result.status, processing_time_ms=took, completed_at=completed,
            )  # fmt: skip
            return _reply(200, answer)
        if status == "FAILED":
            reason = state.error or (result.error if result else None)
            if not reason:
                reason = "cancelled" if state.status is Status.CANCELLED else "Processing failed"
            completed_at = (result.completed_at if result else 0.0) or state.updated_at or None
            return _reply(
                200, result_answer(correlation_id, status, error=reason, completed_at=completed_at)
            )
        return _reply(202, result_answer(correlation_id, status), _RETRY_AFTER)
