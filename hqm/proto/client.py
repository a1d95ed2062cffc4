"""Sans-IO HTTP/1.1 client exchange on h11: a request out, a response record in.

The usual exchange of a worker takes a fast path that h11 only joins when needed: a
request with one Host, a Content-Length matching its body and no header that changes
framing (Connection, Expect, Transfer-Encoding, Upgrade), checked against h11's own
grammar, to a method other than HEAD or CONNECT; then a plain response, read by
httptools (llhttp) and re-checked against h11's grammar (``hqm.proto.fast_client``
says what plain is). The moment anything else shows up, the bytes read so far go to
h11 as if it had handled the exchange from the start (it is told the request through
a stand-in event that frames exactly like it), and h11 decides, errors included. So
what the fast path returns is what h11 returns; tests/test_proto_client_fast.py
checks both ways against each other. ``parser="h11"`` (or no httptools) has h11 do
every exchange.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import h11

from hqm.proto import fast_client
from hqm.proto.envelope import ResponseRecord
from hqm.proto.errors import ProtocolError
from hqm.proto.grammar import DEFAULT_PARSER, FIELD_VALUE, PARSERS, TOKEN, VCHAR
from hqm.proto.limits import MAX_HEADER_BYTES, MAX_RESPONSE_BYTES

# h11's grammar: what matches here, h11 accepts and reads the same way.
_LINES = re.compile(rb"(?:%s: %s\r\n)*" % (TOKEN, FIELD_VALUE))
_METHOD = re.compile(TOKEN)
_TARGET = re.compile(VCHAR + rb"+")
#: Request headers that change how h11 frames or keeps the exchange.
_FRAMING = frozenset({b"transfer-encoding", b"connection", b"expect", b"upgrade"})
_EOM = h11.EndOfMessage()
#: Per method, a request h11 frames exactly like the real one (same method, a body of
#: Content-Length bytes, keep-alive).
_STAND_INS: dict[bytes, h11.Request] = {}


def _stand_in(method: bytes) -> h11.Request:
    event = _STAND_INS.get(method)
    if event is None:
        event = h11.Request(
            method=method, target=b"/", headers=[(b"Host", b"h"), (b"Content-Length", b"0")]
        )
        if len(_STAND_INS) < 64:
            _STAND_INS[method] = event
    return event


class ClientConnection:
    """One keep-alive connection to the app; one exchange at a time."""

    def __init__(
        self, max_response_bytes: int = MAX_RESPONSE_BYTES, *, parser: str = DEFAULT_PARSER
    ) -> None:
        """``parser``: "auto" (the fast path when httptools imports) or "h11" (h11 for
        every exchange)."""
        if parser not in PARSERS:
            raise ValueError(f"unknown parser {parser!r}")
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._max = max_response_bytes
        self._response: h11.Response | None = None
        self._body: list[bytes] = []
        self._size = 0
        #: The fast path's response reader; None: h11 does every exchange.
        self._reader = (
            fast_client.FastResponseReader(max_response_bytes)
            if parser == "auto" and fast_client.httptools is not None
            else None
        )
        #: Method of the exchange on the fast path (h11 not told yet), else None.
        self._fast: bytes | None = None
        self._done = False  # the fast exchange completed
        self._after = False  # and bytes (or EOF) came after it

    def send_request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        """Bytes of one complete request. Raises ProtocolError (400) if h11 refuses it.

        h11 validates the request and tracks the exchange, but its writer moves Host to
        the front; the head is written here instead, headers in the order given.
        """
        if self._fast is not None:
            raise ProtocolError("request cannot be replayed: exchange in progress")
        lines = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
        reader = self._reader
        if reader is not None and self._fast_path_ok(method, target, headers, body, lines):
            self._fast, self._done, self._after = method, False, False
            reader.start()
            return b"%s %s HTTP/1.1\r\n%s\r\n%s" % (method, target, lines, body)
        try:
            self._h11.send(h11.Request(method=method, target=target, headers=headers))
            out = [b"%s %s HTTP/1.1\r\n%s\r\n" % (method, target, lines)]
            if body:
                out.append(self._h11.send(h11.Data(data=body)))
            out.append(self._h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise ProtocolError(
                f"request cannot be replayed: {exc}", error_status_hint=400
            ) from None
        self._response = None
        self._body = []
        self._size = 0
        return b"".join(out)

    def _fast_path_ok(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        lines: bytes,
    ) -> bool:
        if self._h11.our_state is not h11.IDLE or method in (b"CONNECT", b"HEAD"):
            return False
        hosts, length = 0, None
        for name, value in headers:
            lower = name.lower()
            if lower == b"host":
                hosts += 1
            elif lower == b"content-length":
                if length is not None:
                    return False
                length = value
            elif lower in _FRAMING:
                return False
        if hosts != 1 or length != b"%d" % len(body):
            return False
        return (
            lines.count(b"\n") == len(headers)  # no line break hidden in a value
            and _LINES.fullmatch(lines) is not None
            and _METHOD.fullmatch(method) is not None
            and _TARGET.fullmatch(target) is not None
        )

    def receive_data(self, data: bytes) -> ResponseRecord | None:
        """Feed bytes from the app (``b""`` = EOF); the record once the response is complete.

        Raises ProtocolError with hint 502 on a malformed or oversized response.
        """
        if self._fast is None:
            return self._receive(data)
        if self._done:  # after the response, as h11 answers: never reuse
            reusable, self._after = self.reusable, True
            if not data and reusable:
                raise ProtocolError("upstream closed the connection", error_status_hint=502)
            return None
        if data:
            reader = self._reader
            assert reader is not None
            response = reader.feed(data)
            if response is not False:
                self._done = response is not None
                return response  # type: ignore[return-value]
        return self._to_h11(eof=not data)

    def _to_h11(self, *, eof: bool) -> ResponseRecord | None:
        """Hand the exchange to h11: the stand-in request, what was read, then EOF."""
        method, self._fast = self._fast, None
        assert method is not None and self._reader is not None
        self._h11.send(_stand_in(method))
        self._h11.send(_EOM)
        self._response = None
        self._body = []
        self._size = 0
        read = self._reader.received()
        self._reader.release()
        response = self._receive(read) if read else None
        if eof and response is None:
            return self._receive(b"")
        return response

    def _receive(self, data: bytes) -> ResponseRecord | None:
        try:
            self._h11.receive_data(data)
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    self._response = event
                elif isinstance(event, h11.Data):
                    self._size += len(event.data)
                    if self._size > self._max:
                        raise ProtocolError("upstream response too large", error_status_hint=502)
                    self._body.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    response = self._response
                    assert response is not None
                    body, self._body = self._body, []  # (the caller's alone from now on)
                    return ResponseRecord(
                        status=response.status_code,
                        reason=response.reason,
                        headers=tuple(response.headers.raw_items()),
                        body=b"".join(body),
                        http_version=response.http_version,
                    )
                elif isinstance(event, h11.ConnectionClosed):
                    raise ProtocolError("upstream closed the connection", error_status_hint=502)
                else:  # PAUSED cannot happen before EndOfMessage on the client side
                    return None
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(
                f"malformed upstream response: {exc}", error_status_hint=502
            ) from None

    @property
    def reusable(self) -> bool:
        """Another exchange may follow; never with unread bytes after the response
        (they would be taken for the next response: a desync)."""
        if self._fast is not None:
            assert self._reader is not None
            return self._done and not self._after and self._reader.exact
        unread, closed = self._h11.trailing_data
        return (
            self._h11.our_state is h11.DONE
            and self._h11.their_state is h11.DONE
            and not unread
            and not closed  # h11 would still say yes after EOF ended a close-delimited body
        )

    def start_next_cycle(self) -> None:
        if self._fast is not None:  # h11 never joined: it is still IDLE
            if not self.reusable:
                raise ProtocolError("connection not reusable", error_status_hint=502)
            self._fast = None
            assert self._reader is not None
            self._reader.settle()
            return
        self._h11.start_next_cycle()


_KEEP_ALIVE_TIMEOUT = re.compile(rb"(?:^|[,;\s])timeout\s*=\s*(\d{1,9})(?:$|[,;\s])", re.I)


def keep_alive_timeout(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """Seconds from the app's ``Keep-Alive: timeout=N`` (RFC 2068 19.7.1.1), if any."""
    for name, value in headers:
        if name.lower() == b"keep-alive":
            match = _KEEP_ALIVE_TIMEOUT.search(value)
            if match:
                return int(match.group(1))
    return None
