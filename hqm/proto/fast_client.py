"""httptools (llhttp) reader of the plain response to a ClientConnection fast exchange.

It takes only a response it is sure h11 reads the same way: HTTP/1.1, status 200-599
but not 204/304, one Content-Length (digits, within the body limit), no Connection or
Transfer-Encoding, and a head that llhttp accepts *and* that matches h11's grammar
line by line (CRLF only, no obs-fold, no control characters h11 refuses), read the
same way by both (as many fields as lines, the same reason phrase). Field splitting
and body framing are httptools' callbacks; the strict re-check of the head is one
regex. Anything else makes :meth:`FastResponseReader.feed` answer False, and the
caller hands :meth:`FastResponseReader.received` (every byte read so far) to h11.
"""

from __future__ import annotations

import re

try:
    import httptools
except ImportError:  # an optional accelerator: without it, h11 reads every response
    httptools = None

from hqm.proto.envelope import ResponseRecord
from hqm.proto.grammar import FIELD_VALUE, REASON, TOKEN
from hqm.proto.limits import MAX_HEADER_BYTES

#: A whole response head, with the blank line that ends it: the status line (group 1:
#: the reason phrase) and header lines, each CRLF-terminated.
_HEAD = re.compile(
    rb"HTTP/1\.1 [0-9]{3}(?: (%s))?\r\n(?:%s:[ \t]*%s[ \t]*\r\n)*\r\n"
    % (REASON, TOKEN, FIELD_VALUE)
)
#: Statuses read here; 1xx, 204 and 304 (no body, or not the final response) go to h11.
_FAST_STATUSES = frozenset(range(200, 600)) - {204, 304}
#: Response headers left to h11 (framing and keep-alive).
_LEFT_TO_H11 = frozenset({b"transfer-encoding", b"connection"})
#: Longest Content-Length value taken (10^18 bytes); longer digit strings go to h11.
_MAX_LENGTH_DIGITS = 18
_OWS = (b" ", b"\t")
_FIRST_BYTE = ord("H")  # of "HTTP/1.1": anything else goes to h11 at once


class _Unsure(Exception):
    """Raised in a callback: this response is h11's to read."""


class _Stop(Exception):
    """Raised once the response is complete and more bytes follow: llhttp stops there."""


class FastResponseReader:
    """httptools' callbacks and what they gather, one response at a time."""

    __slots__ = (
        "_body",
        "_clean",
        "_head_size",
        "_headers",
        "_length",
        "_max",
        "_parser",
        "_read",
        "_reason",
        "_seen",
        "_status",
        "record",
    )

    def __init__(self, max_body: int) -> None:
        self._max = max_body
        self._parser: httptools.HttpResponseParser | None = None
        self.release()

    def start(self) -> None:
        """Get ready for the next response; the parser is kept when the last one ended
        cleanly (llhttp is then at the start of a message)."""
        if not self._clean or self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def settle(self) -> None:
        """Let go of the finished response's bytes (they are the caller's now: an idle
        pooled connection must not keep its last answer alive); the parser stays."""
        clean = self.record is not None
        self._reset()
        self._clean = clean

    def release(self) -> None:
        """Let go of the response and of the parser (not at the start of a message)."""
        self._parser = None
        self._reset()

    def _reset(self) -> None:
        self._read: list[bytes] = []  # the reads up to the end of the head
        self._seen = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._length = -1
        self._head_size = 0  # 0 until the head is taken
        self._status = 0
        self._body: list[bytes] = []
        #: The last response ended cleanly and ``settle`` let it go: llhttp is at the
        #: start of a message.
        self._clean = False
        #: The response, once complete.
        self.record: ResponseRecord | None = None

    def feed(self, data: bytes) -> ResponseRecord | bool | None:
        """The record, None for more data, False when h11 must read the response."""
        first = not self._seen
        self._seen += len(data)
        if not self._head_size:
            self._read.append(data)
        if first and data[0] != _FIRST_BYTE:
            return False
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._parser = None  # not at the start of a message: a fresh one next time
            if self.record is None:
                return False
        if self.record is not None:
            return self.record
        if not self._head_size and self._seen > MAX_HEADER_BYTES:
            return False  # h11 refuses a head that grows too long
        return None

    def received(self) -> bytes:
        """Every byte read of this response (llhttp stops only after the record)."""
        if not self._head_size:
            return b"".join(self._read)
        return b"".join([self._read[0][: self._head_size], *self._body])

    @property
    def exact(self) -> bool:
        """Complete, and not a byte more was read."""
        return self.record is not None and self._seen == self._head_size + self._length

    # --- httptools callbacks ------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if value[-1:] in _OWS:  # httptools keeps trailing OWS, h11 strips it
            value = value.rstrip(b" \t")
        lower = name.lower()
        if lower == b"content-length":
            if self._length >= 0 or not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                raise _Unsure
            self._length = int(value)
        elif lower in _LEFT_TO_H11:
            raise _Unsure
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if (
            status not in _FAST_STATUSES
            or parser.get_http_version() != "1.1"
            or not 0 <= self._length <= self._max
        ):
            raise _Unsure
        read = self._read
        raw = read[0] if len(read) == 1 else b"".join(read)
        # No CR or LF inside its lines, no empty line but the last: where the match
        # ends is where h11 ends the head (the first blank line).
        head = _HEAD.match(raw)
        if (
            head is None
            or head.end() > MAX_HEADER_BYTES
            or (head[1] or b"") != self._reason
            or raw.count(b"\r\n", 0, head.end()) - 2 != len(self._headers)
        ):
            raise _Unsure  # h11 refuses it or reads it otherwise
        self._read = [raw]
        self._head_size = head.end()
        self._status = status

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = self._body, []  # (its reads are let go once joined)
        self.record = ResponseRecord(
            status=self._status,
            reason=self._reason,
            headers=tuple(self._headers),
            body=body[0] if len(body) == 1 else b"".join(body),
        )
        if self._seen > self._head_size + self._length:
            raise _Stop
