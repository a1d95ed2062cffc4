"""The streamed half of the HTTP server's protocol (pass-through): a request whose
body is handed on as it arrives, and an answer written as it comes (``HttpProtocol``
mixes this in; flow control both ways as described in ``hqm.io.streams``); and the
answers a handler gives as a ``StreamedReply`` (a stored result read in pieces)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hqm.io.streams import AnswerBroken, BodyStream, ResponseStream
from hqm.proto.framing import framed
from hqm.proto.server import BodyChunk, BodyEnd, NeedData, RequestStarted, ServerConnection

log = logging.getLogger("hqm.http")


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class StreamedReply:
    """A handler's answer (as a ``Reply``) whose body of ``size`` bytes is not in hand:
    ``write`` writes it through a ResponseStream as the client takes it. The server
    calls ``release`` once, when the answer is over or will not be written (the client
    left first), whatever happened."""

    status: int
    headers: list[tuple[bytes, bytes]]
    reason: bytes | None
    #: As ``Reply.frame_from_body``: to a HEAD, frame as the GET answer (Content-Length
    #: ``size``), or keep ``headers`` (an app's own answer to a HEAD).
    frame_from_body: bool
    size: int
    write: Callable[[ResponseStream], Awaitable[None]]
    release: Callable[[], None] = _nothing


class StreamingMixin:
    """Needs from its protocol: the connection, transport, routing, pending answer and
    the flow-control and closing methods named below."""

    _conn: ServerConnection
    _transport: asyncio.Transport | None
    _routing: Any
    _peer: Any
    _pending: asyncio.Future[Any] | None
    _body: BodyStream | None
    _drained: asyncio.Future[None] | None
    _send_timer: Any
    _clock: Any
    _limits: Any
    _write_paused: bool
    _lingering: bool
    _served: bool
    _timer_phase: Any
    # and the methods _answered, _arm_timer, _linger, _pause_reading, _resume_reading,
    # _send_whole and abort

    def _send(self, reply: Any) -> None:
        """Send a handler's answer: a Reply at once (``_send_whole``), a StreamedReply
        as the client takes it."""
        if not isinstance(reply, StreamedReply):
            self._send_whole(reply)  # type: ignore[attr-defined]
        elif self._transport is None or self._transport.is_closing():
            reply.release()
        else:
            out = ResponseStream(self)
            task = asyncio.ensure_future(self._write_streamed(reply, out))
            self._pending = task
            task.add_done_callback(lambda done: self._on_stream_done(done, out))

    async def _write_streamed(self, reply: StreamedReply, out: ResponseStream) -> None:
        try:
            head = self._conn.request_method == b"HEAD"
            headers = framed(
                reply.status,
                reply.headers,
                reply.size,
                head=head,
                frame_from_body=reply.frame_from_body,
            )
            if not out.start(reply.status, headers, reply.reason):
                return
            if not head:
                await reply.write(out)
            out.end()
        except AnswerBroken:
            pass  # (not ended: the connection is aborted)
        finally:
            reply.release()

    def _wake_writer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # --- streamed requests (pass-through) -------------------------------------
    def _start_stream(self, event: RequestStarted) -> None:
        assert self._routing is not None
        self._served = True
        self._body = BodyStream(pause=self._pause_reading, resume=self._resume_body)
        out = ResponseStream(self)
        task = asyncio.ensure_future(
            self._routing.stream(event.head, event.decision, self._peer, self._body, out)
        )
        self._pending = task
        task.add_done_callback(lambda done: self._on_stream_done(done, out))
        self._pump_body()

    def _pump_body(self) -> None:
        """Hand what the client sent of a streamed body to its reader."""
        body = self._body
        assert body is not None and self._transport is not None
        while True:
            event = self._conn.next_event()
            out = self._conn.data_to_send()
            if out:
                self._transport.write(out)
            if isinstance(event, BodyChunk):
                body.feed(event.data)
                continue
            if isinstance(event, BodyEnd):
                body.finish()
                self._body = None
            elif isinstance(event, NeedData):
                self._timer_phase = None  # a streamed body's timeout counts from its last byte
            else:  # refused (framing, EOF mid-body) or closed: the reader sees it fail
                body.fail(getattr(event, "message", "client closed the connection"))
                self._body = None
                self._linger()
            self._arm_timer()
            return

    def _resume_body(self) -> None:
        if not self._write_paused:
            self._resume_reading()

    def start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes | None
    ) -> bool:
        ok = self._conn.start_response(status, headers, reason)
        self._flush()
        return ok

    def send_body(self, data: bytes) -> asyncio.Future[None] | None:
        self._conn.send_body(data)
        self._flush()
        if not self._write_paused or self._transport is None or self._transport.is_closing():
            return None
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
            # Taking nothing for --send-timeout: cut off (what it holds goes back).
            self._send_timer = self._clock.call_later(self._limits.send_timeout_s, self.abort)
        return self._drained

    def end_response(self) -> None:
        self._conn.end_response()
        self._flush()

    def _flush(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._conn.data_to_send())

    def _on_stream_done(self, task: asyncio.Future[None], out: ResponseStream) -> None:
        if task is not self._pending:
            return
        self._pending = None
        if task.cancelled() or self._lingering:
            return
        exc = task.exception()
        if exc is not None:
            log.error("stream handler failed", exc_info=exc)
        if not out.started:
            self._body = None  # a body still arriving is not read: the answer closes
            self._send_whole(self.bad_gateway)  # type: ignore[attr-defined]
            return
        if not out.ended:  # the answer broke off midway: only a close can say so
            self.abort()
            return
        if self._body is not None:  # answered before the body was all in
            self._body.fail("answered before the body was read")
            self._body = None
        self._answered()
