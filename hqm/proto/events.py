"""What the sans-IO server connection tells the IO layer: events, and the phase its
timers follow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from hqm.proto.envelope import Headers


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
    #: What ``classify`` said of the head (None without one).
    decision: Any = None


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request whose body is streamed (``classify`` said so): ``BodyChunk`` events
    and one ``BodyEnd`` follow, with no body limit; the answer may start meanwhile."""

    head: RequestHead
    decision: Any


@dataclass(frozen=True, slots=True)
class BodyChunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd:
    pass


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


Event = (
    RequestReceived
    | RequestStarted
    | BodyChunk
    | BodyEnd
    | Rejected
    | NeedData
    | AwaitingResponse
    | PeerClosed
)
NEED_DATA = NeedData()
AWAITING_RESPONSE = AwaitingResponse()
PEER_CLOSED = PeerClosed()
BODY_END = BodyEnd()

#: Decides, from a request's head alone, what becomes of it; a decision whose ``stream``
#: attribute is true has its body streamed (``RequestStarted``), others are read whole.
Classify = Callable[[RequestHead], Any]
