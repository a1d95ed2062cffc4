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
    """What the app must see: written from the spec (DESIGN section 2), not from the code."""
    out = [(n, v) for n, v in gen.headers if n.lower() != b"transfer-encoding"]
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
    assert got.headers == expected_at_app(gen, request_id)


@_SETTINGS
@given(data=st.data())
def test_any_valid_request_reaches_the_app_verbatim(app, waiting_proxy, data):
    gen = data.draw(requests())
    pieces = data.draw(split(gen.raw, max_pieces=4))
    _send_and_check(app, waiting_proxy.port, gen, pieces)


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
    try:
        for piece in pieces:
            sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):  # a hang would raise socket.timeout here
            received += chunk
    finally:
        sock.close()
    if received:
        assert received.startswith(b"HTTP/1.1 "), bytes(received[:100])
        if not received.startswith((b"HTTP/1.1 1", b"HTTP/1.1 2", b"HTTP/1.1 4", b"HTTP/1.1 5")):
            raise AssertionError(bytes(received[:100]))
        if b"HEAD" not in raw:  # answers to HEAD carry no body: not parseable as GET
            _responses_are_well_formed(bytes(received))
    # ... and the server keeps serving everybody else
    assert request(async_proxy.port, b"GET", b"/_hqm/requests/" + b"0" * 32).status == 404
