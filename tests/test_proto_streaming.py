"""Streamed requests and answers in the sans-IO server connection, and the relay to
the app: bytes in, events out, whole and byte by byte."""

from __future__ import annotations

from dataclasses import dataclass

import h11
import pytest

from hqm.proto.errors import ProtocolError
from hqm.proto.events import BodyChunk, BodyEnd, NeedData, RequestReceived, RequestStarted
from hqm.proto.limits import Limits
from hqm.proto.relay import AppData, AppEnd, AppResponse, RelayConnection
from hqm.proto.server import ServerConnection

SMALL = Limits(max_body_bytes=10)


@dataclass(frozen=True)
class Pass:
    stream: bool = True


def streams_uploads(head):
    return Pass() if head.target.startswith(b"/upload") else None


def feed(conn: ServerConnection, data: bytes, *, bytewise: bool):
    events = []
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                break
            events.append(event)
            if not isinstance(event, RequestStarted | BodyChunk):
                break
    return events


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 40\r\n\r\n" + b"x" * 40,
        b"Transfer-Encoding: chunked\r\n\r\n14\r\n"
        + b"x" * 20
        + b"\r\n14\r\n"
        + b"x" * 20
        + b"\r\n0\r\n\r\n",
    ],
)
def test_a_streamed_body_comes_in_chunks_with_no_body_limit(framing, bytewise):
    conn = ServerConnection(SMALL, streams_uploads)
    events = feed(conn, b"POST /upload HTTP/1.1\r\nHost: a\r\n" + framing, bytewise=bytewise)
    assert isinstance(events[0], RequestStarted) and events[0].decision == Pass()
    assert b"".join(e.data for e in events if isinstance(e, BodyChunk)) == b"x" * 40
    assert isinstance(events[-1], BodyEnd)


def test_a_buffered_request_keeps_its_limit_and_carries_its_decision():
    conn = ServerConnection(SMALL, lambda head: "queued")
    (event,) = feed(
        conn, b"POST /q HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", bytewise=False
    )
    assert isinstance(event, RequestReceived) and event.decision == "queued"
    conn = ServerConnection(SMALL, streams_uploads)
    (refused,) = feed(
        conn, b"POST /q HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", bytewise=False
    )
    assert refused.status == 413


def _answers(raw: bytes, method: bytes = b"GET"):
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    events = []
    while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
        events.append(event)
    return events


def _streamed_answer(headers, chunks, method=b"GET", version=b"1.1"):
    conn = ServerConnection(Limits(), streams_uploads)
    request = b"%s /upload HTTP/%s\r\nHost: a\r\nContent-Length: 0\r\n\r\n" % (method, version)
    feed(conn, request, bytewise=False)
    assert conn.start_response(200, headers)
    for chunk in chunks:
        conn.send_body(chunk)
    conn.end_response()
    return conn, conn.data_to_send()


def test_a_streamed_answer_without_length_goes_chunked_and_the_connection_is_kept():
    conn, raw = _streamed_answer([(b"Content-Type", b"text/plain")], [b"ab", b"cd"])
    assert b"transfer-encoding: chunked" in raw.lower()
    events = _answers(raw)
    assert b"".join(e.data for e in events if isinstance(e, h11.Data)) == b"abcd"
    assert not conn.must_close
    more = feed(conn, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", bytewise=True)
    assert isinstance(more[0], RequestReceived) and more[0].head.target == b"/next"


def test_a_streamed_answer_keeps_the_apps_length_and_head_gets_no_body():
    _, raw = _streamed_answer([(b"Content-Length", b"4")], [b"abcd"])
    assert raw.endswith(b"\r\n\r\nabcd")
    _, raw = _streamed_answer([(b"Content-Length", b"4")], [b"abcd"], method=b"HEAD")
    assert raw.endswith(b"\r\n\r\n") and b"content-length: 4" in raw.lower()


def test_an_answer_h11_cannot_frame_is_a_502_and_a_close():
    conn = ServerConnection(Limits(), streams_uploads)
    feed(conn, b"GET /upload HTTP/1.1\r\nHost: a\r\n\r\n", bytewise=False)
    assert not conn.start_response(200, [(b"Bad Name", b"x")])
    assert conn.data_to_send().startswith(b"HTTP/1.1 502 ") and conn.must_close


def test_answering_before_the_body_is_all_in_closes_the_connection():
    conn = ServerConnection(Limits(), streams_uploads)
    events = feed(
        conn, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc", bytewise=False
    )
    assert isinstance(events[-1], BodyChunk)
    conn.start_response(401, [(b"Content-Length", b"0")])
    conn.end_response()
    assert conn.must_close


def test_a_broken_streamed_body_after_the_answer_began_writes_nothing_more():
    conn = ServerConnection(Limits(), streams_uploads)
    feed(
        conn,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        bytewise=False,
    )
    conn.start_response(200, [])
    conn.send_body(b"partial")
    before = conn.data_to_send()
    conn.receive_data(b"zz\r\n")  # not a chunk size
    event = conn.next_event()
    assert event.status == 400 and conn.data_to_send() == b"" and conn.must_close
    assert b"partial" in before


# --- the relay to the app ----------------------------------------------------------
def _app_side(request_bytes: bytes, answer: list) -> tuple[list, bytes]:
    app = h11.Connection(h11.SERVER)
    app.receive_data(request_bytes)
    seen = []
    while (event := app.next_event()) is not h11.NEED_DATA:
        seen.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    return seen, b"".join(app.send(e) for e in answer)


@pytest.mark.parametrize("bytewise", [False, True])
def test_relay_streams_a_request_and_reads_the_answer(bytewise):
    relay = RelayConnection()
    out = relay.start(b"POST", b"/u", [(b"Host", b"app"), (b"Transfer-Encoding", b"chunked")])
    out += relay.body(b"hello ") + relay.body(b"world") + relay.end()
    seen, answer = _app_side(
        out,
        [
            h11.Response(status_code=201, headers=[(b"X-A", b"1")], reason=b"Made"),
            h11.Data(data=b"done"),
            h11.EndOfMessage(),
        ],
    )
    assert b"".join(e.data for e in seen if isinstance(e, h11.Data)) == b"hello world"
    pieces = [answer[i : i + 1] for i in range(len(answer))] if bytewise else [answer]
    events = [e for piece in pieces for e in relay.receive(piece)]
    assert isinstance(events[0], AppResponse)
    assert (events[0].status, events[0].reason) == (201, b"Made")
    assert (b"X-A", b"1") in events[0].headers
    assert b"".join(e.data for e in events if isinstance(e, AppData)) == b"done"
    assert isinstance(events[-1], AppEnd) and relay.reusable


def test_relay_refuses_a_broken_answer_with_502():
    relay = RelayConnection()
    relay.start(b"GET", b"/", [(b"Host", b"app")])
    relay.end()
    with pytest.raises(ProtocolError) as error:
        relay.receive(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    assert error.value.error_status_hint == 502
    closed = RelayConnection()
    closed.start(b"GET", b"/", [(b"Host", b"app")])
    closed.end()
    closed.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ProtocolError):
        closed.receive(b"")
