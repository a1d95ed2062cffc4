"""Keep-alive HTTP/1.1 client pool to the app (an asyncio.Protocol feeding the sans-IO
client directly; one timer per exchange)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hqm.io.address import Address
from hqm.proto import limits as L
from hqm.proto.client import ClientConnection
from hqm.proto.envelope import ResponseRecord
from hqm.proto.errors import ProtocolError
from hqm.proto.methods import IDEMPOTENT_METHODS


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


class _Conn(asyncio.Protocol):
    """One keep-alive connection to the app: received bytes go straight into the
    sans-IO ClientConnection; the exchange waits on one future (no stream objects)."""

    __slots__ = ("_received_any", "_waiter", "gone", "proto", "transport")

    def __init__(self, max_response_bytes: int) -> None:
        self.proto = ClientConnection(max_response_bytes)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[ResponseRecord] | None = None
        self._received_any = False
        #: EOF, connection lost, or bytes nobody asked for: never reuse.
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def exchange(self, data: bytes, waiter: asyncio.Future[ResponseRecord]) -> None:
        self._waiter, self._received_any = waiter, False
        assert self.transport is not None
        try:
            self.transport.write(data)
        except (OSError, RuntimeError):  # closed under us: nothing was sent
            self.gone = True
            waiter.set_exception(_StaleConnection())

    def done(self) -> None:
        self._waiter = None

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.gone = True  # bytes after the response or while idle: a desync
            return
        self._received_any = True
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


class UpstreamPool:
    """Sends one request at a time per connection; idle connections are reused."""

    def __init__(self, upstream: Address, settings: PoolSettings | None = None) -> None:
        self.upstream = upstream
        self._settings = settings or PoolSettings()
        self._idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        size = self._settings.max_response_bytes
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(size), self.upstream.host, self.upstream.port
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                f"cannot connect to {self.upstream}: {exc or 'timeout'}", reached=False
            ) from None
        return conn

    def _checkout(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> ResponseRecord:
        conn = self._checkout()
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, headers, body)
            except _StaleConnection:
                if method not in IDEMPOTENT_METHODS:
                    raise UpstreamError(
                        "keep-alive connection closed by the app before answering", reached=True
                    ) from None
        conn = await self._connect()
        try:
            return await self._exchange(conn, method, target, headers, body)
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
    ) -> ResponseRecord:
        try:
            data = conn.proto.send_request(method, target, headers, body)
        except ProtocolError as exc:  # our side refused to send it: never reached
            conn.close()
            raise UpstreamError(str(exc), reached=False, permanent=True) from None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[ResponseRecord] = loop.create_future()
        timer = loop.call_later(self._settings.read_timeout_s, _expire, waiter)
        conn.exchange(data, waiter)
        try:
            response = await waiter
        except _StaleConnection:
            conn.close()
            raise
        except TimeoutError:
            conn.close()
            raise UpstreamError(
                f"no complete answer from {self.upstream} within "
                f"{self._settings.read_timeout_s:g} s",
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
        if conn.proto.reusable and conn.usable() and len(self._idle) < self._settings.pool_size:
            conn.proto.start_next_cycle()
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class _StaleConnection(Exception):
    """The connection died before any response byte: safe to retry if idempotent."""
