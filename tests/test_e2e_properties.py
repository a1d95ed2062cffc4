"""Properties through real sockets: the proxy is byte-faithful and never falls over."""

from __future__ import annotations

import os
import socket

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http_strategies import GeneratedRequest, mutated_requests, requests, split
from tests.support import Backend, RawClient, proxy, request

_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def app():
    backend = Backend()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def waiting_proxy(app):
    process = proxy(app.address, "--mode", "wait", "--max-body", str(2 << 20))
    yield process
    process.kill()


def expected_at_app(gen: GeneratedRequest, request_id: bytes) -> list[tuple[bytes, bytes]]:
    """What the app must see: written from the spec (README "What reaches the app",
    RFC 9110 section 7.6.1 for hop-by-hop fields), not from the code."""
    out = list(gen.end_to_end_headers())  # (Transfer-Encoding is hop-by-hop: it goes too)
    if gen.chunked and gen.body:
        out.append((b"Content-Length", b"%d" % len(gen.body)))
    out.append((b"X-Forwarded-For", b"127.0.0.1"))
    out.append((b"X-Forwarded-Proto", b"http"))
    host = [v for n, v in gen.headers if n.lower() == b"host"]
    if host:
        out.append((b"X-Forwarded-Host", host[0]))
    out.append((b"HQM-Request-Id", request_id))
    return out


def _send_and_check(app: Backend, port: int, gen: GeneratedRequest, pieces: list[bytes]) -> None:
    client = RawClient(port)
    try:
        for piece in pieces:
            client.send(piece)
        client.expect(gen.method)
        response = client.read_response()
    finally:
        client.close()
    assert response.status == 200, response
    request_id = response.header(b"HQM-Request-Id")
    seen = [s for s in app.seen if s.header(b"HQM-Request-Id") == request_id]
    assert len(seen) == 1
    got = seen[0]
    assert got.method == gen.method
    assert got.target == gen.target
    assert got.body == gen.body
    hop_by_hop = [(n, v) for n, v in got.headers if n.lower() in gen.hop_by_hop_names()]
    assert hop_by_hop == [], "hop-by-hop fields reached the app"
    assert got.headers == expected_at_app(gen, request_id)


#: Every kind of valid request: HTTP/1.0 (with a Host; without: the test below),
#: absolute-form targets, hop-by-hop fields, and about one body in six of 256 KiB - 1 MiB.
EVERY_KIND = requests(
    allow_http10=True, absolute_form=True, hop_by_hop=True, large_bodies=True, always_host=True
)


@_SETTINGS
@given(data=st.data())
def test_any_valid_request_reaches_the_app_verbatim(app, waiting_proxy, data):
    gen = data.draw(EVERY_KIND)
    pieces = data.draw(split(gen.raw, max_pieces=4))
    _send_and_check(app, waiting_proxy.port, gen, pieces)


def test_the_generator_covers_every_kind() -> None:
    """The kinds the property above is meant to try do come out of its strategy."""
    kinds: set[str] = set()

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(EVERY_KIND)
    def sample(gen: GeneratedRequest) -> None:
        if len(gen.body) >= 256 << 10:
            kinds.add("large body")
        if gen.http_version == b"1.0":
            kinds.add("HTTP/1.0")
        if not gen.target.startswith(b"/"):
            kinds.add("absolute-form")
        if gen.connection_options() - {b"close", b"keep-alive"}:
            kinds.add("Connection naming fields")
        if {n.lower() for n, _ in gen.headers} & {b"te", b"trailer", b"keep-alive"}:
            kinds.add("other hop-by-hop")

    sample()
    assert kinds == {
        "large body",
        "HTTP/1.0",
        "absolute-form",
        "Connection naming fields",
        "other hop-by-hop",
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"GET http://h.example:81/a?b=1 HTTP/1.1\r\nHost: h.example:81\r\n\r\n",
        b"POST /p HTTP/1.0\r\nHost: h\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        b"GET /k HTTP/1.1\r\nHost: h\r\nConnection: X-Hop, TE\r\nX-Hop: 1\r\nTE: trailers\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-Sum\r\n"
        b"X-End: 2\r\n\r\n",
    ],
    ids=["absolute-form", "http-1.0", "hop-by-hop"],
)
def test_examples_of_each_kind(app, waiting_proxy, raw):
    """One fixed example per kind, so each is tried on every run, whatever Hypothesis draws."""
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.split(b"\r\n")
    method, target, version = request_line.split(b" ")
    headers = tuple(tuple(line.split(b": ", 1)) for line in lines)
    gen = GeneratedRequest(
        method=method,
        target=target,
        headers=headers,  # type: ignore[arg-type]
        body=body,
        chunked=False,
        raw=raw,
        http_version=version.removeprefix(b"HTTP/"),
    )
    _send_and_check(app, waiting_proxy.port, gen, [raw])


def test_http10_request_without_host_reaches_the_app(app, waiting_proxy):
    raw = b"GET /no-host HTTP/1.0\r\nX-A: b\r\n\r\n"
    client = RawClient(waiting_proxy.port)
    try:
        client.send(raw)
        client.expect(b"GET")
        response = client.read_response()
    finally:
        client.close()
    assert response.status == 200, response
    request_id = response.header(b"HQM-Request-Id")
    (got,) = [s for s in app.seen if s.header(b"HQM-Request-Id") == request_id]
    assert (got.method, got.target, got.header(b"X-A")) == (b"GET", b"/no-host", b"b")
    # replayed as HTTP/1.1, which needs a Host: the app's own address
    assert got.header(b"Host") == f"127.0.0.1:{app.port}".encode()


@pytest.mark.parametrize("size", [0, 1, 256, 1 << 20])
@pytest.mark.parametrize("chunked", [False, True])
def test_bodies_of_every_size_arrive_byte_identical(app, waiting_proxy, size, chunked):
    body = os.urandom(size)
    if chunked:
        wire = (b"%x\r\n%s\r\n" % (size, body) if size else b"") + b"0\r\n\r\n"
        framing = b"Transfer-Encoding: chunked"
    else:
        wire, framing = body, b"Content-Length: %d" % size
    raw = b"POST /bin HTTP/1.1\r\nHost: h\r\nX-Case: K\r\nx-case: k\r\n" + framing + b"\r\n\r\n"
    gen = GeneratedRequest(
        method=b"POST",
        target=b"/bin",
        headers=(
            (b"Host", b"h"),
            (b"X-Case", b"K"),
            (b"x-case", b"k"),
            *(() if chunked else ((b"Content-Length", b"%d" % size),)),
            *(((b"Transfer-Encoding", b"chunked"),) if chunked else ()),
        ),
        body=body,
        chunked=chunked,
        raw=raw + wire,
    )
    _send_and_check(app, waiting_proxy.port, gen, [gen.raw])


@pytest.fixture(scope="module")
def async_proxy(app):
    process = proxy(app.address)
    yield process
    process.kill()


def _responses_are_well_formed(data: bytes) -> None:
    """Whatever the proxy wrote is a sequence of complete, parseable HTTP responses."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    while True:
        conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"x")]))
        conn.send(h11.EndOfMessage())
        while True:
            event = conn.next_event()
            assert event is not h11.NEED_DATA, "truncated response"
            assert not isinstance(event, h11.ConnectionClosed), "closed mid-response"
            if isinstance(event, h11.EndOfMessage):
                break
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return  # that response closed the connection
        conn.start_next_cycle()
        if not conn.trailing_data[0]:
            return


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_requests_get_an_answer_or_a_clean_close(app, async_proxy, data):
    raw = data.draw(mutated_requests(max_body=64))
    pieces = data.draw(split(raw, max_pieces=6)) or [b""]
    sock = socket.create_connection(("127.0.0.1", async_proxy.port), timeout=10)
    received = bytearray()
    reset = False
    try:
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # reset by the proxy (ENOTCONN, EPIPE, ECONNRESET)
            if isinstance(exc, TimeoutError):
                raise
            reset = True
        try:
            while chunk := sock.recv(65536):  # a hang would raise socket.timeout here
                received += chunk
        except ConnectionResetError:
            reset = True
    finally:
        sock.close()
    if reset:
        # Known hqm behaviour (hqm/io/http_server.py, not RFC 9112 9.6's staged close):
        # after an answer saying "Connection: close" the proxy closes at once, and bytes
        # the client had pipelined behind that request make its kernel send a reset.
        # Tolerated only there: a reset needs a complete answer that said "close" first.
        assert b"\r\nconnection: close\r\n" in bytes(received).lower(), bytes(received[:200])
    if received:
        assert received.startswith(b"HTTP/1.1 "), bytes(received[:100])
        if not received.startswith((b"HTTP/1.1 1", b"HTTP/1.1 2", b"HTTP/1.1 4", b"HTTP/1.1 5")):
            raise AssertionError(bytes(received[:100]))
        if b"HEAD" not in raw:  # answers to HEAD carry no body: not parseable as GET
            _responses_are_well_formed(bytes(received))
    # ... and the server keeps serving everybody else
    assert request(async_proxy.port, b"GET", b"/_hqm/requests/" + b"0" * 32).status == 404
