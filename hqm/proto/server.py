"""Sans-IO HTTP/1.1 server connection on h11: bytes in, events out, bytes to send.

Adds to h11 what a proxy needs and h11 leaves out: smuggling shapes refused with 400
(Content-Length together with Transfer-Encoding, Transfer-Encoding in HTTP/1.0), a body
bound for Content-Length and chunked bodies alike (413 before the body is read when the
length is declared), CONNECT/Upgrade refused with 501, automatic ``100 Continue`` once
a head is accepted, and HEAD/204/304 framing on the way out.

Every response it writes carries a reason phrase: the standard one (``http.HTTPStatus``)
unless the caller passes the app's own (kept as given, even empty). A whole answer is
written by ``framing.answer_bytes`` (h11's bytes; the next request gets a fresh h11
state); h11 writes the rest (streamed answers, refusals, what the writer leaves it).
"""

from __future__ import annotations

from typing import Any

import h11

from hqm.proto.errors import ProtocolError
from hqm.proto.events import (
    AWAITING_RESPONSE,
    BODY_END,
    NEED_DATA,
    PEER_CLOSED,
    BodyChunk,
    BodyEnd,
    Classify,
    Event,
    NeedData,
    Phase,
    Rejected,
    RequestHead,
    RequestReceived,
    RequestStarted,
)
from hqm.proto.framing import (
    ERROR_CONTENT_TYPE,
    NO_BODY_STATUSES,
    answer_bytes,
    client_keeps_alive,
    error_body,
    framed,
    raw_error,
    reason_phrase,
    too_many_connections,
)
from hqm.proto.limits import Limits

#: h11's states of a client whose request is read to its end (MUST_CLOSE: one that
#: does not keep the connection, HTTP/1.0 or ``Connection: close``).
_REQUEST_READ = (h11.DONE, h11.MUST_CLOSE)
_VERSIONS = frozenset({b"1.0", b"1.1"})


def _check_head(request: h11.Request, limits: Limits) -> tuple[int, bool]:
    """Refuse what a proxy must not pass on; returns the declared Content-Length (0)
    and whether the client keeps the connection after the answer."""
    if request.http_version not in _VERSIONS:
        raise ProtocolError("only HTTP/1.0 and HTTP/1.1 are spoken here", error_status_hint=505)
    has_te = has_cl = False
    length = 0
    connection = []
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
        elif name == b"connection":
            connection.append(value)
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
    return length, client_keeps_alive(request.http_version, connection)


class ServerConnection:
    """One client connection's HTTP/1.1 state."""

    def __init__(self, limits: Limits, classify: Classify | None = None) -> None:
        self._limits = limits
        self._classify = classify
        #: The decision of the request being read; streaming: its body is passed on.
        self._decision: Any = None
        self._streaming = False
        self._bodyless = False
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
        #: The current request's client keeps the connection after the answer.
        self._keep_alive = False

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
                length, self._keep_alive = _check_head(event, self._limits)
                head = self._head = RequestHead(
                    method=event.method,
                    target=event.target,
                    headers=tuple(event.headers.raw_items()),
                    http_version=event.http_version,
                )
                self._body = []
                self._body_size = 0
                decision = self._decision = self._classify(head) if self._classify else None
                self._streaming = bool(getattr(decision, "stream", False))
                if not self._streaming and length > self._limits.max_body_bytes:
                    raise ProtocolError("request body too large", error_status_hint=413)
                if self._h11.they_are_waiting_for_100_continue:
                    self._out.append(
                        self._h11.send(
                            h11.InformationalResponse(
                                status_code=100, headers=[], reason=b"Continue"
                            )
                        )
                    )
                if self._streaming:
                    return RequestStarted(head, decision)
            elif isinstance(event, h11.Data):
                if self._streaming:
                    return BodyChunk(event.data)
                self._body_size += len(event.data)
                if self._body_size > self._limits.max_body_bytes:
                    raise ProtocolError("request body too large", error_status_hint=413)
                self._body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return self._end_of_message()
            elif isinstance(event, h11.ConnectionClosed):
                self._failed = True
                return PEER_CLOSED

    def _end_of_message(self) -> Event:
        """The request is all in: the whole request, or the end of a streamed body."""
        assert self._head is not None
        if self._streaming:
            self._streaming = False
            if self._h11.our_state is h11.DONE:
                self._next_cycle()  # answered before the body was all in
            else:
                self._awaiting = True
            return BODY_END
        head, body = self._head, b"".join(self._body)
        self._body = []
        self._awaiting = True
        return RequestReceived(head, body, self._decision)

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
        headers = framed(status, headers, len(body), head=head, frame_from_body=frame_from_body)
        bodyless = head or status in NO_BODY_STATUSES or status < 200
        if reason is None:
            reason = reason_phrase(status)
        if self._request_read():
            out = answer_bytes(
                status, reason, headers, None if bodyless else body, keep_alive=self._keep_alive
            )
            if out is not None:
                self._out.append(out)
                self._answered()
                return
        self._ready_for_h11_answer()
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
            self._out.append(raw_error(502, f"bad upstream response: {exc}", head=head))
            return
        self._next_cycle()

    def _request_read(self) -> bool:
        """The whole request is read and no byte of its answer is written yet."""
        return self._h11.their_state in _REQUEST_READ and self._h11.our_state is h11.SEND_RESPONSE

    def _ready_for_h11_answer(self) -> None:
        """h11 is about to write an answer (the h11 engine's h11 always is)."""

    def _answered(self) -> None:
        """``answer_bytes`` wrote the answer h11 did not see: the next request is read
        by a fresh h11 state, given what the client sent after this one."""
        if not self._keep_alive:
            self._failed = True  # "Connection: close" went out: nothing more is read
            self._next_cycle()
            return
        unread, closed = self._h11.trailing_data
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self._limits.max_header_bytes
        )
        if unread:
            self._h11.receive_data(unread)
        if closed:
            self._h11.receive_data(b"")
        self._next_cycle()

    def _next_cycle(self) -> None:
        if self._streaming and self._h11.their_state is not h11.DONE:
            # Answered while the client still sends a streamed body: the rest is not
            # read; the connection closes after the answer (as nginx's lingering close).
            self._failed = True
            return
        self._awaiting = False
        self._head = None
        self._method = None
        self._line_start = b""
        if self._h11.our_state is h11.DONE:
            self._h11.start_next_cycle()
        self._line_start = self._h11.trailing_data[0][:5]  # pipelined: already in

    # --- output, streamed (pass-through) ---------------------------------------
    def start_response(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes | None = None
    ) -> bool:
        """Begin an answer whose body follows in ``send_body`` calls, framed by the
        given headers (an app's Content-Length; none: chunked to an HTTP/1.1 client).
        False when h11 will not frame it: a 502 is queued instead and the connection
        closes."""
        if reason is None:
            reason = reason_phrase(status)
        self._ready_for_h11_answer()
        try:
            self._out.append(
                self._h11.send(h11.Response(status_code=status, headers=headers, reason=reason))
            )
        except h11.LocalProtocolError as exc:
            self._h11.send_failed()
            self._failed = True
            head = self.request_method == b"HEAD"
            self._out.append(raw_error(502, f"bad upstream response: {exc}", head=head))
            return False
        self._bodyless = self.request_method == b"HEAD" or status in NO_BODY_STATUSES
        return True

    def send_body(self, data: bytes) -> None:
        """More of the answer begun by ``start_response`` (dropped where no body is
        allowed: HEAD, 204, 304). h11 refuses more bytes than a Content-Length said."""
        if data and not self._bodyless:
            self._out.append(self._h11.send(h11.Data(data=data)))

    def end_response(self) -> None:
        self._out.append(self._h11.send(h11.EndOfMessage()))
        self._next_cycle()

    def time_out(self) -> Rejected:
        """The IO layer's header/body timer fired: answer 408 and close."""
        return self._reject(408, "request timeout")

    def _reject(self, status: int, message: str) -> Rejected:
        """Answer ``status`` with ``message`` as a JSON body (none for a HEAD), then close."""
        head = self._method == b"HEAD" or (self._method is None and self._line_start == b"HEAD ")
        if self._head is not None:
            self._ready_for_h11_answer()
        if self._h11.our_state in (h11.SEND_BODY, h11.DONE):
            # A streamed body went wrong after its answer began: nothing more can be
            # said on this connection but its close.
            self._failed = True
            return Rejected(status, message)
        body = error_body(message)
        headers = [
            (b"Content-Type", ERROR_CONTENT_TYPE),
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
            self._out.append(raw_error(status, message, head=head))
        self._failed = True
        return Rejected(status, message)


#: Re-exported: the events the IO layer and the tests import from here.
__all__ = [
    "BodyChunk",
    "BodyEnd",
    "NeedData",
    "RequestHead",
    "RequestReceived",
    "RequestStarted",
    "ServerConnection",
    "reason_phrase",
    "too_many_connections",
]
