"""Sans-IO streamed exchange with the app (pass-through): the request head and body go
out as they arrive from the client, the answer's head and body come in as the app
sends them; h11 frames and checks both ways. Nothing is buffered here beyond h11's
own head buffer (``MAX_HEADER_BYTES``)."""

from __future__ import annotations

from dataclasses import dataclass

import h11

from hqm.proto.envelope import Headers
from hqm.proto.errors import ProtocolError
from hqm.proto.limits import MAX_HEADER_BYTES


@dataclass(frozen=True, slots=True)
class AppResponse:
    status: int
    reason: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class AppData:
    data: bytes


@dataclass(frozen=True, slots=True)
class AppEnd:
    pass


AppEvent = AppResponse | AppData | AppEnd
APP_END = AppEnd()


class RelayConnection:
    """One connection to the app, one streamed exchange at a time (keep-alive)."""

    def __init__(self) -> None:
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        #: A byte of the answer has come (a failure after it cannot be retried).
        self.answered = False

    def start(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The request head; its headers must frame the body (Content-Length or chunked)."""
        try:
            return self._h11.send(h11.Request(method=method, target=target, headers=headers))
        except h11.LocalProtocolError as exc:
            raise ProtocolError(f"cannot send the request: {exc}", error_status_hint=400) from None

    def body(self, data: bytes) -> bytes:
        try:
            return self._h11.send(h11.Data(data=data)) or b""
        except h11.LocalProtocolError as exc:  # more than the Content-Length the client gave
            raise ProtocolError(f"request body: {exc}", error_status_hint=400) from None

    def end(self) -> bytes:
        try:
            return self._h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:  # fewer bytes than its Content-Length
            raise ProtocolError(f"request body: {exc}", error_status_hint=400) from None

    def receive(self, data: bytes) -> list[AppEvent]:
        """Events of the answer from what the app sent (``b""``: it closed)."""
        if data:
            self.answered = True
        self._h11.receive_data(data)
        events: list[AppEvent] = []
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProtocolError(
                    f"bad answer from the app: {exc}", error_status_hint=502
                ) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return events
            if isinstance(event, h11.Response):
                events.append(
                    AppResponse(event.status_code, event.reason, tuple(event.headers.raw_items()))
                )
            elif isinstance(event, h11.Data):
                events.append(AppData(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                events.append(APP_END)
                return events
            elif isinstance(event, h11.ConnectionClosed):
                raise ProtocolError("the app closed the connection", error_status_hint=502)
            # InformationalResponse (100 Continue from the app): nothing to pass on

    @property
    def reusable(self) -> bool:
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    def next_cycle(self) -> None:
        self._h11.start_next_cycle()
        self.answered = False
