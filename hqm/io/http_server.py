"""The asyncio side of the HTTP/1.1 server: moves bytes between a transport and a
``ServerConnection``, runs one handler per request, keeps timers and flow control.

Flow control: reading pauses while a request is being handled (a queue write or a
wait is pending; pipelined bytes stay buffered and are parsed in order afterwards)
and while the client is not reading its answers (transport write buffer high).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hqm.io.clock import Clock, LoopClock, Timer
from hqm.io.connections import ConnectionTracker
from hqm.io.http_streaming import StreamedReply, StreamingMixin
from hqm.io.original_dst import original_port
from hqm.io.streams import BodyStream, StreamHandler
from hqm.proto.events import (
    PeerClosed,
    Phase,
    Rejected,
    RequestHead,
    RequestReceived,
    RequestStarted,
)
from hqm.proto.framing import ERROR_CONTENT_TYPE, error_body, too_many_connections
from hqm.proto.limits import RETRY_AFTER_S, Limits
from hqm.proto.server import ServerConnection

log = logging.getLogger("hqm.http")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: The body a GET gets; a HEAD gets none of its bytes.
    body: bytes = b""
    #: None: the standard phrase. An app's own phrase (even b"") is passed as given.
    reason: bytes | None = None
    #: To a HEAD: True (answers hqm makes itself) frames the answer exactly as the GET
    #: answer, Content-Length ``len(body)``; False keeps ``headers`` as they are (an
    #: app's own answer to a HEAD, with the Content-Length the app sent).
    frame_from_body: bool = True


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int
    #: Transparent mode: the port the client dialled before ``hqm iptables`` redirected
    #: it (None: not redirected, or not transparent).
    original_port: int | None = None


#: A handler answers with a Reply, or with an awaitable of one (a coroutine, or a
#: Future it resolves from a callback). Its last argument is what the listener's
#: ``Routing.classify`` said of the head (None without routing).
Handler = Callable[[RequestHead, bytes, Peer, Any], Reply | Awaitable[Reply]]
_INTERNAL_ERROR = Reply(500, [(b"Content-Type", ERROR_CONTENT_TYPE)], error_body("internal error"))


@dataclass(frozen=True, slots=True)
class Routing:
    """Per-request decisions made from the head: ``classify(head, peer)``; a decision
    whose ``stream`` is true is handed to ``stream`` with its body still arriving."""

    classify: Callable[[RequestHead, Peer], Any]
    stream: StreamHandler


class HttpProtocol(StreamingMixin, asyncio.Protocol):
    #: What a streamed request gets when its handler fails before answering.
    bad_gateway = Reply(502, [(b"Content-Type", ERROR_CONTENT_TYPE)], error_body("bad gateway"))

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits,
        tracker: ConnectionTracker,
        clock: Clock,
        routing: Routing | None = None,
        transparent: bool = False,
        connection: type[ServerConnection] = ServerConnection,
    ) -> None:
        self._handler = handler
        self._transparent = transparent
        self._limits = limits
        self._tracker = tracker
        self._clock = clock
        self._routing = routing
        classify = None if routing is None else (lambda head: routing.classify(head, self._peer))
        self._conn = connection(limits, classify)
        #: The streamed body being received (pass-through), and the answer's drain wait.
        self._body: BodyStream | None = None
        self._drained: asyncio.Future[None] | None = None
        self._send_timer: Timer | None = None  # (--send-timeout, while _drained waits)
        self._transport: asyncio.Transport | None = None
        self._peer = Peer("", 0)
        #: The answer being prepared for the current request (a Task for a coroutine
        #: handler, or the Future a handler returned); None between requests.
        self._pending: asyncio.Future[Reply] | None = None
        self._timeouts = {
            Phase.IDLE: limits.idle_timeout_s,
            Phase.HEAD: limits.header_timeout_s,
            Phase.BODY: limits.body_timeout_s,
        }
        self._timer: Timer | None = None
        self._timer_at = 0.0
        self._timer_phase: Phase | None = None
        self._deadline: float | None = None
        self._write_paused = False
        self._read_paused = False
        self._lingering = False
        #: A request has come in on this connection (until then, idle = header timeout).
        self._served = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- transport callbacks ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = self._tracker.max_connections
        if limit and len(self._tracker.connections) >= limit:
            transport.write(too_many_connections(RETRY_AFTER_S))  # type: ignore[attr-defined]
            transport.close()
            return
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self._limits.write_high_water)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            dialled = original_port(transport) if self._transparent else None
            self._peer = Peer(str(peer[0]), int(peer[1]), dialled)
        self._tracker.connections.add(self)
        self._process()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused request: read and dropped
        self._conn.receive_data(data)
        if self._body is not None:
            self._pump_body()
            return
        if self._pending is not None:
            # Bytes while a request is in hand (pipelining): h11 keeps them; read no
            # more until the answer is out. Pausing only now, not for every request,
            # keeps the common one-request-at-a-time client free of pause/resume calls.
            self._pause_reading()
            return
        self._process()

    def eof_received(self) -> bool:
        if self._lingering:
            self._close()
            return False
        self._conn.receive_data(b"")
        if self._body is not None:
            self._pump_body()
        else:
            self._process()
        return True  # keep the write side open until our answer is out

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._tracker.connections.discard(self)
        if self._body is not None:
            self._body.fail("client closed the connection")
        self._wake_writer()
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()  # a waiting client left; its request stays queued
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        body = self._body
        if self._pending is None or (body is not None and not body.full):
            self._resume_reading()  # (a streamed body still arriving is read on)

    # --- the loop between bytes and events ------------------------------------
    def _process(self) -> None:
        if self._pending is not None or self._transport is None:
            return
        event = self._conn.next_event()
        out = self._conn.data_to_send()
        if out:
            self._transport.write(out)
        if isinstance(event, RequestReceived):
            self._dispatch(event)
            return
        elif isinstance(event, RequestStarted):
            self._start_stream(event)
            return
        elif isinstance(event, Rejected):
            self._linger()
            return
        elif isinstance(event, PeerClosed):
            self._close()
            return
        elif not self._write_paused:
            self._resume_reading()
        self._arm_timer()

    def _dispatch(self, event: RequestReceived) -> None:
        """Run the handler. A Reply is sent at once; a Future or coroutine when done.

        Handlers that can answer from a callback (the proxy's async path) return a
        Future and cost no Task per request.
        """
        self._served = True
        try:
            result = self._handler(event.head, event.body, self._peer, event.decision)
        except Exception:
            log.exception("handler failed for %r", event.head.target)
            result = _INTERNAL_ERROR
        if isinstance(result, Reply | StreamedReply):
            self._send(result)
            return
        future = asyncio.ensure_future(result)  # a Future stays itself; a coroutine: Task
        self._pending = future
        self._arm_timer()  # RESPONDING: no deadline while the handler runs
        future.add_done_callback(self._on_reply)

    def _on_reply(self, future: asyncio.Future[Reply]) -> None:
        if future is not self._pending or future.cancelled():
            return
        self._pending = None
        exc = future.exception()
        if exc is not None:
            log.error("handler failed", exc_info=exc)
            self._send(_INTERNAL_ERROR)
        else:
            self._send(future.result())

    def _send_whole(self, reply: Reply) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._conn.send_response(
            reply.status,
            reply.headers,
            reply.body,
            reply.reason,
            frame_from_body=reply.frame_from_body,
        )
        self._transport.write(self._conn.data_to_send())
        self._answered()

    def _answered(self) -> None:
        if self._conn.must_close:
            self._linger()  # close in stages (RFC 9112 9.6): pipelined bytes get no RST
        elif self._tracker.draining:
            self._close()
        else:
            self._process()  # parses what was pipelined meanwhile; resumes reading

    # --- flow control and timers ----------------------------------------------
    def _pause_reading(self) -> None:
        transport = self._transport
        if not self._read_paused and transport is not None and not transport.is_closing():
            transport.pause_reading()
            self._read_paused = True

    def _resume_reading(self) -> None:
        transport = self._transport
        if self._read_paused and transport is not None and not self._lingering:
            if not transport.is_closing():
                transport.resume_reading()
            self._read_paused = False

    def _arm_timer(self) -> None:
        """Set the deadline of the current phase; the phase's deadline keeps running
        while the phase lasts (slow-loris bound).

        One timer per connection is reused: moving a deadline later costs nothing (the
        timer re-arms itself when it fires early), only an earlier one reschedules.
        """
        phase = self._conn.phase
        if phase is self._timer_phase:
            return
        self._timer_phase = phase
        timeout = self._timeouts.get(phase)
        if phase is Phase.IDLE and not self._served:
            timeout = self._limits.header_timeout_s  # not a byte yet: no keep-alive to keep
        if timeout is None:
            self._deadline = None
            return
        self._deadline = self._clock.time() + timeout
        if self._timer is None or self._deadline < self._timer_at:
            self._schedule(timeout)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = self._clock.time() + delay
        self._timer = self._clock.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        remaining = self._deadline - self._clock.time()
        if remaining > 0:
            self._schedule(remaining)
        else:
            self._on_timeout()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_phase = None
        self._deadline = None

    def _on_timeout(self) -> None:
        if self._transport is None or self._pending is not None or self._lingering:
            self._close()
            return
        if self._conn.phase is Phase.IDLE:
            self._close()
        else:
            self._conn.time_out()
            self._transport.write(self._conn.data_to_send())
            self._linger()

    # --- closing --------------------------------------------------------------
    def _linger(self) -> None:
        """Half-close after an error answer; drain input until EOF or the linger timeout."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._lingering = True
        self._cancel_timer()
        if not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self._write_paused = False
        if self._read_paused:
            transport.resume_reading()
            self._read_paused = False
        self._timer = self._clock.call_later(self._limits.linger_timeout_s, self._close)

    def close_if_idle(self) -> None:
        if self._pending is None:
            self._close()

    def _close(self) -> None:
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    limits: Limits,
    tracker: ConnectionTracker,
    clock: Clock | None = None,
    backlog: int = 4096,
    routing: Routing | None = None,
    transparent: bool = False,
    reuse_port: bool = False,
    connection: type[ServerConnection] = ServerConnection,
) -> asyncio.Server:
    """Start listening, already serving; ``reuse_port``: SO_REUSEPORT, one per core."""
    clock = clock or LoopClock()
    return await asyncio.get_running_loop().create_server(
        lambda: HttpProtocol(
            handler,
            limits=limits,
            tracker=tracker,
            clock=clock,
            routing=routing,
            transparent=transparent,
            connection=connection,
        ),
        host,
        port,
        backlog=backlog,
        reuse_address=True,
        reuse_port=reuse_port,
    )


__all__ = ["ConnectionTracker", "HttpProtocol", "Peer", "Reply", "Routing", "serve"]
