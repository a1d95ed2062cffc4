"""The proxy's request handler: reply modes, the queue write, the results API.

A queue failure is the client's 503 with a fixed body (``{"error": "queue unavailable",
"retry_after": 1}``, or ``"queue full"``): backend details (hosts, ports, driver errors)
go to the log only, once per run of identical failures, and the recovery is logged.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson

from hqm.ingress.settings import ProxySettings
from hqm.io.http_server import Peer, Reply
from hqm.ops.metrics import ProxyMetrics
from hqm.proto.envelope import RequestRecord, ResponseRecord
from hqm.proto.headers import REQUEST_ID, result_response_headers
from hqm.proto.limits import RETRY_AFTER_S
from hqm.proto.prefer import parse_prefer
from hqm.proto.server import RequestHead
from hqm.queue.base import Queue, QueueError, QueueFull, Status

REQUESTS_PATH = b"/_hqm/requests/"
_API_PREFIX = b"/_hqm/"
_ID_RE = re.compile(rb"[0-9a-f]{32}")
_JSON = (b"Content-Type", b"application/json")
_RETRY_AFTER = (b"Retry-After", str(RETRY_AFTER_S).encode())
_PENDING = frozenset({Status.QUEUED, Status.PROCESSING, Status.RETRYING})
_UNAVAILABLE = {"error": "queue unavailable", "retry_after": RETRY_AFTER_S}
_FULL = {"error": "queue full", "retry_after": RETRY_AFTER_S}

log = logging.getLogger("hqm.ingress")


def new_request_id() -> str:
    """128 random bits, hex: unguessable, so the id is the capability to read the result."""
    return secrets.token_hex(16)


def _json_reply(status: int, payload: dict, *extra: tuple[bytes, bytes]) -> Reply:
    return Reply(status, [_JSON, *extra], orjson.dumps(payload))


def record_reply(
    request_id: str,
    record: ResponseRecord,
    *extra: tuple[bytes, bytes],
    method: bytes,
    answered: bytes = b"",
) -> Reply:
    """A stored app response, as the client asking with ``method`` gets it.

    ``answered``: the method of the request the app answered (default: what the record
    says). An answer to HEAD has no body: read with HEAD the client gets the app's
    status and headers exactly as sent; read with another method, the framing of the
    empty body it carries (Content-Length: 0) and ``HQM-Original-Method: HEAD``. Other
    answers go to a HEAD framed as to a GET. A record of unknown method (stored before
    the method was kept) with an empty body keeps its headers for a HEAD, as before.
    A response hqm made up (``record.error`` set) without a phrase gets the standard one.
    """
    answered = answered or record.request_method
    head_answer = answered == b"HEAD" or (not answered and not record.body)
    original = b"HEAD" if answered == b"HEAD" and method != b"HEAD" else None
    headers = result_response_headers(
        record.headers, request_id=request_id, original_method=original
    )
    headers.extend(extra)
    reason = record.reason if record.error is None or record.reason else None
    return Reply(record.status, headers, record.body, reason, frame_from_body=not head_answer)


class _Trouble:
    """Queue failures of one operation, for the log: the first of a run of identical
    failures with its detail (not one line, nor a traceback, per request), and the
    recovery with the number of requests that failed meanwhile."""

    __slots__ = ("_detail", "_op", "failing", "failures")

    def __init__(self, op: str) -> None:
        self._op = op
        self._detail = ""
        self.failing = False
        self.failures = 0

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        detail = f"{type(exc).__name__}: {exc}"
        if not self.failing or detail != self._detail:
            self.failing, self._detail = True, detail
            log.warning(
                "queue %s failed: %s (clients get 503; not logged again until it changes)",
                self._op,
                detail,
            )

    def recovered(self) -> None:
        failures = "1 failure" if self.failures == 1 else f"{self.failures} failures"
        log.info("queue %s works again after %s", self._op, failures)
        self.failing, self._detail, self.failures = False, "", 0


class ProxyHandler:
    def __init__(
        self,
        *,
        queue: Queue,
        settings: ProxySettings,
        metrics: ProxyMetrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._settings = settings
        self._metrics = metrics
        self._now = wall_clock
        self._counters: dict[tuple[str, str], Any] = {}
        self._enqueue_trouble = _Trouble("enqueue")
        self._wait_trouble = _Trouble("wait")
        self._results_trouble = _Trouble("results read")

    async def __call__(self, head: RequestHead, body: bytes, peer: Peer) -> Reply:
        if head.target.startswith(_API_PREFIX):
            return await self._api(head)
        mode, wait_s, applied = self._reply_mode(head)
        request_id = new_request_id()
        record = RequestRecord(
            id=request_id,
            method=head.method,
            target=head.target,
            headers=head.headers,
            body=body,
            http_version=head.http_version,
            client=peer.host,
            received_at=self._now(),
            reply_to=self._queue.reply_channel if mode == "wait" else "",
            mode=mode,
        )
        started = time.perf_counter()
        try:
            await self._queue.enqueue(record)
        except QueueError as exc:
            self._enqueue_trouble.failed(exc)
            full = isinstance(exc, QueueFull)
            self._count(mode, "full" if full else "unavailable")
            return _json_reply(503, _FULL if full else _UNAVAILABLE, _RETRY_AFTER)
        if self._enqueue_trouble.failing:
            self._enqueue_trouble.recovered()
        self._metrics.enqueue_seconds.observe(time.perf_counter() - started)
        if mode == "wait":
            try:
                result = await self._queue.wait_result(request_id, wait_s)
            except QueueError as exc:
                self._wait_trouble.failed(exc)
                result = None  # the request is safely queued: answer as async
            else:
                if self._wait_trouble.failing:
                    self._wait_trouble.recovered()
            if result is not None:
                self._count(mode, "answered")
                extra = [(b"Preference-Applied", applied)] if applied else []
                return record_reply(
                    request_id, result, *extra, method=head.method, answered=head.method
                )
            mode, applied = "async", b""
        self._count(mode, "accepted")
        return self._accepted(request_id, mode, applied)

    def _count(self, mode: str, outcome: str) -> None:
        """Count a request; labelled children are looked up once, not per request."""
        counter = self._counters.get((mode, outcome))
        if counter is None:
            counter = self._counters[mode, outcome] = self._metrics.requests.labels(mode, outcome)
        counter.inc()

    def _reply_mode(self, head: RequestHead) -> tuple[str, float, bytes]:
        """(mode, wait seconds, Preference-Applied value) for this request."""
        prefer = parse_prefer(head.headers)
        if prefer.respond_async:
            return "async", 0.0, b"respond-async"
        if prefer.wait_s is not None:
            wait_s = min(prefer.wait_s, self._settings.max_wait_s)
            return "wait", wait_s, b"wait=%d" % int(wait_s)
        return self._settings.mode, self._settings.wait_s, b""

    def _accepted(self, request_id: str, mode: str, applied: bytes) -> Reply:
        headers = [_JSON, (REQUEST_ID, request_id.encode())]
        payload: dict[str, str] = {"id": request_id, "status": "accepted"}
        if mode != "fire":
            location = (REQUESTS_PATH + request_id.encode()).decode()
            headers.append((b"Location", location.encode()))
            payload = {"id": request_id, "status": "queued", "location": location}
        if applied:
            headers.append((b"Preference-Applied", applied))
        return Reply(202, headers, orjson.dumps(payload))

    async def _api(self, head: RequestHead) -> Reply:
        path = head.target.split(b"?", 1)[0]
        if not path.startswith(REQUESTS_PATH):
            return _json_reply(404, {"error": "no such hqm endpoint"})
        if head.method not in (b"GET", b"HEAD"):
            return _json_reply(405, {"error": "use GET"}, (b"Allow", b"GET, HEAD"))
        request_id = path[len(REQUESTS_PATH) :]
        if not _ID_RE.fullmatch(request_id):
            return _json_reply(404, {"error": "unknown or expired request id"})
        rid = request_id.decode()
        result = None
        try:
            state = await self._queue.state(rid)
            if state is not None and state.status not in _PENDING:
                result = await self._queue.fetch_result(rid)
        except QueueError as exc:
            self._results_trouble.failed(exc)
            return _json_reply(503, _UNAVAILABLE, _RETRY_AFTER)
        if self._results_trouble.failing:
            self._results_trouble.recovered()
        if state is None:
            return _json_reply(404, {"error": "unknown or expired request id", "id": rid})
        if state.status in _PENDING:
            payload = {"id": rid, "status": state.status.value, "attempts": state.attempts}
            if state.error:
                payload["error"] = state.error
            return _json_reply(202, payload, _RETRY_AFTER)
        if result is None:
            return _json_reply(404, {"error": "unknown or expired request id", "id": rid})
        return record_reply(rid, result, method=head.method)
