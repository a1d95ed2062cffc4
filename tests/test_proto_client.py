"""ClientConnection: one request out, a ResponseRecord in, fed whole and byte by byte."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqm.proto.client import ClientConnection
from hqm.proto.envelope import ResponseRecord
from hqm.proto.errors import ProtocolError
from tests.http_strategies import header_names, header_values, split

GET = (b"GET", b"/", [(b"Host", b"app")], b"")


@pytest.fixture(params=["whole", "bytes"])
def mode(request) -> str:
    return request.param


def pieces(data: bytes, mode: str) -> list[bytes]:
    """Non-empty pieces of ``data`` (b"" would mean EOF)."""
    if mode == "whole":
        return [data] if data else []
    return [data[i : i + 1] for i in range(len(data))]


def receive(conn: ClientConnection, data: bytes, mode: str) -> ResponseRecord | None:
    """Feed ``data``; the record must come out with the last piece, not before."""
    parts = pieces(data, mode)
    for part in parts[:-1]:
        assert conn.receive_data(part) is None
    return conn.receive_data(parts[-1]) if parts else None


def exchange(
    response: bytes, mode: str, request=GET, **kwargs
) -> tuple[ClientConnection, ResponseRecord | None]:
    conn = ClientConnection(**kwargs)
    conn.send_request(*request)
    return conn, receive(conn, response, mode)


def test_send_request_bytes():
    conn = ClientConnection()
    out = conn.send_request(
        b"POST", b"/a%2Fb?x=%ZZ", [(b"Host", b"app"), (b"Content-Length", b"3")], b"abc"
    )
    assert out == b"POST /a%2Fb?x=%ZZ HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc"


def test_send_request_keeps_header_case_order_and_repeats():
    conn = ClientConnection()
    headers = [(b"x-b", b"1"), (b"Host", b"app"), (b"X-B", b"2"), (b"Cookie", b"\xe9")]
    out = conn.send_request(b"GET", b"/", headers, b"")
    assert out == b"GET / HTTP/1.1\r\nx-b: 1\r\nHost: app\r\nX-B: 2\r\nCookie: \xe9\r\n\r\n"


@pytest.mark.parametrize(
    "request_",
    [
        (b"GET", b"/", [(b"Bad Name", b"x")], b""),
        (b"GET", b"/", [], b""),  # HTTP/1.1 needs Host
        (b"GET", b"/", [(b"Host", b"a"), (b"X", b"a\r\nInjected: 1")], b""),
        (b"POST", b"/", [(b"Host", b"a"), (b"Content-Length", b"1")], b"too long"),
        (b"GET", b"/a b", [(b"Host", b"a")], b""),
    ],
    ids=["bad-name", "no-host", "crlf-injection", "length-mismatch", "space-in-target"],
)
def test_send_request_refused_is_protocol_error_400(request_):
    conn = ClientConnection()
    with pytest.raises(ProtocolError) as info:
        conn.send_request(*request_)
    assert info.value.error_status_hint == 400


def test_content_length_body(mode):
    body = bytes(range(256))
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 256\r\nX-A: 1\r\n\r\n" + body
    conn, record = exchange(response, mode)
    assert record == ResponseRecord(
        status=200,
        reason=b"OK",
        headers=((b"Content-Length", b"256"), (b"X-A", b"1")),
        body=body,
        http_version=b"1.1",
    )
    assert conn.reusable


def test_chunked_body(mode):
    response = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext\r\n \r\nb\r\n\x00\r\n\r\n012345\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    conn, record = exchange(response, mode)
    assert record is not None
    assert record.status == 201
    assert record.reason == b"Created"
    assert record.body == b"hello \x00\r\n\r\n012345"
    assert record.headers == ((b"Transfer-Encoding", b"chunked"),)
    assert conn.reusable


def test_close_delimited_body(mode):
    conn = ClientConnection()
    conn.send_request(*GET)
    response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\r\n\r\n"
    assert receive(conn, response, mode) is None
    record = conn.receive_data(b"")
    assert record is not None
    assert record.body == b"until the end\r\n\r\n"
    assert record.http_version == b"1.0"
    assert not conn.reusable


def test_close_delimited_body_http11(mode):
    conn = ClientConnection()
    conn.send_request(*GET)
    assert receive(conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc", mode) is None
    record = conn.receive_data(b"")
    assert record is not None
    assert record.body == b"abc"
    assert not conn.reusable


def test_head_response_has_no_body(mode):
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n"
    conn, record = exchange(response, mode, request=(b"HEAD", b"/", [(b"Host", b"a")], b""))
    assert record is not None
    assert record.body == b""
    assert record.headers == ((b"Content-Length", b"1234"), (b"Content-Type", b"text/html"))
    assert conn.reusable


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(mode, status):
    response = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    conn, record = exchange(response, mode)
    assert record is not None
    assert record.status == status
    assert record.body == b""
    assert conn.reusable


def test_repeated_set_cookie_kept_in_order(mode):
    response = (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 0\r\n"
        b"set-cookie: b=2; Path=/\r\nSET-COOKIE: c=3\r\n\r\n"
    )
    _, record = exchange(response, mode)
    assert record is not None
    assert record.headers == (
        (b"Set-Cookie", b"a=1"),
        (b"Content-Length", b"0"),
        (b"set-cookie", b"b=2; Path=/"),
        (b"SET-COOKIE", b"c=3"),
    )


def test_informational_responses_skipped(mode):
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    conn, record = exchange(response, mode)
    assert record is not None
    assert record.status == 200
    assert record.body == b"ok"
    assert record.headers == ((b"Content-Length", b"2"),)
    assert conn.reusable


def test_reason_phrase_kept_and_optional(mode):
    _, record = exchange(b"HTTP/1.1 418 I'm a \xe9teapot\r\nContent-Length: 0\r\n\r\n", mode)
    assert record is not None
    assert record.reason == b"I'm a \xe9teapot"
    _, record = exchange(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", mode)
    assert record is not None
    assert record.reason == b""


MALFORMED = {
    "not-http": b"SSH-2.0-OpenSSH_9.0\r\n\r\n",
    "bad-status": b"HTTP/1.1 2x0 OK\r\n\r\n",
    "short-status": b"HTTP/1.1 20 OK\r\n\r\n",
    "bad-version": b"HTTP/x 200 OK\r\n\r\n",
    "bad-header": b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "unknown-te": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "chunk-no-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naX0\r\n\r\n",
}


@pytest.mark.parametrize("response", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_response_is_502(mode, response):
    conn = ClientConnection()
    conn.send_request(*GET)
    with pytest.raises(ProtocolError) as info:
        for part in pieces(response, mode):
            conn.receive_data(part)
        conn.receive_data(b"")
    assert info.value.error_status_hint == 502
    assert not conn.reusable


@pytest.mark.parametrize(
    "partial",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
    ids=["nothing", "mid-head", "mid-body", "mid-chunk"],
)
def test_eof_mid_response_is_502(mode, partial):
    conn = ClientConnection()
    conn.send_request(*GET)
    for part in pieces(partial, mode):
        assert conn.receive_data(part) is None
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(b"")
    assert info.value.error_status_hint == 502


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nxxxxxx\r\n6\r\nxxxxxx\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 11,
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
def test_oversize_response_is_502(mode, response):
    conn = ClientConnection(max_response_bytes=10)
    conn.send_request(*GET)
    with pytest.raises(ProtocolError) as info:
        for part in pieces(response, mode):
            conn.receive_data(part)
        conn.receive_data(b"")
    assert info.value.error_status_hint == 502


def test_response_of_exactly_max_bytes_accepted(mode):
    _, record = exchange(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10, mode, max_response_bytes=10
    )
    assert record is not None
    assert record.body == b"x" * 10


def test_oversize_header_block_is_502():
    conn = ClientConnection()
    conn.send_request(*GET)
    with pytest.raises(ProtocolError) as info:
        conn.receive_data(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):
            conn.receive_data(b"X-Filler: " + b"a" * 1000 + b"\r\n")
    assert info.value.error_status_hint == 502


def test_reusable_after_keep_alive_exchange(mode):
    conn = ClientConnection()
    assert not conn.reusable
    for i in range(3):
        out = conn.send_request(b"GET", b"/%d" % i, [(b"Host", b"app")], b"")
        assert out.startswith(b"GET /%d HTTP/1.1\r\n" % i)
        assert not conn.reusable
        body = b"response %d" % i
        record = receive(
            conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, mode
        )
        assert record is not None
        assert record.body == body
        assert conn.reusable
        conn.start_next_cycle()


def test_not_reusable_after_connection_close(mode):
    conn, record = exchange(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", mode
    )
    assert record is not None
    assert not conn.reusable


def test_not_reusable_before_response_complete():
    conn = ClientConnection()
    conn.send_request(*GET)
    assert conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab") is None
    assert not conn.reusable


def test_trailing_bytes_after_response_make_connection_not_reusable():
    conn, record = exchange(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", "whole")
    assert record is not None
    assert record.body == b"ok"
    assert not conn.reusable


@settings(deadline=None, max_examples=150)
@given(
    data=st.data(),
    status=st.integers(200, 599).filter(lambda s: s not in (204, 304)),
    headers=st.lists(st.tuples(header_names(), header_values()), max_size=6),
    body=st.binary(max_size=1024),
    chunked=st.booleans(),
)
def test_generated_response_round_trip(data, status, headers, body, chunked):
    if chunked:
        framing = [(b"Transfer-Encoding", b"chunked")]
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(body))), max_size=4))))
        bounds = [0, *[c for c in cuts if c < len(body)], len(body)]
        wire_body = b"".join(
            b"%x\r\n" % (b - a) + body[a:b] + b"\r\n"
            for a, b in itertools.pairwise(bounds)
            if b > a
        )
        wire_body += b"0\r\n\r\n"
    else:
        framing = [(b"Content-Length", b"%d" % len(body))]
        wire_body = body
    all_headers = headers + framing
    raw = b"HTTP/1.1 %d Reason\r\n" % status
    raw += b"".join(n + b": " + v + b"\r\n" for n, v in all_headers) + b"\r\n" + wire_body
    conn = ClientConnection()
    conn.send_request(*GET)
    record = None
    for part in data.draw(split(raw)):
        assert record is None
        record = conn.receive_data(part)
    assert record == ResponseRecord(
        status=status, reason=b"Reason", headers=tuple(all_headers), body=body
    )
    assert conn.reusable
