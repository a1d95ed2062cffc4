"""Keep-alive HTTP/1.1 client pool to the app (an asyncio.Protocol feeding the sans-IO
client directly; one timer per exchange)."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from hqm.io.address import Address
from hqm.io.budget import Hold
from hqm.proto import limits as L
from hqm.proto.client import ClientConnection, keep_alive_timeout
from hqm.proto.envelope import ResponseRecord
from hqm.proto.errors import ProtocolError
from hqm.proto.grammar import DEFAULT_PARSER


class UpstreamError(Exception):
    """The app could not be asked or did not answer.

    ``reached`` is False only when the request certainly never reached the app
    (connect failed), which makes any request safe to retry.
    """

    def __init__(self, message: str, *, reached: bool, permanent: bool = False) -> None:
        super().__init__(message)
        self.reached = reached
        #: True when asking again cannot help (the stored request cannot be sent).
        self.permanent = permanent


#: The budget hold (``--max-inflight-bytes``) the answer of the current task's request
#: is charged to, until its outcome is recorded (set per delivery by the worker loop;
#: unset: not counted).
ANSWER_HOLD: ContextVar[Hold | None] = ContextVar("ANSWER_HOLD", default=None)


class _Conn(asyncio.Protocol):
    """One keep-alive connection to the app: received bytes go straight into the
    sans-IO ClientConnection; the exchange waits on one future (no stream objects).

    Each read is charged to the exchange's budget hold; past the budget, reading stops
    (the app's bytes wait in the socket buffers) until bytes come back, except for the
    oldest answer in hand, which always goes on (``hqm.io.budget``)."""

    __slots__ = ("_hold", "_paused", "_received_any", "_waiter", "gone", "proto", "transport")

    def __init__(self, max_response_bytes: int, parser: str) -> None:
        self.proto = ClientConnection(max_response_bytes, parser=parser)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[ResponseRecord] | None = None
        self._hold: Hold | None = None
        self._paused = False
        self._received_any = False
        #: EOF, connection lost, or bytes nobody asked for: never reuse.
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def exchange(
        self, data: bytes, waiter: asyncio.Future[ResponseRecord], hold: Hold | None = None
    ) -> None:
        self._waiter, self._received_any, self._hold = waiter, False, hold
        assert self.transport is not None
        try:
            self.transport.write(data)
        except (OSError, RuntimeError):  # closed under us: nothing was sent
            self.gone = True
            waiter.set_exception(_StaleConnection())

    def done(self) -> None:
        self._waiter, self._hold = None, None
        if self._paused:
            self._resume()

    def _pause(self, hold: Hold) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()
            hold.when_free(self._resume)

    def _resume(self) -> None:
        if not self._paused:
            return
        hold = self._hold
        if hold is not None and hold.blocked:
            hold.when_free(self._resume)  # another answer took what came back
            return
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.gone = True  # bytes after the response or while idle: a desync
            return
        self._received_any = True
        hold = self._hold
        if hold is not None:
            hold.charge(len(data))
            if hold.blocked and not self._paused:
                self._pause(hold)
        try:
            response = self.proto.receive_data(data)
        except ProtocolError as exc:
            waiter.set_exception(exc)
            return
        if response is not None:
            waiter.set_result(response)

    def eof_received(self) -> bool:
        self.gone = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if not self._received_any:
                waiter.set_exception(_StaleConnection())
                return False
            try:  # completes a close-delimited body, or says what was cut short
                response = self.proto.receive_data(b"")
            except ProtocolError as exc:
                waiter.set_exception(exc)
                return False
            if response is not None:
                waiter.set_result(response)
            else:
                closed = ProtocolError("upstream closed the connection", error_status_hint=502)
                waiter.set_exception(closed)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if not self._received_any:
                waiter.set_exception(_StaleConnection())
            elif exc is None:
                self.eof_received()
            else:
                waiter.set_exception(exc if isinstance(exc, OSError) else OSError(str(exc)))

    def usable(self) -> bool:
        return not self.gone and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.gone = True
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[ResponseRecord]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


@dataclass(frozen=True, slots=True)
class PoolSettings:
    connect_timeout_s: float = L.CONNECT_TIMEOUT_S
    read_timeout_s: float = L.READ_TIMEOUT_S
    pool_size: int = L.POOL_SIZE
    max_response_bytes: int = L.MAX_RESPONSE_BYTES
    idle_timeout_s: float = L.UPSTREAM_IDLE_TIMEOUT_S
    #: --parser: who reads the app's answers (``hqm.proto.client``).
    parser: str = DEFAULT_PARSER


#: A pooled connection idle at least this long is polled for a close before reuse.
_POLL_AFTER_IDLE_S = 0.01


def _peer_closed(conn: _Conn) -> bool:
    """An idle connection with something to read has been closed (or desynced) by the
    app, even if the loop has not yet seen the FIN: a poll of the socket tells."""
    transport = conn.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class UpstreamPool:
    """Sends one request at a time per connection; idle connections are reused until
    the app closes them, they idle past ``idle_timeout_s``, or past the app's own
    ``Keep-Alive: timeout``.

    A reused connection that the app closes or resets before any byte of an answer,
    within ``STALE_WINDOW_S`` of the write, did not take the request (RFC 9112 section
    9.3.1; docs/architecture.md §5): it is sent again at once on a fresh connection,
    for any method, and no attempt is spent.
    """

    def __init__(
        self,
        upstream: Address,
        settings: PoolSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self._settings = settings or PoolSettings()
        self._clock = clock
        #: (connection, idle since, when it must retire), most recently used last.
        self._idle: list[tuple[_Conn, float, float]] = []
        #: Requests sent again because a reused connection had been closed by the app.
        self.stale_retries = 0

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        size, parser = self._settings.max_response_bytes, self._settings.parser
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(size, parser), self.upstream.host, self.upstream.port
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                f"cannot connect to {self.upstream}: {exc or 'timeout'}", reached=False
            ) from None
        return conn

    def _checkout(self) -> _Conn | None:
        now = self._clock()
        while self._idle:
            conn, idle_since, retire_at = self._idle.pop()
            # (a connection back from its last answer moments ago skips the poll: the
            # hot path under load; a close racing it is the stale case below)
            fresh = now - idle_since < _POLL_AFTER_IDLE_S
            if conn.usable() and now < retire_at and (fresh or not _peer_closed(conn)):
                return conn
            conn.close()
        return None

    def _checkin(self, conn: _Conn, response: ResponseRecord) -> None:
        keep_for = self._settings.idle_timeout_s
        app_timeout = keep_alive_timeout(response.headers)
        if app_timeout is not None:
            keep_for = min(keep_for, app_timeout - L.KEEP_ALIVE_MARGIN_S)
        if keep_for > 0 and len(self._idle) < self._settings.pool_size:
            conn.proto.start_next_cycle()
            now = self._clock()
            self._idle.append((conn, now, now + keep_for))
        else:
            conn.close()

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        read_timeout_s: float | None = None,
        stamp: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> ResponseRecord:
        """``read_timeout_s``: this request's own limit (None: the pool's). ``stamp``: a
        header minted anew for each time the request is written (a replay token is
        spent by the first proxy that reads it, so a resend needs a fresh one)."""
        timeout_s = read_timeout_s or self._settings.read_timeout_s
        conn = self._checkout()
        if conn is not None:
            sent_at = self._clock()
            try:
                return await self._exchange(
                    conn, method, target, _stamped(headers, stamp), body, timeout_s
                )
            except _StaleConnection:
                if self._clock() - sent_at > L.STALE_WINDOW_S:
                    # closed long after the request went: the app had it (it crashed
                    # or was killed while working on it), so it is not sent again here
                    raise UpstreamError(
                        "the app closed the connection without answering", reached=True
                    ) from None
                self.stale_retries += 1  # the app never took it: send it again
        conn = await self._connect()
        try:
            return await self._exchange(
                conn, method, target, _stamped(headers, stamp), body, timeout_s
            )
        except _StaleConnection:
            raise UpstreamError(
                "the app closed the connection without answering", reached=True
            ) from None

    async def _exchange(
        self,
        conn: _Conn,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout_s: float,
    ) -> ResponseRecord:
        try:
            data = conn.proto.send_request(method, target, headers, body)
        except ProtocolError as exc:  # our side refused to send it: never reached
            conn.close()
            raise UpstreamError(str(exc), reached=False, permanent=True) from None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[ResponseRecord] = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter)
        conn.exchange(data, waiter, ANSWER_HOLD.get())
        try:
            response = await waiter
        except _StaleConnection:
            conn.close()
            raise
        except TimeoutError:
            conn.close()
            raise UpstreamError(
                f"no complete answer from {self.upstream} within {timeout_s:g} s",
                reached=True,
            ) from None
        except ProtocolError as exc:
            conn.close()
            raise UpstreamError(str(exc), reached=True) from None
        except OSError as exc:
            conn.close()
            raise UpstreamError(
                f"connection to {self.upstream} failed: {exc}", reached=True
            ) from None
        except BaseException:  # cancelled mid-exchange: the connection is unusable
            conn.close()
            raise
        finally:
            timer.cancel()
            conn.done()
        if conn.proto.reusable and conn.usable():
            self._checkin(conn, response)
        else:
            conn.close()
        return response

    async def close(self) -> None:
        for conn, _, _ in self._idle:
            conn.close()
        self._idle.clear()


def _stamped(
    headers: list[tuple[bytes, bytes]], stamp: Callable[[], tuple[bytes, bytes]] | None
) -> list[tuple[bytes, bytes]]:
    return headers if stamp is None else [*headers, stamp()]


class _StaleConnection(Exception):
    """A connection died before any byte of a response: the app did not take it."""


def upstream_pools(
    upstream: Address, upstreams: Mapping[str, Address], settings: PoolSettings | None
) -> dict[str, UpstreamPool]:
    """A pool per app a worker may call: "default" (``--upstream``) and each of
    ``[upstreams]``. No connection is made before the first request."""
    addresses = {**upstreams, "default": upstream}
    return {name: UpstreamPool(address, settings) for name, address in addresses.items()}
