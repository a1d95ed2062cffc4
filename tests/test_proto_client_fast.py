"""ClientConnection's fast path (httptools) against its general (all-h11) path, fed the
same bytes the same way: the same bytes out, the same requests refused, the same
records, errors (status hint and message) and reusability in, piece by piece; and
plain responses must actually take the fast path."""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqm.proto import fast_client
from hqm.proto.client import ClientConnection
from hqm.proto.errors import ProtocolError
from hqm.proto.limits import MAX_HEADER_BYTES
from tests.http_strategies import (
    header_names,
    header_values,
    mutated,
    ows,
    request_methods,
    split,
    targets,
)

pytestmark = pytest.mark.skipif(fast_client.httptools is None, reason="httptools missing")

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
POST = (b"POST", b"/", [(b"Host", b"app"), (b"Content-Length", b"3")], b"abc")


def general_path(**kwargs: int) -> ClientConnection:
    """The general path only: h11 handles every exchange from the start."""
    return ClientConnection(parser="h11", **kwargs)


def send(conn: ClientConnection, *request: object) -> bytes | str:
    try:
        return conn.send_request(*request)  # type: ignore[arg-type]
    except ProtocolError as exc:
        return f"refused {exc.error_status_hint}: {exc}"


def feed(conn: ClientConnection, piece: bytes) -> object:
    try:
        return conn.receive_data(piece)
    except ProtocolError as exc:
        return f"error {exc.error_status_hint}: {exc}"


def agree(pieces: list[bytes], request: tuple = POST, *, eof: bool = False) -> list[object]:
    """Both connections take the same exchange; everything observable must match."""
    fast, general = ClientConnection(max_response_bytes=4096), general_path(max_response_bytes=4096)
    assert send(fast, *request) == send(general, *request)
    seen = []
    for piece in [*pieces, b""] if eof else pieces:
        got = feed(fast, piece)
        assert got == feed(general, piece), piece
        assert fast.reusable == general.reusable
        seen.append(got)
        if isinstance(got, str) or (got is not None and not eof):
            break
    if fast.reusable:  # and both go again
        fast.start_next_cycle()
        general.start_next_cycle()
        assert send(fast, *request) == send(general, *request)
        assert feed(fast, OK) == feed(general, OK)
    return seen


def test_usual_exchange_takes_the_fast_path() -> None:
    conn = ClientConnection()
    out = conn.send_request(
        b"POST", b"/x?y", [(b"Host", b"app"), (b"Content-Length", b"3")], b"abc"
    )
    assert out == b"POST /x?y HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc"
    assert conn._fast == b"POST"
    record = conn.receive_data(OK)
    assert record is not None and record.body == b"ok"
    assert conn.reusable and conn._h11.our_state.__name__ == "IDLE"  # h11 never needed
    conn.start_next_cycle()
    assert agree([OK]) and agree([OK[:7], OK[7:30], OK[30:]])


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"X", b"a\r\nInjected: 1")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"X", b"a\nb")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"X", b"a\rb")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"X", b" lead")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"X", b"trail ")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"X", b"nul\x00")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"Bad Name", b"x")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"", b"x")],
        [(b"Host", b"a"), (b"Host", b"b"), (b"Content-Length", b"3")],
        [(b"Content-Length", b"3")],
        [(b"Host", b"a"), (b"Content-Length", b"03")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"content-length", b"3")],
        [(b"Host", b"a"), (b"Content-Length", b"4")],
        [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"Connection", b"close")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"Expect", b"100-continue")],
        [(b"Host", b"a"), (b"Content-Length", b"3"), (b"X", b"\x01ctl \x80\xff")],
    ],
)
def test_request_edge_cases_agree(headers: list[tuple[bytes, bytes]]) -> None:
    agree([OK], (b"POST", b"/", headers, b"abc"))


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"/a b"),
        (b"G ET", b"/"),
        (b"", b"/"),
        (b"GET", b""),
        (b"HEAD", b"/"),
        (b"CONNECT", b"h:1"),
        (b"GET", b"/\x00"),
        (b"M\xe9", b"/"),
    ],
)
def test_methods_and_targets_agree(method: bytes, target: bytes) -> None:
    agree([OK], (method, target, [(b"Host", b"a"), (b"Content-Length", b"0")], b""))


RESPONSES = [
    OK,
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 201 \r\nX: 1\r\nx: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 404\r\nContent-Length: 2\r\n\r\nno",
    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Pad:  a  b \t\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n folded: x\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX : x\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: \x00\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: \x01\x7f\x80\xff\r\nContent-Length: 2\r\n\r\nok",
    b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b" HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n",
    # where httptools (llhttp) and h11 may differ: the fast path must not decide these
    b"HTTP/1.1 200 OK\r\nX: trail \t \r\nContent-Length:  2 \t\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Empty:   \r\nY:\tv\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK \t\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200  two spaces\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 O\x01K\x7f\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 O\x0bK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 O\x00K\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\x0bb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\x0cb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX:\x0ba\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX\t: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n: a\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX: a\r\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000000000\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"x" * 4096,
    b"HTTP/1.1 200 OK\r\nContent-Length: 4097\r\n\r\n" + b"x" * 4097,
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 2\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Filler: " + b"a" * 200,
    b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 3000 + b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Filler: " + b"a" * MAX_HEADER_BYTES,
    b"HTTP",
    b"H",
    b"HTTP/1.1 200 OK\r\n\r\n\r\n",
    b"NOT HTTP\r\n\r\n",
    b"",
]


@pytest.mark.parametrize("raw", RESPONSES)
@pytest.mark.parametrize("how", ["whole", "bytes", "whole+eof", "bytes+eof"])
def test_responses_agree(raw: bytes, how: str) -> None:
    if how.startswith("whole"):
        pieces = [raw] if raw else []
    else:
        pieces = [raw[i : i + 1] for i in range(len(raw))]
        if len(pieces) > 400:  # byte by byte through a big head: enough to start
            pieces = [*pieces[:200], b"".join(pieces[200:])]
    agree(pieces, eof=how.endswith("eof"))


@pytest.mark.parametrize("raw", RESPONSES[:5])
def test_bytes_after_a_fast_response_prevent_reuse(raw: bytes) -> None:
    for extra in (b"X", b""):
        fast, general = ClientConnection(), general_path()
        send(fast, *POST)
        send(general, *POST)
        assert feed(fast, raw) == feed(general, raw)
        assert fast.reusable
        feed(fast, extra)
        assert not fast.reusable


_SPLITS = ["whole", "random", "bytes"]


def cut(data, raw: bytes, how: str) -> list[bytes]:
    """``raw`` whole, cut at random points, or byte by byte (never a b"" piece)."""
    if how == "whole":
        return [raw] if raw else []
    if how == "bytes":
        return [raw[i : i + 1] for i in range(len(raw))]
    return data.draw(split(raw, max_pieces=24))


@st.composite
def chunked(draw, body: bytes) -> bytes:
    """``body`` in the chunked coding: random cuts, hex case, extensions, trailers."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(body))), max_size=4))))
    bounds = [0, *[c for c in cuts if c < len(body)], len(body)]
    ext = st.sampled_from([b"", b"", b";x", b";n=v", b' ;q="s"'])
    wire = b""
    for a, b in itertools.pairwise(bounds):
        if b > a:
            size = draw(st.sampled_from([b"%x" % (b - a), b"%X" % (b - a), b"0%x" % (b - a)]))
            wire += size + draw(ext) + b"\r\n" + body[a:b] + b"\r\n"
    wire += b"0" + draw(ext) + b"\r\n"
    for name, value in draw(st.lists(st.tuples(header_names(), header_values()), max_size=2)):
        wire += name + b": " + value + b"\r\n"
    return wire + b"\r\n"


@st.composite
def responses(draw, *, plain: bool = False, max_body: int = 300) -> bytes:
    """Raw responses: random status, reason, header lines with OWS padding, a body framed
    by Content-Length (one, repeated, differing, padded, in any case), chunked, both, or
    by EOF, an optional Connection header, HTTP/1.0, a 1xx before it. ``plain``: only
    the ones the fast path must take itself (HTTP/1.1, one Content-Length, no
    Connection, status 200-599 but 204/304, no 1xx)."""
    statuses = st.integers(200, 599).filter(lambda s: s not in (204, 304))
    if not plain:
        statuses = st.one_of(statuses, st.sampled_from([100, 101, 103, 204, 304, 600, 999]))
    status = draw(statuses)
    version = b"1.1" if plain else draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    reason = draw(
        st.sampled_from([b"", b" ", b" OK", b" Not Found", b" \xe9t\xe9 \t", b"  two", b" a\x01"])
    )
    lines = [
        name + b":" + draw(ows()) + value + draw(ows())
        for name, value in draw(st.lists(st.tuples(header_names(), header_values()), max_size=6))
    ]
    body = draw(st.binary(max_size=max_body))
    framings = ["length"] if plain else ["length", "length", "chunked", "none", "both"]
    framing = draw(st.sampled_from(framings + ([] if plain else ["two", "same"])))

    def insert(line: bytes) -> None:
        lines.insert(draw(st.integers(0, len(lines))), line)

    def length(size: int) -> bytes:
        name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
        return name + b":" + draw(ows()) + b"%d" % size + draw(ows())

    wire = body
    if framing in ("chunked", "both"):
        wire = draw(chunked(body))
        insert(b"Transfer-Encoding: chunked")
    if framing in ("length", "both", "two", "same"):
        insert(length(len(body)))
    if framing in ("two", "same"):
        insert(length(len(body) + (framing == "two")))
    if not plain and draw(st.booleans()):
        insert(b"Connection: " + draw(st.sampled_from([b"keep-alive", b"close", b"Upgrade"])))
    head = b"HTTP/%s %03d" % (version, status) + reason + b"\r\n"
    head += b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    prelude = b""
    if not plain and draw(st.booleans()):
        prelude = draw(
            st.sampled_from(
                [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 E\r\nLink: <s>\r\n\r\n"]
            )
        )
    return prelude + head + wire


@settings(deadline=None, max_examples=600)
@given(
    data=st.data(),
    raw=st.one_of(responses(), responses(plain=True)),
    damage=st.booleans(),
    how=st.sampled_from(_SPLITS),
    eof=st.booleans(),
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"DELETE"]),
)
def test_generated_responses_agree(data, raw, damage, how, eof, method) -> None:
    """Every generated response, and every mutation of one, whole, cut at random points
    or byte by byte, with or without an EOF after it: same records, same errors."""
    if damage:
        raw = data.draw(mutated(raw))
    request = (method, b"/", [(b"Host", b"app"), (b"Content-Length", b"0")], b"")
    agree(cut(data, raw, how), request, eof=eof)


@settings(deadline=None, max_examples=300)
@given(data=st.data(), raw=responses(plain=True), how=st.sampled_from(_SPLITS))
def test_plain_responses_take_the_fast_path(data, raw, how) -> None:
    """A plain response is read by httptools alone (h11 never told of the exchange),
    and read exactly as h11 reads it."""
    pieces = cut(data, raw, how)
    fast = ClientConnection()
    fast.send_request(*POST)
    records = [fast.receive_data(piece) for piece in pieces]
    assert fast._h11.our_state is h11.IDLE  # h11 never joined
    assert all(record is None for record in records[:-1])
    assert fast.reusable
    general = general_path()
    general.send_request(*POST)
    assert records[-1] == general.receive_data(raw)


@settings(deadline=None, max_examples=200)
@given(
    data=st.data(),
    raws=st.lists(st.one_of(responses(), responses(plain=True)), min_size=2, max_size=5),
    how=st.sampled_from(_SPLITS),
)
def test_keep_alive_sequences_agree(data, raws, how) -> None:
    """Several exchanges on one connection, fast and deferred ones mixed (the httptools
    parser kept or replaced between them): each agrees while both stay reusable."""
    fast, general = ClientConnection(max_response_bytes=4096), general_path(max_response_bytes=4096)
    for raw in raws:
        assert send(fast, *POST) == send(general, *POST)
        for piece in cut(data, raw, how):
            got = feed(fast, piece)
            assert got == feed(general, piece)
            assert fast.reusable == general.reusable
            if got is not None:
                break
        if not fast.reusable:
            return
        fast.start_next_cycle()
        general.start_next_cycle()


@pytest.mark.parametrize("reads", [1, 2, 7, 1000])
def test_streamed_body_agrees(reads: int) -> None:
    """A body of many reads: the same record, complete with the last byte, not before."""
    body = bytes(range(256)) * 64
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    step = -(-len(raw) // reads)
    pieces = [raw[i : i + step] for i in range(0, len(raw), step)]
    fast, general = ClientConnection(), general_path()
    fast.send_request(*POST)
    general.send_request(*POST)
    for piece in pieces[:-1]:
        assert fast.receive_data(piece) is None
    record = fast.receive_data(pieces[-1])
    assert record is not None and record.body == body
    assert fast._h11.our_state is h11.IDLE and fast.reusable
    assert record == general.receive_data(raw)


def test_parser_h11_never_takes_the_fast_path() -> None:
    conn = ClientConnection(parser="h11")
    conn.send_request(*POST)
    assert conn._h11.our_state is h11.DONE  # h11 was told of the request
    assert conn.receive_data(OK) is not None and conn.reusable


def test_unknown_parser_refused() -> None:
    with pytest.raises(ValueError, match="unknown parser"):
        ClientConnection(parser="llhttp")


def test_without_httptools_h11_does_every_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` when httptools does not import: h11 alone, same answers."""
    monkeypatch.setattr(fast_client, "httptools", None)
    conn = ClientConnection()
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    for raw in (OK, chunked):
        conn.send_request(*POST)
        assert conn._h11.our_state is h11.DONE
        record = conn.receive_data(raw)
        assert record is not None and record.body == b"ok"
        conn.start_next_cycle()


@settings(deadline=None, max_examples=200)
@given(
    method=request_methods(),
    target=targets(),
    headers=st.lists(
        st.tuples(
            st.one_of(header_names(), st.sampled_from([b"Host", b"Content-Length", b"X Y"])),
            st.one_of(header_values(), st.binary(max_size=6)),
        ),
        max_size=6,
    ),
    body=st.binary(max_size=8),
    host=st.booleans(),
    length=st.sampled_from(["right", "wrong", "none"]),
)
def test_generated_requests_agree(method, target, headers, body, host, length) -> None:
    headers = ([(b"Host", b"app")] if host else []) + headers
    if length != "none":
        headers.append((b"Content-Length", b"%d" % (len(body) + (length == "wrong"))))
    agree([OK], (method, target, headers, body))
