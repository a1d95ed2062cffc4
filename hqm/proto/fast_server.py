"""Sans-IO HTTP/1.1 server connection with an httptools (llhttp) fast path for the
common request; h11 (``ServerConnection``) stays the engine of record.

The fast path takes only what it is sure of: a request line with a method httptools
knows (CONNECT aside) and HTTP/1.0 or 1.1, a head whose every line is CRLF-terminated
and strictly formed (token names; values of visible ASCII and obs-text, spaces and
tabs only between words or as OWS around them; no control characters, no obs-fold),
no duplicate names, no Transfer-Encoding, Expect or Upgrade, a Content-Length body
(or none) within the limits, and Host on HTTP/1.1. Anything else, or a head httptools
refuses, is *deferred*: the bytes received for the request are handed to h11 as if h11
had read the connection from the start, and h11 answers from then on (refusals
included: the fast path never refuses a head itself).

Whole answers are written by the writer both engines share (``framing.answer_bytes``,
h11's bytes). Whatever else h11 must write (a streamed answer, a refusal after the
head, an answer the writer leaves to h11) it writes after it is given a small request
of the same meaning for the answer side (HEAD or not, the HTTP version, the Connection
header), so framing and keep-alive are h11's there too.
"""

from __future__ import annotations

import re

import h11

try:
    import httptools
except ImportError:  # an optional accelerator: without it, h11 reads every request
    httptools = None

from hqm.proto.events import (
    AWAITING_RESPONSE,
    NEED_DATA,
    PEER_CLOSED,
    BodyChunk,
    Classify,
    Event,
    Phase,
    Rejected,
    RequestHead,
    RequestStarted,
)
from hqm.proto.framing import client_keeps_alive
from hqm.proto.grammar import TOKEN
from hqm.proto.limits import Limits
from hqm.proto.server import ServerConnection

#: A field-value character h11 takes that is plain: visible ASCII or obs-text (h11
#: also takes most control characters; those go to it).
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_VALUE = rb"(?:" + _VCHAR + rb"(?:[\x21-\x7e\x80-\xff \t]*" + _VCHAR + rb")?)?"
#: A whole head the fast path takes: every line CRLF, nothing h11 would read otherwise.
#: Any token method: httptools knows the registered ones and refuses (defers) the rest.
_HEAD = re.compile(
    rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/(1\.[01])\r\n"
    rb"(?:" + TOKEN + rb":[ \t]*" + _VALUE + rb"[ \t]*\r\n)*\r\n"
)
#: h11's end of a head: the first blank line, bare LF forms included.
_BLANK_LINE = re.compile(rb"\n\r?\n")
#: First bytes of a request line the fast path may take (a token's).
_METHOD_START = frozenset(
    b"-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
#: Header names whose presence sends the request to h11 (it refuses or handles them).
_DEFERRED_NAMES = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_OWS = (b" ", b"\t")
#: Longest Content-Length value taken (10^18 bytes): longer digit strings go to h11.
_MAX_LENGTH_DIGITS = 18


def _primer(head: bool, version: bytes, connection: bytes | None) -> bytes:
    """The request h11 reads for the answer side: as the real one for what framing
    and keep-alive depend on (HEAD, HTTP version, Connection), with no body."""
    line = b"HEAD" if head else b"GET"
    extra = b"" if connection is None else b"Connection: " + connection + b"\r\n"
    return b"%s / HTTP/%s\r\nHost: h\r\n%s\r\n" % (line, version, extra)


class _Fields:
    """httptools' callbacks: the header fields of one head, in received order."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if value[-1:] in _OWS:  # httptools keeps trailing OWS, h11 strips it
            value = value.rstrip(b" \t")
        self.items.append((name, value))


class FastServerConnection(ServerConnection):
    """``ServerConnection`` with heads read by httptools while they are plain; the
    first head that is not makes the connection h11's for good."""

    def __init__(self, limits: Limits, classify: Classify | None = None) -> None:
        super().__init__(limits, classify)
        #: True once h11 reads the input (this connection's rest is ServerConnection's).
        self._deferred = False
        self._buf = bytearray()
        #: Where to look for the end of the head next (what was searched stays searched).
        self._scan_from = 0
        #: Body bytes still to come of the current request; None: no head accepted.
        self._remaining: int | None = None
        self._length = 0

    @property
    def engine(self) -> str:
        """Who reads this connection's input now: "httptools", or "h11" once deferred."""
        return "h11" if self._deferred else "httptools"

    # --- input -------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self._deferred:
            super().receive_data(data)
        elif not (self._failed or self._eof):
            if data:
                self._buf += data
            else:
                self._eof = True

    def next_event(self) -> Event:
        if self._deferred:
            return super().next_event()
        if self._failed or self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED):
            return PEER_CLOSED
        if self._awaiting:
            return AWAITING_RESPONSE
        if self._remaining is None:
            return self._read_head()
        return self._read_body()

    def _defer(self) -> Event:
        """Hand the current request's bytes (and an EOF) to h11, and the connection."""
        self._deferred = True
        data = bytes(self._buf)
        self._buf = bytearray()
        self._line_start = data[:5]
        if data:
            self._h11.receive_data(data)
        if self._eof:
            self._h11.receive_data(b"")
        return super().next_event()

    def _read_head(self) -> Event:
        buf = self._buf
        if not buf:
            if self._eof:
                self._failed = True
                return PEER_CLOSED
            return NEED_DATA
        if buf[0] not in _METHOD_START:
            return self._defer()
        blank = _BLANK_LINE.search(buf, self._scan_from)
        if blank is None:
            if self._eof or len(buf) > self._limits.max_header_bytes:
                return self._defer()
            self._scan_from = max(0, len(buf) - 2)
            return NEED_DATA
        end = blank.end()
        line = _HEAD.fullmatch(buf, 0, end)
        if line is None:
            return self._defer()
        raw = bytes(buf[:end])
        fields = _Fields()
        try:
            httptools.HttpRequestParser(fields).feed_data(raw)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return self._defer()
        return self._accept(line, raw, fields.items)

    def _accept(self, line: re.Match[bytes], raw: bytes, items: list) -> Event:
        """Take a head the fast path is sure of, or defer it to h11."""
        method, target, version = line.group(1, 2, 3)
        if len(items) != raw.count(b"\r\n") - 2:
            return self._defer()  # httptools saw other fields than the lines
        names = {name.lower(): value for name, value in items}
        if len(names) != len(items) or not _DEFERRED_NAMES.isdisjoint(names):
            return self._defer()
        if version == b"1.1" and b"host" not in names:
            return self._defer()
        length = 0
        declared = names.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > _MAX_LENGTH_DIGITS:
                return self._defer()
            length = int(declared)
        # The size ServerConnection measures (request line + "name: value\r\n" each).
        size = len(method) + len(target) + 12 + sum(len(n) + len(v) + 4 for n, v in items)
        if size > self._limits.max_header_bytes or length > self._limits.max_body_bytes:
            return self._defer()  # h11's 431 / 413 (after classify, as there)
        self._method = method
        head = self._head = RequestHead(
            method=method, target=target, headers=tuple(items), http_version=version
        )
        connection = names.get(b"connection")
        self._keep_alive = client_keeps_alive(version, () if connection is None else (connection,))
        del self._buf[: len(raw)]
        self._scan_from = 0
        self._body = []
        self._remaining = self._length = length
        decision = self._decision = self._classify(head) if self._classify else None
        self._streaming = bool(getattr(decision, "stream", False))
        if self._streaming:
            return RequestStarted(head, decision)
        return self._read_body()

    def _read_body(self) -> Event:
        while True:
            remaining = self._remaining
            assert remaining is not None
            if remaining == 0:
                return self._end_of_message()
            buf = self._buf
            if not buf:
                if self._eof:
                    return self._reject(
                        400,
                        "peer closed connection without sending complete message body "
                        f"(received {self._length - remaining} bytes, expected {self._length})",
                    )
                return NEED_DATA
            size = min(remaining, len(buf))
            chunk = bytes(buf[:size])
            del buf[:size]
            self._remaining = remaining - size
            if self._streaming:
                return BodyChunk(chunk)
            self._body.append(chunk)

    def _end_of_message(self) -> Event:
        self._remaining = None
        return super()._end_of_message()

    # --- output -------------------------------------------------------------
    def _request_read(self) -> bool:
        if self._deferred:
            return super()._request_read()
        return self._head is not None and self._remaining is None and self._h11_idle

    @property
    def _h11_idle(self) -> bool:
        """h11 has not been told the current request (it is told only to answer it)."""
        return self._h11.their_state is h11.IDLE

    def _ready_for_h11_answer(self) -> None:
        """Tell h11's answer side the request (once): h11 writes this answer."""
        head = self._head
        if self._deferred or head is None or not self._h11_idle:
            return
        # The fast path took no repeated names: one Connection field at most.
        connection = next((v for n, v in head.headers if n.lower() == b"connection"), None)
        self._h11.receive_data(_primer(head.method == b"HEAD", head.http_version, connection))
        self._h11.next_event()  # the primer's Request
        self._h11.next_event()  # and its EndOfMessage: h11 now awaits our answer

    def _answered(self) -> None:
        if self._deferred:
            super()._answered()
        else:  # h11 never saw this request: it is still idle
            self._failed = not self._keep_alive  # "Connection: close" went out
            self._next_cycle()

    # --- state for the IO layer ---------------------------------------------
    @property
    def phase(self) -> Phase:
        if self._deferred:
            return super().phase
        if self._failed or self._h11.our_state in (h11.CLOSED, h11.MUST_CLOSE, h11.ERROR):
            return Phase.CLOSED
        if self._awaiting:
            return Phase.RESPONDING
        if self._remaining is not None:
            return Phase.BODY
        return Phase.HEAD if self._buf else Phase.IDLE

    def _next_cycle(self) -> None:
        if self._deferred:
            super()._next_cycle()
            return
        if self._streaming and self._remaining is not None:
            self._failed = True  # answered mid-body: the rest is not read (as h11's)
            return
        self._awaiting = False
        self._head = None
        self._method = None
        self._remaining = None
        if self._h11.our_state is h11.DONE:  # h11 wrote this answer
            self._h11.start_next_cycle()

    def _reject(self, status: int, message: str) -> Rejected:
        if not self._deferred and self._method is None:
            self._line_start = bytes(self._buf[:5])
        return super()._reject(status, message)


def engine_name(parser: str) -> str:
    """Who reads requests under ``--parser``: "httptools" (the fast path) or "h11"."""
    return "httptools" if connection_factory(parser) is FastServerConnection else "h11"


def connection_factory(parser: str) -> type[ServerConnection]:
    """The server connection class for ``--parser``: ``auto`` (the fast path) or ``h11``."""
    if parser == "h11":
        return ServerConnection
    if parser == "auto":
        return ServerConnection if httptools is None else FastServerConnection
    raise ValueError(f"unknown parser {parser!r}")
