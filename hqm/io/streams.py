"""Streamed bodies between the HTTP server and a handler (pass-through): the request
body as it arrives, read with flow control, and the answer written as it comes.

Memory stays bounded: the server stops reading from the client while more than
``STREAM_BUFFER_BYTES`` of its body wait unread, and a handler's ``write`` waits while
the client is not reading its answer (the transport's write buffer is over its mark).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hqm.proto.events import RequestHead

#: Unread request body the server holds before it stops reading from the client: a
#: few socket reads' worth, so a fast client and a fast app keep the pipe full.
STREAM_BUFFER_BYTES = 1 << 20


class AnswerBroken(Exception):
    """A streamed answer cannot go on (its source failed; the raiser logged why): the
    connection is aborted, so the client sees it cut short, never a short body as whole."""


class BodyError(Exception):
    """The client's body did not arrive whole (it closed, timed out or broke framing)."""


class BodyStream:
    """A request body arriving: the server ``feed``s it, the handler ``read``s it."""

    def __init__(self, *, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BodyError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False

    # --- the server's side --------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= STREAM_BUFFER_BYTES and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, reason: str) -> None:
        if not self._done:
            self._error = BodyError(reason)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- the handler's side -------------------------------------------------
    async def read(self) -> bytes:
        """The next bytes of the body; b"" once it is all read. BodyError if it broke."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._paused and self._size < STREAM_BUFFER_BYTES // 2:
            self._paused = False
            self._resume()
        return data

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def full(self) -> bool:
        """Reading from the client is paused until the handler reads on."""
        return self._paused


class ResponseSink(Protocol):
    """What the server offers a streamed answer (implemented by its protocol)."""

    def start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes | None
    ) -> bool: ...

    def send_body(self, data: bytes) -> Awaitable[None] | None: ...

    def end_response(self) -> None: ...


class ResponseStream:
    """A handler's streamed answer: ``start`` once, ``write`` any number of times
    (each waits while the client is slow to read), ``end`` once."""

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self.started = False
        self.ended = False

    def start(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes | None = None
    ) -> bool:
        """False when the answer cannot be framed (a 502 went out instead)."""
        self.started = True
        ok = self._sink.start_response(status, headers, reason)
        if not ok:
            self.ended = True
        return ok

    async def write(self, data: bytes) -> None:
        waiting = self._sink.send_body(data)
        if waiting is not None:
            await waiting

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._sink.end_response()


#: Handles one streamed request: reads ``body``, answers through ``out``. ``decision``
#: is what the server's classifier said of the head.
StreamHandler = Callable[[RequestHead, Any, Any, BodyStream, ResponseStream], Awaitable[None]]
