"""Sans-IO HTTP/1.1 client exchange on h11: a request out, a response record in."""

from __future__ import annotations

import h11

from hqm.proto.envelope import ResponseRecord
from hqm.proto.errors import ProtocolError
from hqm.proto.limits import MAX_HEADER_BYTES, MAX_RESPONSE_BYTES


class ClientConnection:
    """One keep-alive connection to the app; one exchange at a time."""

    def __init__(self, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._max = max_response_bytes
        self._response: h11.Response | None = None
        self._body: list[bytes] = []
        self._size = 0

    def send_request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        """Bytes of one complete request. Raises ProtocolError (400) if h11 refuses it.

        h11 validates the request and tracks the exchange, but its writer moves Host to
        the front; the head is written here instead, headers in the order given.
        """
        try:
            self._h11.send(h11.Request(method=method, target=target, headers=headers))
            lines = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
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

    def receive_data(self, data: bytes) -> ResponseRecord | None:
        """Feed bytes from the app (``b""`` = EOF); the record once the response is complete.

        Raises ProtocolError with hint 502 on a malformed or oversized response.
        """
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
                    return ResponseRecord(
                        status=response.status_code,
                        reason=response.reason,
                        headers=tuple(response.headers.raw_items()),
                        body=b"".join(self._body),
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
        return (
            self._h11.our_state is h11.DONE
            and self._h11.their_state is h11.DONE
            and not self._h11.trailing_data[0]
        )

    def start_next_cycle(self) -> None:
        self._h11.start_next_cycle()
