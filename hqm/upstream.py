"""Keep-alive HTTP/1.1 client pool to the app (asyncio streams + the sans-IO client)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hqm.config import Address
from hqm.proto import limits as L
from hqm.proto.client import ClientConnection
from hqm.proto.envelope import ResponseRecord
from hqm.proto.errors import ProtocolError

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})
_READ_SIZE = 256 * 1024


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


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    proto: ClientConnection

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


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
        try:
            async with asyncio.timeout(self._settings.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self.upstream.host, self.upstream.port, limit=_READ_SIZE
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(
                f"cannot connect to {self.upstream}: {exc or 'timeout'}", reached=False
            ) from None
        return _Conn(reader, writer, ClientConnection(self._settings.max_response_bytes))

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
        received_any = False
        try:
            conn.writer.write(conn.proto.send_request(method, target, headers, body))
            async with asyncio.timeout(self._settings.read_timeout_s):
                while True:
                    data = await conn.reader.read(_READ_SIZE)
                    if not data and not received_any:
                        raise _StaleConnection
                    received_any = True
                    response = conn.proto.receive_data(data)
                    if response is not None:
                        break
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
            if exc.error_status_hint == 400:  # our side refused to send it: never reached
                raise UpstreamError(str(exc), reached=False, permanent=True) from None
            raise UpstreamError(str(exc), reached=True) from None
        except OSError as exc:
            conn.close()
            if not received_any:
                raise _StaleConnection from None
            raise UpstreamError(
                f"connection to {self.upstream} failed: {exc}", reached=True
            ) from None
        if conn.proto.reusable and len(self._idle) < self._settings.pool_size:
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
