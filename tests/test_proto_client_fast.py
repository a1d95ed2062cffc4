"""ClientConnection's fast path against its general (all-h11) path, fed the same
bytes the same way: the same bytes out, the same requests refused, the same records,
errors and reusability in, piece by piece."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqm.proto.client import ClientConnection
from hqm.proto.errors import ProtocolError
from hqm.proto.limits import MAX_HEADER_BYTES
from tests.http_strategies import (
    header_names,
    header_values,
    mutated,
    request_methods,
    split,
    targets,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
POST = (b"POST", b"/", [(b"Host", b"app"), (b"Content-Length", b"3")], b"abc")


class General(ClientConnection):
    """The general path only: h11 handles every exchange from the start."""

    def _fast_path_ok(self, *args: object) -> bool:
        return False


def send(conn: ClientConnection, *request: object) -> bytes | str:
    try:
        return conn.send_request(*request)  # type: ignore[arg-type]
    except ProtocolError as exc:
        return f"refused {exc.error_status_hint}"


def feed(conn: ClientConnection, piece: bytes) -> object:
    try:
        return conn.receive_data(piece)
    except ProtocolError as exc:
        return f"error {exc.error_status_hint}"


def agree(pieces: list[bytes], request: tuple = POST, *, eof: bool = False) -> list[object]:
    """Both connections take the same exchange; everything observable must match."""
    fast, general = ClientConnection(max_response_bytes=4096), General(max_response_bytes=4096)
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
        fast, general = ClientConnection(), General()
        send(fast, *POST)
        send(general, *POST)
        assert feed(fast, raw) == feed(general, raw)
        assert fast.reusable
        feed(fast, extra)
        assert not fast.reusable


@settings(deadline=None, max_examples=400)
@given(
    data=st.data(),
    status=st.integers(100, 699),
    reason=st.sampled_from([b"", b" ", b" OK", b" Not Found", b" \xe9t\xe9 \t"]),
    headers=st.lists(st.tuples(header_names(), header_values()), max_size=5),
    body=st.binary(max_size=64),
    framing=st.sampled_from(["length", "chunked", "none", "both"]),
    damage=st.booleans(),
    eof=st.booleans(),
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"DELETE"]),
)
def test_generated_responses_agree(
    data, status, reason, headers, body, framing, damage, eof, method
) -> None:
    if framing in ("chunked", "both"):
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(body))), max_size=3))))
        bounds = [0, *[c for c in cuts if c < len(body)], len(body)]
        wire = b"".join(
            b"%x\r\n" % (b - a) + body[a:b] + b"\r\n"
            for a, b in itertools.pairwise(bounds)
            if b > a
        )
        wire += b"0\r\n\r\n"
        headers = [*headers, (b"Transfer-Encoding", b"chunked")]
    else:
        wire = body
    if framing in ("length", "both"):
        headers = [*headers, (b"Content-Length", b"%d" % len(body))]
    raw = b"HTTP/1.1 %03d" % status + reason + b"\r\n"
    raw += b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + wire
    if damage:
        raw = data.draw(mutated(raw))
    request = (method, b"/", [(b"Host", b"app"), (b"Content-Length", b"0")], b"")
    agree(data.draw(split(raw)), request, eof=eof)


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
