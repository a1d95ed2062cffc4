"""The access log: one JSON line per request the proxy answers, and per request a
worker finishes, on stderr with the other JSON logs (logger ``hqm.access``).

Off the hot path: a request only builds a small dict and appends it to a bounded
buffer (``add``); a writer thread wakes every ``FLUSH_INTERVAL_S``, formats what
gathered and writes it in one go. Nothing a request does waits for stderr: when the
buffer is full (stderr not read, or slower than the requests) the entry is dropped and
counted (``hqm_proxy_access_log_dropped_total`` / ``hqm_worker_access_log_dropped_total``).

``--access-log``: ``off`` (default), ``on`` (every request), ``sampled`` (each request
with probability ``--access-log-sample``). The switch is the only one: the lines are
written whatever ``--log-level`` says.

Proxy line (``"msg": "request"``): ``ts client method target status bytes_in bytes_out duration_ms route
action id mode`` and ``trace_id`` when the request had a valid ``traceparent``.
Worker line (``"msg": "finished"``): ``ts id queue route outcome status attempts latency_ms`` (acceptance by the
proxy to the outcome), ``error`` of a dead letter, ``trace_id`` when known.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from hqm.io.streams import ResponseStream
from hqm.ops.logs import timestamp
from hqm.proto.envelope import RequestRecord
from hqm.proto.events import RequestHead
from hqm.proto.headers import REQUEST_ID, header_value
from hqm.proto.traceparent import trace_id_of

ACCESS_LOG_MODES = ("off", "on", "sampled")
LOGGER = "hqm.access"
_REQUEST_ID_LOWER = REQUEST_ID.lower()
#: Entries waiting for the writer: each a dict of a dozen short fields (under 1 KiB),
#: so at most a few MiB; at 20k requests/s, half a second of stderr not keeping up.
BUFFER_ENTRIES = 10_000
#: The writer's period: lines appear within it, and a busy process pays one write per
#: period instead of one per request.
FLUSH_INTERVAL_S = 0.05
#: Longest request-target kept in a line (the rest cut): a line stays one screen wide
#: and a client cannot make the log huge.
MAX_TARGET_CHARS = 256
#: How long close() waits for the writer's last flush (stderr may be stuck).
_CLOSE_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class AccessLogSettings:
    mode: str = "off"
    #: With ``sampled``: the share of requests logged, 0 to 1.
    sample: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and not (self.mode == "sampled" and self.sample <= 0)


def bounded_target(target: bytes) -> str:
    """A request-target as logged: latin-1 (every byte one character), cut to length."""
    text = target[: MAX_TARGET_CHARS + 1].decode("latin-1")
    return text if len(text) <= MAX_TARGET_CHARS else text[:MAX_TARGET_CHARS] + "..."


class AccessLog:
    """The buffer and its writer thread. ``wanted()`` says whether to log the request
    at hand (the sampling); ``add(entry)`` hands its line over without waiting."""

    def __init__(
        self,
        *,
        settings: AccessLogSettings,
        on_drop: Callable[[], None] = lambda: None,
        stream: BinaryIO | None = None,
        capacity: int = BUFFER_ENTRIES,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        chance: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self._every = settings.mode == "on" or settings.sample >= 1
        self._sample = settings.sample
        self._chance = chance
        self._on_drop = on_drop
        self._stream = stream
        self._capacity = capacity
        self._flush_interval_s = flush_interval_s
        # (deque append and popleft are atomic: the event loop adds, the writer takes)
        self._buffer: deque[dict[str, Any]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    @property
    def pending(self) -> int:
        """Entries waiting for the writer."""
        return len(self._buffer)

    def wanted(self) -> bool:
        if not self.enabled:
            return False
        return self._every or self._chance() < self._sample

    def add(self, entry: dict[str, Any]) -> None:
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            self._on_drop()
            return
        self._buffer.append(entry)
        if self._thread is None:  # (the first line starts the writer: none, no thread)
            self.start()

    def start(self) -> None:
        """Start the writer thread (the first ``add`` does, if nobody did)."""
        if not self.enabled or self._thread is not None:
            return
        if self._stream is None:
            self._stream = getattr(sys.stderr, "buffer", None)
        self._thread = threading.Thread(target=self._run, name="hqm-access-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is left and stop the writer (bounded: stderr may be stuck)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(_CLOSE_WAIT_S)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._flush_interval_s):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        lines = []
        buffer = self._buffer
        while buffer:
            entry = buffer.popleft()
            line = {"ts": "", "level": "info", "logger": LOGGER, "msg": ""}
            line.update(entry)
            line["ts"] = timestamp(entry["ts"])  # (formatted here, off the request's path)
            lines.append(orjson.dumps(line, default=str))
        if not lines or self._stream is None:
            return
        with contextlib.suppress(OSError, ValueError):  # stderr closed: nothing to tell
            self._stream.write(b"\n".join(lines) + b"\n")
            self._stream.flush()
            self.written += len(lines)


def proxy_entry(
    head: RequestHead,
    *,
    ts: float,
    client: str,
    status: int,
    bytes_in: int | None,
    bytes_out: int,
    elapsed_s: float,
    route: str,
    action: str,
    request_id: str,
    mode: str,
) -> dict[str, Any]:
    """The proxy's line for one request (formatted later, by the writer)."""
    entry: dict[str, Any] = {
        "ts": round(ts, 3),
        "msg": "request",
        "client": client,
        "method": head.method.decode("latin-1"),
        "target": bounded_target(head.target),
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": round(elapsed_s * 1000, 3),
        "route": route,
        "action": action,
        "id": request_id,
        "mode": mode,
    }
    trace_id = trace_id_of(head.headers)
    if trace_id:
        entry["trace_id"] = trace_id
    return entry


def worker_entry(
    record: RequestRecord,
    *,
    now: float,
    queue: str,
    outcome: str,
    status: int | None,
    attempts: int,
    error: str | None = None,
) -> dict[str, Any]:
    """A worker's line for a request it finished: answered (done) or dead-lettered."""
    entry: dict[str, Any] = {
        "ts": round(now, 3),
        "msg": "finished",
        "id": record.id,
        "queue": queue,
        "route": record.route or "default",
        "outcome": outcome,
        "status": status,
        "attempts": attempts,
        "latency_ms": round(max(0.0, now - record.received_at) * 1000, 3),
    }
    if error is not None:
        entry["error"] = error
    if record.trace_id:
        entry["trace_id"] = record.trace_id
    return entry


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    value = header_value(headers, _REQUEST_ID_LOWER)
    return "" if value is None else value.decode("latin-1")


class ResponseTap:
    """Between a streamed answer (pass-through) and the client's stream: notes the
    status, the body bytes and the request id on their way (``ResponseStream(tap)``)."""

    def __init__(self, out: ResponseStream) -> None:
        self._out = out
        self.status = 0
        self.bytes_out = 0
        self.request_id = ""

    def start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes | None
    ) -> bool:
        self.status = status
        self.request_id = request_id_of(headers)
        return self._out.start(status, headers, reason)

    def send_body(self, data: bytes) -> Awaitable[None]:
        self.bytes_out += len(data)
        return self._out.write(data)

    def end_response(self) -> None:
        self._out.end()
