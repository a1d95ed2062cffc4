"""The proxy's request handler: reply modes, the queue write, the results API."""

from __future__ import annotations

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
from hqm.proto.headers import REQUEST_ID, client_response_headers
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


def new_request_id() -> str:
    """128 random bits, hex: unguessable, so the id is the capability to read the result."""
    return secrets.token_hex(16)


def _json_reply(status: int, payload: dict, *extra: tuple[bytes, bytes]) -> Reply:
    return Reply(status, [_JSON, *extra], orjson.dumps(payload))


def record_reply(request_id: str, record: ResponseRecord, *extra: tuple[bytes, bytes]) -> Reply:
    """A stored app response, as the client gets it."""
    headers = client_response_headers(record.headers, request_id=request_id)
    headers.extend(extra)
    return Reply(record.status, headers, record.body, record.reason)


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
            outcome = "full" if isinstance(exc, QueueFull) else "unavailable"
            self._count(mode, outcome)
            return _json_reply(503, {"error": str(exc) or outcome}, _RETRY_AFTER)
        self._metrics.enqueue_seconds.observe(time.perf_counter() - started)
        if mode == "wait":
            try:
                result = await self._queue.wait_result(request_id, wait_s)
            except QueueError:
                result = None  # the request is safely queued: answer as async
            if result is not None:
                self._count(mode, "answered")
                extra = [(b"Preference-Applied", applied)] if applied else []
                return record_reply(request_id, result, *extra)
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
        try:
            state = await self._queue.state(rid)
            if state is None:
                return _json_reply(404, {"error": "unknown or expired request id", "id": rid})
            if state.status in _PENDING:
                payload = {"id": rid, "status": state.status.value, "attempts": state.attempts}
                if state.error:
                    payload["error"] = state.error
                return _json_reply(202, payload, _RETRY_AFTER)
            result = await self._queue.fetch_result(rid)
        except QueueError as exc:
            return _json_reply(503, {"error": str(exc)}, _RETRY_AFTER)
        if result is None:
            return _json_reply(404, {"error": "unknown or expired request id", "id": rid})
        return record_reply(rid, result)
