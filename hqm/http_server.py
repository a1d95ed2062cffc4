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
from http import HTTPStatus

from hqm.clock import Clock, LoopClock, Timer
from hqm.proto.limits import Limits
from hqm.proto.server import (
    PeerClosed,
    Phase,
    Rejected,
    RequestHead,
    RequestReceived,
    ServerConnection,
)

log = logging.getLogger("hqm.http")


_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    #: None: the standard phrase. An app's own phrase (even b"") is passed as given.
    reason: bytes | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int


Handler = Callable[[RequestHead, bytes, Peer], Awaitable[Reply]]


class ConnectionTracker:
    """Every open connection of one listener, for graceful shutdown."""

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.draining = False

    async def drain(self, timeout_s: float) -> None:
        """Close idle connections now; let busy ones finish (then close) up to ``timeout_s``."""
        self.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.connections and loop.time() < deadline:
            busy = [c.closed for c in self.connections]
            await asyncio.wait(busy, timeout=deadline - loop.time())
        for conn in list(self.connections):
            conn.abort()


class HttpProtocol(asyncio.Protocol):
    def __init__(
        self, handler: Handler, *, limits: Limits, tracker: ConnectionTracker, clock: Clock
    ) -> None:
        self._handler = handler
        self._limits = limits
        self._tracker = tracker
        self._clock = clock
        self._conn = ServerConnection(limits)
        self._transport: asyncio.Transport | None = None
        self._peer = Peer("", 0)
        self._task: asyncio.Task[None] | None = None
        self._timer: Timer | None = None
        self._timer_phase: Phase | None = None
        self._write_paused = False
        self._read_paused = False
        self._lingering = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # --- transport callbacks ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=self._limits.write_high_water)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = Peer(str(peer[0]), int(peer[1]))
        self._tracker.connections.add(self)
        self._process()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused request: read and dropped
        self._conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        if self._lingering:
            self._close()
            return False
        self._conn.receive_data(b"")
        self._process()
        return True  # keep the write side open until our answer is out

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._tracker.connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a waiting client left; its request stays queued
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # --- the loop between bytes and events ------------------------------------
    def _process(self) -> None:
        if self._task is not None or self._transport is None:
            return
        event = self._conn.next_event()
        out = self._conn.data_to_send()
        if out:
            self._transport.write(out)
        if isinstance(event, RequestReceived):
            self._cancel_timer()
            self._task = asyncio.get_running_loop().create_task(self._respond(event))
        elif isinstance(event, Rejected):
            self._linger()
            return
        elif isinstance(event, PeerClosed):
            self._close()
            return
        self._update_reading()
        self._arm_timer()

    async def _respond(self, event: RequestReceived) -> None:
        try:
            reply = await self._handler(event.head, event.body, self._peer)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed for %r", event.head.target)
            reply = Reply(500, [(b"Content-Type", b"text/plain")], b"internal error\n")
        if self._transport is None or self._transport.is_closing():
            return
        reason = reply.reason if reply.reason is not None else _PHRASES.get(reply.status, b"")
        self._conn.send_response(reply.status, reply.headers, reply.body, reason)
        self._transport.write(self._conn.data_to_send())
        self._task = None
        if self._conn.must_close or self._tracker.draining:
            self._close()
        else:
            self._process()

    # --- flow control and timers ----------------------------------------------
    def _update_reading(self) -> None:
        if self._transport is None or self._transport.is_closing() or self._lingering:
            return
        should_pause = self._write_paused or self._task is not None
        if should_pause and not self._read_paused:
            self._transport.pause_reading()
            self._read_paused = True
        elif not should_pause and self._read_paused:
            self._transport.resume_reading()
            self._read_paused = False

    def _arm_timer(self) -> None:
        phase = self._conn.phase
        if phase is self._timer_phase and self._timer is not None:
            return  # the phase's deadline keeps running (slow-loris bound)
        self._cancel_timer()
        timeout = {
            Phase.IDLE: self._limits.idle_timeout_s,
            Phase.HEAD: self._limits.header_timeout_s,
            Phase.BODY: self._limits.body_timeout_s,
        }.get(phase)
        if timeout is not None:
            self._timer_phase = phase
            self._timer = self._clock.call_later(timeout, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_phase = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self._transport is None or self._task is not None or self._lingering:
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
        if self._task is None:
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
) -> asyncio.Server:
    """Start listening; the returned server is already serving."""
    clock = clock or LoopClock()
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpProtocol(handler, limits=limits, tracker=tracker, clock=clock),
        host,
        port,
        backlog=backlog,
        reuse_address=True,
    )
