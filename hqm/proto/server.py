"""Sans-IO HTTP/1.1 server connection on h11: bytes in, events out, bytes to send.

Adds to h11 what a proxy needs and h11 leaves out: smuggling shapes refused with 400
(Content-Length together with Transfer-Encoding, Transfer-Encoding in HTTP/1.0), a body
bound for Content-Length and chunked bodies alike (413 before the body is read when the
length is declared), CONNECT/Upgrade refused with 501, automatic ``100 Continue`` once
a head is accepted, and HEAD/204/304 framing on the way out.

Every response it writes carries a reason phrase: the standard one (``http.HTTPStatus``)
unless the caller passes the app's own (kept as given, even empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

import h11

from hqm.proto.envelope import Headers
from hqm.proto.errors import ProtocolError
from hqm.proto.limits import Limits

_NO_BODY_STATUSES = frozenset({204, 304})
_PHRASES = {status.value: status.phrase.encode() for status in HTTPStatus}


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (b"" for a code HTTPStatus does not know)."""
    return _PHRASES.get(status, b"")


class Phase(Enum):
    """Where the connection is, for the IO layer's timers."""

    IDLE = "idle"  # between requests, nothing buffered: idle keep-alive timeout
    HEAD = "head"  # part of a request head received: header timeout
    BODY = "body"  # head accepted, body arriving: body timeout
    RESPONDING = "responding"  # request complete, our answer is pending: no timer
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: bytes
    target: bytes
    #: (raw-case name, value) in received order.
    headers: Headers
    http_version: bytes


@dataclass(frozen=True, slots=True)
class RequestReceived:
    head: RequestHead
    body: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """The request was refused; an error response is queued and the connection closes."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class NeedData:
    pass


@dataclass(frozen=True, slots=True)
class AwaitingResponse:
    """A request is complete; nothing more is parsed until ``send_response``."""


@dataclass(frozen=True, slots=True)
class PeerClosed:
    pass


Event = RequestReceived | Rejected | NeedData | AwaitingResponse | PeerClosed
NEED_DATA = NeedData()
AWAITING_RESPONSE = AwaitingResponse()
PEER_CLOSED = PeerClosed()


_VERSIONS = frozenset({b"1.0", b"1.1"})


def _check_head(request: h11.Request, limits: Limits) -> None:
    if request.http_version not in _VERSIONS:
        raise ProtocolError("only HTTP/1.0 and HTTP/1.1 are spoken here", error_status_hint=505)
    has_te = has_cl = False
    length = 0
    # h11 bounds only a head still incomplete in its buffer; one that arrived whole in
    # a single read is measured here (request line + "name: value\r\n" per field).
    head_size = len(request.method) + len(request.target) + 12
    for name, value in request.headers:
        head_size += len(name) + len(value) + 4
        if name == b"transfer-encoding":
            has_te = True
        elif name == b"content-length":
            has_cl = True
            length = int(value)  # h11 validated it is digits
        elif name == b"upgrade":
            raise ProtocolError("Upgrade is not supported", error_status_hint=501)
    if head_size > limits.max_header_bytes:
        raise ProtocolError("request header block too large", error_status_hint=431)
    if has_te and has_cl:
        raise ProtocolError("Content-Length with Transfer-Encoding", error_status_hint=400)
    if has_te and request.http_version < b"1.1":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request", error_status_hint=400)
    if request.method == b"CONNECT":
        raise ProtocolError("CONNECT is not supported", error_status_hint=501)
    if length > limits.max_body_bytes:
        raise ProtocolError("request body too large", error_status_hint=413)


class ServerConnection:
    """One client connection's HTTP/1.1 state."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self._head: RequestHead | None = None
        #: Method of the request being answered (known before its head is accepted).
        self._method: bytes | None = None
        #: First bytes of the current request line: a HEAD whose head h11 refuses
        #: (before its method is known) still gets an answer without body bytes.
        self._line_start = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._out: list[bytes] = []
        self._failed = False
        self._eof = False
        self._awaiting = False

    # --- input -------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed its side."""
        if self._failed or self._eof:
            return  # nothing after a refusal or after EOF is read
        if not data:
            self._eof = True
        elif self._method is None and len(self._line_start) < 5:
            self._line_start += data[: 5 - len(self._line_start)]
        self._h11.receive_data(data)

    def next_event(self) -> Event:
        if self._failed or self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED):
            return PEER_CLOSED  # an answer said "close": what follows is not read
        if self._awaiting:
            return AWAITING_RESPONSE
        try:
            return self._next_event()
        except h11.RemoteProtocolError as exc:
            status = 431 if exc.error_status_hint == 431 else 400
            return self._reject(status, str(exc))
        except ProtocolError as exc:
            return self._reject(exc.error_status_hint, str(exc))

    def _next_event(self) -> Event:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                if self._eof and self._h11.their_state is not h11.DONE:
                    if self._head is None and not self._h11.trailing_data[0]:
                        self._failed = True
                        return PEER_CLOSED
                    return self._reject(400, "client closed mid-request")
                return NEED_DATA
            if event is h11.PAUSED:
                return AWAITING_RESPONSE
            if isinstance(event, h11.Request):
                self._method = event.method
                _check_head(event, self._limits)
                self._head = RequestHead(
                    method=event.method,
                    target=event.target,
                    headers=tuple(event.headers.raw_items()),
                    http_version=event.http_version,
                )
                self._body = []
                self._body_size = 0
                if self._h11.they_are_waiting_for_100_continue:
                    self._out.append(
                        self._h11.send(
                            h11.InformationalResponse(
                                status_code=100, headers=[], reason=b"Continue"
                            )
                        )
                    )
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > self._limits.max_body_bytes:
                    raise ProtocolError("request body too large", error_status_hint=413)
                self._body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert self._head is not None
                head, body = self._head, b"".join(self._body)
                self._body = []
                self._awaiting = True
                return RequestReceived(head, body)
            elif isinstance(event, h11.ConnectionClosed):
                self._failed = True
                return PEER_CLOSED

    # --- state for the IO layer ---------------------------------------------
    @property
    def phase(self) -> Phase:
        if self._failed or self._h11.our_state in (h11.CLOSED, h11.MUST_CLOSE, h11.ERROR):
            return Phase.CLOSED
        if self._awaiting:
            return Phase.RESPONDING
        state = self._h11.their_state
        if state is h11.SEND_BODY:
            return Phase.BODY
        if state is h11.IDLE and not self._h11.trailing_data[0]:
            return Phase.IDLE
        return Phase.HEAD

    @property
    def must_close(self) -> bool:
        """True once the connection cannot carry another request."""
        return self._failed or self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    @property
    def request_method(self) -> bytes | None:
        return self._method

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # --- output -------------------------------------------------------------
    def send_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        reason: bytes | None = None,
        *,
        frame_from_body: bool = False,
    ) -> None:
        """Queue a complete response to the current request, then get ready for the next.

        ``reason`` None is the standard phrase; bytes (an app's own, even b"") go as given.
        Content-Length is set to ``len(body)``, except where no body is allowed (1xx,
        204, 304) and for HEAD: there ``frame_from_body`` True frames the answer exactly
        as the GET answer carrying ``body`` (answers hqm makes itself, stored answers to
        other methods) and only leaves the body bytes out; False keeps the given headers
        (an app's own answer to a HEAD, whose Content-Length describes a body that was
        never sent).
        """
        head = self.request_method == b"HEAD"
        no_body_status = status in _NO_BODY_STATUSES or status < 200
        if not no_body_status and (frame_from_body or not head):
            headers = _with_content_length(headers, len(body))
        bodyless = head or no_body_status
        if reason is None:
            reason = reason_phrase(status)
        try:
            self._out.append(
                self._h11.send(h11.Response(status_code=status, headers=headers, reason=reason))
            )
            if body and not bodyless:
                self._out.append(self._h11.send(h11.Data(data=body)))
            self._out.append(self._h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            # A response h11 will not frame (e.g. a bad header from the app): say so.
            self._h11.send_failed()
            self._failed = True
            self._out.append(_raw_error(502, f"bad upstream response: {exc}", head=head))
            return
        self._awaiting = False
        self._head = None
        self._method = None
        self._line_start = b""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._line_start = self._h11.trailing_data[0][:5]  # pipelined: already in

    def time_out(self) -> Rejected:
        """The IO layer's header/body timer fired: answer 408 and close."""
        return self._reject(408, "request timeout")

    def _reject(self, status: int, message: str) -> Rejected:
        """Answer ``status`` with ``message`` as a text body (none for a HEAD), then close."""
        head = self._method == b"HEAD" or (self._method is None and self._line_start == b"HEAD ")
        body = message.encode("utf-8", "replace") + b"\n"
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        try:
            response = h11.Response(
                status_code=status, headers=headers, reason=reason_phrase(status)
            )
            self._out.append(self._h11.send(response))
            if not head:
                self._out.append(self._h11.send(h11.Data(data=body)))
            self._out.append(self._h11.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # h11 cannot answer in its state: say it raw
            self._out.clear()
            self._out.append(_raw_error(status, message, head=head))
        self._failed = True
        return Rejected(status, message)


def _with_content_length(
    headers: list[tuple[bytes, bytes]], length: int
) -> list[tuple[bytes, bytes]]:
    """Content-Length set to the body we send, in place of the first one given (if any)."""
    value = str(length).encode()
    out: list[tuple[bytes, bytes]] = []
    seen = False
    for name, current in headers:
        if name.lower() == b"content-length":
            if not seen:
                out.append((name, value))
                seen = True
            continue
        out.append((name, current))
    if not seen:
        out.append((b"Content-Length", value))
    return out


def _raw_error(status: int, message: str, *, head: bool, extra: bytes = b"") -> bytes:
    """An error answer written without h11 (it refused to frame one, or no request has
    come yet); no body for HEAD. ``extra``: more header lines, CRLF-terminated."""
    body = message.encode("utf-8", "replace") + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n%sConnection: close\r\n\r\n"
        % (status, reason_phrase(status), len(body), extra)
    ) + (b"" if head else body)


def too_many_connections(retry_after_s: int) -> bytes:
    """What a connection over the listener's limit gets at once, before its request:
    503 and close (never a hang)."""
    extra = b"Retry-After: %d\r\n" % retry_after_s
    return _raw_error(503, "too many connections", head=False, extra=extra)
