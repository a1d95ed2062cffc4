"""ServerConnection: bytes in, events out, fed whole and byte by byte (h11 style)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hqm.proto.events import (
    AwaitingResponse,
    NeedData,
    PeerClosed,
    Phase,
    Rejected,
    RequestReceived,
)
from hqm.proto.fast_server import connection_factory
from hqm.proto.limits import MIB, Limits
from hqm.proto.server import ServerConnection
from tests.http_strategies import GeneratedRequest, mutated_requests, pipelines, requests, split

#: Every test here runs under both engines (module-scoped: hypothesis allows it).
ENGINES = ["h11", "auto"]


@pytest.fixture(scope="module", autouse=True, params=ENGINES)
def engine(request):
    global ServerConnection
    reference = ServerConnection
    ServerConnection = connection_factory(request.param)
    yield request.param
    ServerConnection = reference


DEFAULT = Limits()
SMALL = Limits(max_header_bytes=1024, max_body_bytes=100)

FEED_MODES = ["whole", "bytes"]


def pieces(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    size = int(mode)
    return [data[i : i + size] for i in range(0, len(data), size)]


def feed(conn: ServerConnection, data: bytes, mode: str = "whole") -> list:
    """Feed ``data`` in pieces, calling next_event after each; return the events seen,
    NeedData dropped except when nothing else came out. Requests are not answered, so
    after one every next_event is AwaitingResponse (also returned)."""
    events: list = []
    for piece in pieces(data, mode):
        conn.receive_data(piece)
        event = conn.next_event()
        if not isinstance(event, NeedData):
            events.append(event)
    if not events:
        events.append(conn.next_event())
    return events


def one_request(data: bytes, mode: str, limits: Limits = DEFAULT) -> tuple[ServerConnection, list]:
    conn = ServerConnection(limits)
    events = [e for e in feed(conn, data, mode) if not isinstance(e, AwaitingResponse)]
    return conn, events


def assert_rejected(conn: ServerConnection, events: list, status: int) -> None:
    rejected = [e for e in events if isinstance(e, Rejected)]
    assert rejected, events
    assert rejected[0].status == status, rejected[0]
    assert not any(isinstance(e, RequestReceived) for e in events)
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 %d " % status), out
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert conn.must_close
    assert conn.phase is Phase.CLOSED
    assert isinstance(conn.next_event(), PeerClosed)


@pytest.fixture(params=FEED_MODES)
def mode(request) -> str:
    return request.param


# --- simple requests ----------------------------------------------------------------


def test_simple_get(mode):
    conn = ServerConnection(DEFAULT)
    assert conn.phase is Phase.IDLE
    events = feed(conn, b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n", mode)
    assert len(events) == 1
    (event,) = events
    assert isinstance(event, RequestReceived)
    assert event.head.method == b"GET"
    assert event.head.target == b"/index.html"
    assert event.head.headers == ((b"Host", b"example.com"),)
    assert event.head.http_version == b"1.1"
    assert event.body == b""
    assert conn.phase is Phase.RESPONDING
    assert conn.request_method == b"GET"
    assert isinstance(conn.next_event(), AwaitingResponse)
    assert conn.data_to_send() == b""

    conn.send_response(200, [(b"Content-Type", b"text/plain")], b"hi")
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nContent-Type: text/plain\r\n" in out
    assert b"\r\nContent-Length: 2\r\n" in out
    assert out.endswith(b"\r\n\r\nhi")
    assert not conn.must_close
    assert conn.phase is Phase.IDLE
    assert isinstance(conn.next_event(), NeedData)
    assert conn.data_to_send() == b""


def test_response_reason_and_explicit_content_length():
    conn, _ = one_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "whole")
    conn.send_response(201, [(b"Content-Length", b"3")], b"abc", reason=b"Made It")
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 201 Made It\r\n")
    assert out.count(b"Content-Length") == 1
    assert out.endswith(b"\r\n\r\nabc")


@pytest.mark.parametrize(
    "body",
    [b"", bytes(range(256)), bytes(range(256))[::-1] * 3 + b"\r\n\r\n0\r\n\r\n"],
    ids=["empty", "all-bytes", "binary-with-crlf"],
)
def test_post_content_length(mode, body):
    raw = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    _conn, events = one_request(raw, mode)
    assert len(events) == 1
    assert isinstance(events[0], RequestReceived)
    assert events[0].body == body
    assert events[0].head.headers == ((b"Host", b"a"), (b"Content-Length", b"%d" % len(body)))


@pytest.mark.parametrize("mode", ["whole", "65536", "7919"])
def test_post_one_mib(mode):
    body = random.Random(1).randbytes(MIB)
    raw = b"PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    _conn, events = one_request(raw, mode)
    assert len(events) == 1
    assert isinstance(events[0], RequestReceived)
    assert events[0].body == body


def test_chunked_body_is_dechunked(mode):
    raw = (
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
        b"1;ext=1\r\n \r\n"
        b"A\r\n0123456789\r\n"
        b"3\r\n\x00\r\n\r\n"
        b"0\r\nX-Trailer: dropped\r\n\r\n"
    )
    _conn, events = one_request(raw, mode)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, RequestReceived)
    assert event.body == b"hello 0123456789\x00\r\n"
    assert event.head.headers == ((b"Host", b"a"), (b"Transfer-Encoding", b"chunked"))


def test_chunked_empty_body(mode):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    _, events = one_request(raw, mode)
    assert isinstance(events[0], RequestReceived)
    assert events[0].body == b""


def test_header_case_order_and_repeats_kept(mode):
    raw = (
        b"GET / HTTP/1.1\r\n"
        b"x-lower: 1\r\n"
        b"Host: example.com\r\n"
        b"X-UPPER:2\r\n"
        b"Set-Thing: a\r\n"
        b"X-Lower: 3\r\n"
        b"set-thing:   b  \r\n"
        b"X-Spaces: a  b\tc\r\n"
        b"X-Obs: \xe9t\xe9\xff\r\n"
        b"X-Empty:\r\n"
        b"\r\n"
    )
    _, events = one_request(raw, mode)
    assert isinstance(events[0], RequestReceived)
    assert events[0].head.headers == (
        (b"x-lower", b"1"),
        (b"Host", b"example.com"),
        (b"X-UPPER", b"2"),
        (b"Set-Thing", b"a"),
        (b"X-Lower", b"3"),
        (b"set-thing", b"b"),
        (b"X-Spaces", b"a  b\tc"),
        (b"X-Obs", b"\xe9t\xe9\xff"),
        (b"X-Empty", b""),
    )


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"/a%2Fb?x=1&y=%ZZ"),
        (b"GET", b"//double//slash/../x/./y?q=%00&q=%zz#frag"),
        (b"GET", b"http://example.com:8080/abs?form"),
        (b"OPTIONS", b"*"),
        (b"GET", b"/~!$&'()*+,;=:@[]"),
        (b"PURGE", b"/custom-method"),
    ],
)
def test_raw_target_and_method_kept(mode, method, target):
    raw = method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    _, events = one_request(raw, mode)
    assert isinstance(events[0], RequestReceived)
    assert events[0].head.method == method
    assert events[0].head.target == target


def test_identical_duplicate_content_length_folded():
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    _, events = one_request(raw, "whole")
    assert isinstance(events[0], RequestReceived)
    assert events[0].body == b"abc"
    assert events[0].head.headers == ((b"Host", b"a"), (b"Content-Length", b"3"))


# --- keep-alive and pipelining --------------------------------------------------------


def test_pipelined_requests_one_at_a_time(mode):
    raw = (
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    conn = ServerConnection(DEFAULT)
    events = feed(conn, raw, mode)
    assert isinstance(events[0], RequestReceived)
    assert events[0].head.target == b"/first"
    # Nothing else comes out until the first request is answered.
    assert all(isinstance(e, AwaitingResponse) for e in events[1:])
    for _ in range(3):
        assert isinstance(conn.next_event(), AwaitingResponse)
    assert conn.phase is Phase.RESPONDING
    assert conn.data_to_send() == b""

    conn.send_response(200, [], b"one")
    second = conn.next_event()
    assert isinstance(second, RequestReceived)
    assert second.head.target == b"/second"
    assert second.body == b"hello"
    assert isinstance(conn.next_event(), AwaitingResponse)
    conn.send_response(201, [], b"two")
    third = conn.next_event()
    assert isinstance(third, RequestReceived)
    assert third.head.target == b"/third"
    conn.send_response(202, [], b"three")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.IDLE

    out = conn.data_to_send()
    assert out.count(b"HTTP/1.1 ") == 3
    first_at, second_at, third_at = (out.index(b"HTTP/1.1 %d " % s) for s in (200, 201, 202))
    assert first_at == 0 < second_at < third_at
    assert out.index(b"one") < out.index(b"two") < out.index(b"three")
    assert not conn.must_close


def test_keep_alive_sequential_requests(mode):
    conn = ServerConnection(DEFAULT)
    for i in range(3):
        events = feed(conn, b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i, mode)
        assert isinstance(events[0], RequestReceived)
        assert events[0].head.target == b"/%d" % i
        conn.send_response(200, [], b"r%d" % i)
        assert conn.data_to_send().endswith(b"r%d" % i)
        assert conn.phase is Phase.IDLE
        assert not conn.must_close


# --- Expect: 100-continue --------------------------------------------------------------


def test_expect_100_continue_sent_before_body(mode):
    head = b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    conn = ServerConnection(DEFAULT)
    if mode == "bytes":
        for byte in pieces(head[:-1], "bytes"):
            conn.receive_data(byte)
            assert isinstance(conn.next_event(), NeedData)
            assert conn.data_to_send() == b""
        conn.receive_data(head[-1:])
    else:
        conn.receive_data(head)
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.BODY
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 100 ")
    assert out.endswith(b"\r\n\r\n")

    events = feed(conn, b"data", mode)
    assert isinstance(events[0], RequestReceived)
    assert events[0].body == b"data"
    conn.send_response(200, [], b"ok")
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 100" not in out


def test_expect_100_continue_not_sent_when_body_too_large(mode):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n"
    conn, events = one_request(raw, mode, SMALL)
    out = conn.data_to_send()
    assert b"HTTP/1.1 100" not in out
    assert out.startswith(b"HTTP/1.1 413 ")
    assert [e.status for e in events if isinstance(e, Rejected)] == [413]
    assert conn.must_close


# --- limits ---------------------------------------------------------------------------


def test_413_on_declared_length_before_any_body_byte(mode):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"
    conn, events = one_request(raw, mode, SMALL)
    assert_rejected(conn, events, 413)


def test_413_on_huge_declared_length(mode):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"
    conn, events = one_request(raw, mode, SMALL)
    assert_rejected(conn, events, 413)


def test_body_of_exactly_max_body_accepted(mode):
    body = b"x" * SMALL.max_body_bytes
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    _, events = one_request(raw, mode, SMALL)
    assert isinstance(events[0], RequestReceived)
    assert events[0].body == body


@pytest.mark.parametrize(
    "chunks",
    [
        b"32\r\n" + b"a" * 50 + b"\r\n33\r\n" + b"b" * 51 + b"\r\n0\r\n\r\n",
        b"65\r\n" + b"a" * 101 + b"\r\n0\r\n\r\n",
        b"ffffffffffffffffffff\r\n" + b"a" * 101,
        b"1\r\na\r\n" * 101 + b"0\r\n\r\n",
    ],
    ids=["two-chunks", "one-chunk", "huge-declared-chunk", "many-small"],
)
def test_413_on_chunked_body_over_max_body(mode, chunks):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    conn, events = one_request(raw, mode, SMALL)
    assert_rejected(conn, events, 413)


def test_chunked_body_of_exactly_max_body_accepted(mode):
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"32\r\n" + b"a" * 50 + b"\r\n32\r\n" + b"b" * 50 + b"\r\n0\r\n\r\n"
    )
    _, events = one_request(raw, mode, SMALL)
    assert isinstance(events[0], RequestReceived)
    assert len(events[0].body) == 100


def _big_head(size: int) -> bytes:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "
    return head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("mode", ["whole", "bytes", "512"])
def test_431_on_header_block_over_max_header_bytes(mode):
    raw = _big_head(3 * SMALL.max_header_bytes)
    conn, events = one_request(raw, mode, SMALL)
    assert_rejected(conn, events, 431)


def test_431_on_many_headers_fed_in_pieces():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-H: v\r\n" * 400 + b"\r\n"
    conn, events = one_request(raw, "100", SMALL)
    assert_rejected(conn, events, 431)


def test_header_block_within_max_header_bytes_accepted(mode):
    raw = _big_head(SMALL.max_header_bytes)
    _, events = one_request(raw, mode, SMALL)
    assert isinstance(events[0], RequestReceived)


# --- refused shapes -------------------------------------------------------------------

SMUGGLING = {
    "cl-then-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-then-cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "two-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
    "cl-sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "cl-hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-chunked-identity": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-identity": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    "te-space-before-colon": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-vtab": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare-cr-in-header": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-too-long": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"1" * 21
    + b"\r\n",
    "chunk-missing-crlf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabcX\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_400_for_smuggling_and_framing_shapes(mode, raw):
    conn, events = one_request(raw, mode)
    assert_rejected(conn, events, 400)


UNSUPPORTED = {
    "connect": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "websocket": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "h2c": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    "upgrade-without-connection": b"GET / HTTP/1.1\r\nHost: a\r\nuPgRaDe: foo\r\n\r\n",
    "post-upgrade-with-body": b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
    b"Connection: upgrade\r\nContent-Length: 3\r\n\r\nabc",
}


@pytest.mark.parametrize("raw", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_501_for_connect_and_upgrade(mode, raw):
    conn, events = one_request(raw, mode)
    assert_rejected(conn, events, 501)


MALFORMED_REQUEST_LINES = [
    b"GET /\r\n",
    b"GET  / HTTP/1.1\r\n",
    b"GET / HTTP/1.1 extra\r\n",
    b"G@T / HTTP/1.1\r\n",
    b"GET / http/1.1\r\n",
    b"GET /a b HTTP/1.1\r\n",
    b"GET\t/ HTTP/1.1\r\n",
    b" GET / HTTP/1.1\r\n",
    b"GET / HTTP/1.12\r\n",
    b"GET / HTTP/1\r\n",
    b"GET / HTTP/2\r\n",  # not HTTP-version syntax (DIGIT "." DIGIT): malformed, not 505
    b"GET / HTTP/3\r\n",
    b"GET /\x80 HTTP/1.1\r\n",
    b"GET /\x00 HTTP/1.1\r\n",
    b"GET / HTTP/1.1\rX\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",  # a TLS ClientHello
    b"\r\n",
]


@pytest.mark.parametrize("line", MALFORMED_REQUEST_LINES)
def test_400_for_malformed_request_line(mode, line):
    raw = line + b"Host: a\r\n\r\n"
    conn, events = one_request(raw, mode)
    assert_rejected(conn, events, 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 prior-knowledge preface
    ],
    ids=["2.0", "3.0", "0.9", "1.2", "h2-preface"],
)
def test_unsupported_http_version_refused_with_505(mode, raw):
    # A well-formed request line with a version we do not speak: 505 (RFC 9110 15.6.6).
    # ("HTTP/2", "HTTP/3" without the minor digit are malformed lines: 400, above.)
    conn, events = one_request(raw, mode)
    assert_rejected(conn, events, 505)


@pytest.mark.parametrize(
    ("folded", "value"),
    [
        (b"X-Fold: a\r\n  b\r\n", b"a b"),
        (b"X-Fold: a\r\n\tb\r\n  c \r\n", b"a b c"),
        (b"X-Fold:\r\n b\r\n", b"b"),
    ],
    ids=["space", "tab-and-two-folds", "empty-first-line"],
)
def test_obs_fold_is_replaced_by_a_space(mode, folded, value):
    # RFC 9112 5.2: a server either rejects obs-fold with 400 or replaces each obs-fold
    # with SP before interpreting or forwarding the field. hqm (through h11) replaces it:
    # the request is accepted and the stored value is one line.
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + folded + b"X-After: z\r\n\r\n"
    _, events = one_request(raw, mode)
    assert len(events) == 1 and isinstance(events[0], RequestReceived), events
    assert events[0].head.headers == ((b"Host", b"a"), (b"X-Fold", value), (b"X-After", b"z"))


def test_obs_fold_with_no_field_to_continue_is_400(mode):
    conn, events = one_request(b"GET / HTTP/1.1\r\n folded\r\nHost: a\r\n\r\n", mode)
    assert_rejected(conn, events, 400)


# --- response framing -----------------------------------------------------------------


def test_head_response_keeps_content_length_without_body(mode):
    conn = ServerConnection(DEFAULT)
    events = feed(conn, b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n", mode)
    assert isinstance(events[0], RequestReceived)
    assert conn.request_method == b"HEAD"
    conn.send_response(
        200, [(b"Content-Type", b"text/html"), (b"Content-Length", b"1234")], b"should-not-go"
    )
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nContent-Length: 1234\r\n" in out
    assert out.endswith(b"\r\n\r\n")
    assert b"should-not-go" not in out
    assert not conn.must_close
    # The connection stays usable: framing was right.
    events = feed(conn, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n", mode)
    assert isinstance(events[0], RequestReceived)
    assert events[0].head.target == b"/next"


def test_head_response_without_content_length_has_no_body():
    conn, _ = one_request(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", "whole")
    conn.send_response(200, [], b"body")
    out = conn.data_to_send()
    assert out.endswith(b"\r\n\r\n")
    assert b"body" not in out
    assert b"Content-Length: 4" not in out


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(mode, status):
    conn = ServerConnection(DEFAULT)
    raw = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n"
    events = feed(conn, raw, mode)
    assert isinstance(events[0], RequestReceived)
    conn.send_response(status, [(b"ETag", b'"v1"')], b"must not be sent")
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 %d " % status)
    assert out.endswith(b"\r\n\r\n")
    assert b"must not be sent" not in out
    assert b"content-length" not in out.lower()
    assert b"transfer-encoding" not in out.lower()
    assert b'\r\nETag: "v1"\r\n' in out
    second = conn.next_event()
    assert isinstance(second, RequestReceived)
    assert second.head.target == b"/y"


def test_304_keeps_passed_content_length_without_body():
    conn, _ = one_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "whole")
    conn.send_response(304, [(b"Content-Length", b"99")], b"")
    out = conn.data_to_send()
    assert b"\r\nContent-Length: 99\r\n" in out
    assert out.endswith(b"\r\n\r\n")
    assert not conn.must_close


def test_bad_response_header_turns_into_502():
    conn, _ = one_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "whole")
    conn.send_response(200, [(b"Bad Name", b"x")], b"")
    out = conn.data_to_send()
    assert out.startswith(b"HTTP/1.1 502 ")
    assert conn.must_close


# --- connection close -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nab",
    ],
    ids=["close", "close-in-list", "http10-no-host", "http10", "http10-body"],
)
def test_connection_close_and_http10_must_close(mode, raw):
    conn = ServerConnection(DEFAULT)
    events = feed(conn, raw, mode)
    assert isinstance(events[0], RequestReceived)
    assert not conn.must_close
    conn.send_response(200, [], b"bye")
    out = conn.data_to_send()
    assert out.endswith(b"bye")
    assert conn.must_close
    assert conn.phase is Phase.CLOSED
    assert b"connection: close" in out.lower()


# --- phases and EOF -------------------------------------------------------------------


def test_phase_transitions():
    conn = ServerConnection(DEFAULT)
    assert conn.phase is Phase.IDLE
    conn.receive_data(b"POST / HTTP/1.1\r\nHo")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.HEAD
    conn.receive_data(b"st: a\r\nContent-Length: 4\r\n\r\n")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.BODY
    conn.receive_data(b"ab")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.BODY
    conn.receive_data(b"cd")
    assert isinstance(conn.next_event(), RequestReceived)
    assert conn.phase is Phase.RESPONDING
    assert isinstance(conn.next_event(), AwaitingResponse)
    assert conn.phase is Phase.RESPONDING
    conn.send_response(200, [], b"")
    assert conn.phase is Phase.IDLE
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.IDLE
    # a pipelined partial head is HEAD phase right after the response
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HT")
    assert isinstance(conn.next_event(), RequestReceived)
    conn.send_response(200, [], b"")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.HEAD


def test_phase_chunked_body():
    conn = ServerConnection(DEFAULT)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    assert isinstance(conn.next_event(), NeedData)
    assert conn.phase is Phase.BODY
    conn.receive_data(b"c\r\n0\r\n\r\n")
    assert isinstance(conn.next_event(), RequestReceived)
    assert conn.phase is Phase.RESPONDING


def test_eof_on_fresh_connection_is_peer_closed():
    conn = ServerConnection(DEFAULT)
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), PeerClosed)
    assert conn.must_close
    assert conn.data_to_send() == b""


def test_eof_between_requests_is_peer_closed(mode):
    conn = ServerConnection(DEFAULT)
    events = feed(conn, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", mode)
    assert isinstance(events[0], RequestReceived)
    conn.send_response(200, [], b"ok")
    conn.data_to_send()
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), PeerClosed)
    assert conn.must_close
    assert conn.data_to_send() == b""


def test_eof_while_responding_still_lets_the_response_out():
    conn = ServerConnection(DEFAULT)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), RequestReceived)
    assert isinstance(conn.next_event(), AwaitingResponse)
    conn.send_response(200, [], b"ok")
    assert conn.data_to_send().endswith(b"ok")
    assert isinstance(conn.next_event(), PeerClosed)


@pytest.mark.parametrize(
    "partial",
    [
        b"G",
        b"GET / HTTP/1.1",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ],
)
def test_eof_mid_request_is_400(mode, partial):
    conn = ServerConnection(DEFAULT)
    events = feed(conn, partial, mode)
    assert all(isinstance(e, NeedData) for e in events)
    conn.receive_data(b"")
    event = conn.next_event()
    assert isinstance(event, Rejected)
    assert_rejected(conn, [event], 400)


def test_eof_mid_pipelined_request_is_400():
    conn = ServerConnection(DEFAULT)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHo")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), RequestReceived)
    conn.send_response(200, [], b"ok")
    assert conn.data_to_send().startswith(b"HTTP/1.1 200 ")
    event = conn.next_event()
    assert isinstance(event, Rejected)
    assert_rejected(conn, [event], 400)


def test_input_after_rejection_is_ignored():
    conn, events = one_request(b"BAD REQUEST LINE\r\n\r\n", "whole")
    assert isinstance(events[0], Rejected)
    conn.data_to_send()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(conn.next_event(), PeerClosed)
    assert conn.data_to_send() == b""


def test_data_after_eof_does_not_raise():
    conn = ServerConnection(DEFAULT)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    conn.receive_data(b"")
    conn.receive_data(b"late bytes")
    assert isinstance(conn.next_event(), RequestReceived)


@pytest.mark.parametrize(
    "raw",
    [
        b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"65\r\n"
        + b"a" * 101,
    ],
    ids=["413", "501", "413-chunked"],
)
def test_rejected_head_request_gets_exactly_one_response(raw):
    conn, events = one_request(raw, "whole", SMALL)
    assert isinstance(events[0], Rejected)
    out = conn.data_to_send()
    assert out.count(b"HTTP/1.1 ") == 1, out


# --- properties -----------------------------------------------------------------------

PROPERTY = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def assert_matches(event, req: GeneratedRequest) -> None:
    assert isinstance(event, RequestReceived), event
    assert event.head.method == req.method
    assert event.head.target == req.target
    assert event.head.headers == req.headers
    assert event.head.http_version == req.http_version
    assert event.body == req.body


@PROPERTY
@given(data=st.data(), req=requests(allow_http10=True, absolute_form=True, hop_by_hop=True))
def test_generated_request_parses_exactly(data, req):
    conn = ServerConnection(DEFAULT)
    for piece in data.draw(split(req.raw), label="pieces"):
        conn.receive_data(piece)
    received = conn.next_event()
    assert_matches(received, req)  # hop-by-hop fields too: the parser keeps every field
    assert isinstance(conn.next_event(), AwaitingResponse)
    conn.send_response(200, [], b"ok")
    assert conn.data_to_send().startswith(b"HTTP/1.1 200 ")
    if req.keep_alive:
        assert isinstance(conn.next_event(), NeedData)
        assert conn.phase is Phase.IDLE
    else:  # HTTP/1.0, or "Connection: close"
        assert conn.must_close


@PROPERTY
@given(req=requests(max_body=64))
def test_generated_request_parses_fed_byte_by_byte(req):
    conn = ServerConnection(DEFAULT)
    events = feed(conn, req.raw, "bytes")
    assert len(events) == 1
    assert_matches(events[0], req)


@PROPERTY
@given(data=st.data(), reqs=pipelines())
def test_generated_pipeline_answered_in_order(data, reqs):
    conn = ServerConnection(DEFAULT)
    for piece in data.draw(split(b"".join(r.raw for r in reqs), max_pieces=30)):
        conn.receive_data(piece)
    for i, req in enumerate(reqs):
        event = conn.next_event()
        assert_matches(event, req)
        assert isinstance(conn.next_event(), AwaitingResponse)
        conn.send_response(200, [(b"X-Seq", b"%d" % i)], b"")
    assert isinstance(conn.next_event(), NeedData)
    out = conn.data_to_send()
    assert [
        int(line.split(b": ")[1]) for line in out.split(b"\r\n") if line.startswith(b"X-Seq")
    ] == (list(range(len(reqs))))


FUZZ_LIMITS = Limits(max_header_bytes=4096, max_body_bytes=1024)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), raw=mutated_requests(max_body=256), eof=st.booleans())
def test_fuzz_mutated_requests_never_crash(data, raw, eof):
    conn = ServerConnection(FUZZ_LIMITS)
    chunks = data.draw(split(raw, max_pieces=20), label="pieces")
    if eof:
        chunks.append(b"")
    last = conn.next_event()
    done = False
    for chunk in chunks:
        conn.receive_data(chunk)
        while not done:
            event = conn.next_event()
            # a "100 Continue" for an accepted head may come first, even in the same call
            out = conn.data_to_send().removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
            last = event
            if isinstance(event, RequestReceived):
                assert out == b""
                conn.send_response(200, [], b"ok")
                assert conn.data_to_send().startswith(b"HTTP/1.1 200 ")
                continue
            if isinstance(event, Rejected):
                assert 400 <= event.status <= 599
                assert out.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5")), out
                assert conn.must_close
                assert conn.phase is Phase.CLOSED
                assert isinstance(conn.next_event(), PeerClosed)
                done = True
            elif isinstance(event, PeerClosed):
                assert chunk == b"" or conn.must_close  # EOF, or an answer said "close"
                assert out == b""
                done = True
            else:
                assert isinstance(event, NeedData), event
                assert out == b""
            break
    if eof or conn.must_close:
        assert isinstance(last, Rejected | PeerClosed)
    else:
        assert isinstance(last, Rejected | NeedData | RequestReceived)


def test_nothing_parsed_after_a_must_close_response():
    conn = ServerConnection(DEFAULT)
    conn.receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert isinstance(conn.next_event(), RequestReceived)
    conn.send_response(200, [], b"ok")
    assert conn.data_to_send().endswith(b"ok")
    assert conn.must_close
    assert isinstance(conn.next_event(), PeerClosed | NeedData)
    assert conn.data_to_send() == b""


# --- timeouts and response Content-Length ----------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [b"GET / HT", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab"],
    ids=["mid-head", "mid-body"],
)
def test_time_out_answers_408_and_closes(partial):
    conn = ServerConnection(DEFAULT)
    conn.receive_data(partial)
    assert isinstance(conn.next_event(), NeedData)
    rejected = conn.time_out()
    assert rejected.status == 408
    assert_rejected(conn, [rejected], 408)


def test_time_out_on_head_request_sends_one_response():
    conn = ServerConnection(DEFAULT)
    conn.receive_data(b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    assert isinstance(conn.next_event(), NeedData)
    conn.time_out()
    assert conn.data_to_send().count(b"HTTP/1.1 ") == 1


def test_response_content_length_matches_body():
    conn, _ = one_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "whole")
    conn.send_response(
        200, [(b"content-length", b"99"), (b"X-A", b"1"), (b"Content-Length", b"7")], b"abc"
    )
    out = conn.data_to_send()
    assert out.lower().count(b"content-length") == 1
    assert b"\r\ncontent-length: 3\r\nX-A: 1\r\n" in out
    assert out.endswith(b"\r\n\r\nabc")
    assert not conn.must_close
