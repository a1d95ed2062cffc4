"""hqm proxy end to end, embedded queue: real sockets, a real app, the real CLI."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from tests.support import (
    Answer,
    RawClient,
    build_request,
    poll_result,
    proxy,
    request,
    wait_until,
)

BINARY = bytes(range(256)) * 8


@pytest.fixture
def hqm(backend):
    process = proxy(backend.address)
    yield process
    process.kill()


def test_the_engine_reading_requests_is_the_one_the_environment_names(hqm):
    """test.sh runs this module twice: with the default (the httptools fast path) and
    with HQM_PARSER=h11 (the reference); the proxy says which one reads."""
    expected = "h11" if os.environ.get("HQM_PARSER") == "h11" else "httptools"
    assert hqm.info["parser"] == expected


def test_async_then_poll_returns_the_app_response_verbatim(backend, hqm):
    cookies = [(b"Set-Cookie", b"a=1; Path=/"), (b"Set-Cookie", b"b=2")]
    backend.respond = lambda seen: Answer(
        201,
        [(b"X-App", b"yes"), *cookies, (b"Content-Type", b"application/x-bin")],
        BINARY,
        b"Made",
    )
    accepted = request(hqm.port, b"POST", b"/orders?id=7", body=BINARY)
    assert accepted.status == 202
    request_id = accepted.json()["id"]
    assert len(request_id) == 32
    assert accepted.header(b"Location") == b"/_hqm/requests/" + request_id.encode()
    assert accepted.header(b"HQM-Request-Id") == request_id.encode()
    result = poll_result(hqm.port, request_id)
    assert (result.status, result.reason, result.body) == (201, b"Made", BINARY)
    assert [h for h in result.headers if h[0] == b"Set-Cookie"] == cookies
    assert result.header(b"X-App") == b"yes"
    assert result.header(b"HQM-Request-Id") == request_id.encode()
    seen = backend.seen[0]
    assert (seen.method, seen.target, seen.body) == (b"POST", b"/orders?id=7", BINARY)
    assert seen.header(b"HQM-Request-Id") == request_id.encode()
    assert seen.header(b"X-Forwarded-For") == b"127.0.0.1"


def test_hqm_api_on_every_spelling_of_its_path_and_never_at_the_app(backend, hqm):
    accepted = request(hqm.port, b"POST", b"/orders", body=b"x")
    request_id = accepted.json()["id"].encode()
    assert poll_result(hqm.port, request_id.decode()).status == 200
    for target in [
        b"http://shop/_hqm/requests/" + request_id,  # absolute form (RFC 9112 3.2.2)
        b"HTTP://other:8080/_hqm/requests/" + request_id + b"?x=1",
        b"/%5fhqm/requests/" + request_id,  # "_" percent-encoded
        b"/%5Fhqm/requests/" + request_id,
    ]:
        answer = request(hqm.port, b"GET", target)
        assert (answer.status, answer.header(b"HQM-Request-Id")) == (200, request_id), target
    # A spelling that an app reads as another path is neither hqm's nor the app's.
    for target in [b"/x/../_hqm/requests/" + request_id, b"//_hqm/requests/" + request_id]:
        answer = request(hqm.port, b"GET", target)
        assert answer.status == 400 and "ambiguous" in answer.json()["error"], target
    assert [seen.target for seen in backend.seen] == [b"/orders"]


def test_paths_that_read_one_way_for_the_routes_are_replayed_as_sent(backend, hqm):
    """Without routes every reading of a path takes the default route: dot segments,
    encoded slashes and empty segments reach the app byte for byte."""
    targets = [b"/files/a%2Fb", b"/a/../b//c;v=1?q=%2e%2e", b"http://shop/x/%2e%2e/y"]
    for target in targets:
        assert request(hqm.port, b"POST", target, body=b"x").status == 202
    assert wait_until(lambda: len(backend.seen) == len(targets))
    assert sorted(seen.target for seen in backend.seen) == sorted(targets)


def test_poll_unknown_or_malformed_id_is_404(hqm):
    assert request(hqm.port, b"GET", b"/_hqm/requests/" + b"0" * 32).status == 404
    # (read as /etc by an app that removes dot segments: neither hqm's nor the app's)
    assert request(hqm.port, b"GET", b"/_hqm/requests/../../etc").status == 400
    assert request(hqm.port, b"GET", b"/_hqm/requests/..%2F..%2Fetc").status == 400
    assert request(hqm.port, b"GET", b"/_hqm/requests/%2E%2E").status == 404
    assert request(hqm.port, b"DELETE", b"/_hqm/requests/" + b"0" * 32).status == 404
    assert request(hqm.port, b"PUT", b"/_hqm/requests/" + b"0" * 32).status == 405


def test_wait_mode_returns_the_app_response(backend, hqm):
    response = request(hqm.port, b"GET", b"/index.html", [(b"Prefer", b"wait=5")])
    assert response.status == 200
    assert response.body == b"you asked for /index.html"
    assert response.header(b"Preference-Applied") == b"wait=5"


def test_wait_past_its_limit_answers_202_then_poll_works(backend, hqm):
    release = threading.Event()

    def slow(seen):
        release.wait(30)
        return Answer(200, [], b"late")

    backend.respond = slow
    response = request(hqm.port, b"GET", b"/slow", [(b"Prefer", b"wait=0.2")])
    assert response.status == 202
    request_id = response.json()["id"]
    assert request(hqm.port, b"GET", b"/_hqm/requests/" + request_id.encode()).status == 202
    release.set()
    assert poll_result(hqm.port, request_id).body == b"late"


def test_respond_async_preference(backend, hqm):
    response = request(hqm.port, b"GET", b"/x", [(b"Prefer", b"respond-async, wait=5")])
    assert response.status == 202
    assert response.header(b"Preference-Applied") == b"respond-async"


def test_fire_mode_keeps_no_result(backend):
    hqm = proxy(backend.address, "--mode", "fire")
    try:
        response = request(hqm.port, b"POST", b"/hook", body=b"event")
        assert response.status == 202
        assert response.header(b"Location") is None
        assert wait_until(lambda: backend.count() == 1)
        request_id = response.json()["id"].encode()
        assert wait_until(
            lambda: request(hqm.port, b"GET", b"/_hqm/requests/" + request_id).status == 404
        )
    finally:
        hqm.kill()


def test_head_response_has_no_body_but_keeps_length(backend, hqm):
    backend.respond = lambda seen: Answer(200, [(b"Content-Length", b"1234")], b"")
    response = request(hqm.port, b"HEAD", b"/file", [(b"Prefer", b"wait=5")])
    assert response.status == 200
    assert response.header(b"Content-Length") == b"1234"
    assert response.body == b""


def test_three_pipelined_requests_are_answered_in_order(backend, hqm):
    client = RawClient(hqm.port)
    raw = b"".join(build_request(b"GET", b"/p%d" % i, [(b"Prefer", b"wait=5")]) for i in range(3))
    client.send(raw)
    bodies = []
    for _ in range(3):
        client.expect(b"GET")
        bodies.append(client.read_response().body)
    client.close()
    assert bodies == [b"you asked for /p0", b"you asked for /p1", b"you asked for /p2"]


def test_expect_100_continue(backend, hqm):
    client = RawClient(hqm.port)
    head = build_request(b"POST", b"/up", [(b"Expect", b"100-continue"), (b"Content-Length", b"5")])
    client.send(head)
    assert client.read_raw().startswith(b"HTTP/1.1 100 ")
    client.send(b"hello")
    client.expect(b"POST")
    assert client.read_response().status == 202
    client.close()
    assert wait_until(lambda: backend.count(lambda s: s.body == b"hello") == 1)


def test_413_on_oversize_content_length_before_the_body_is_sent(backend):
    hqm = proxy(backend.address, "--max-body", "1000")
    try:
        client = RawClient(hqm.port)
        client.send(
            build_request(
                b"POST", b"/big", [(b"Expect", b"100-continue"), (b"Content-Length", b"5000")]
            )
        )
        client.expect(b"POST")
        response = client.read_response()  # no body byte was sent
        assert response.status == 413
        assert response.header(b"Connection") == b"close"
    finally:
        hqm.kill()


def test_431_on_a_huge_header_block(backend, hqm):
    response = request(hqm.port, b"GET", b"/", [(b"X-Big", b"a" * 40_000)])
    assert response.status == 431


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["cl+te", "two-cl", "xchunked", "chunked-identity", "te-space", "te-http10"],
)
def test_smuggling_shapes_are_refused_with_400(backend, hqm, raw):
    client = RawClient(hqm.port)
    client.send(raw)
    client.expect(b"POST")
    assert client.read_response().status == 400
    client.close()
    assert backend.count() == 0


def test_connect_and_upgrade_are_refused_with_501(backend, hqm):
    client = RawClient(hqm.port)
    client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    client.expect(b"CONNECT")
    assert client.read_response().status == 501
    upgrade = request(hqm.port, b"GET", b"/ws", [(b"Connection", b"Upgrade"), (b"Upgrade", b"x")])
    assert upgrade.status == 501
    assert backend.count() == 0


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_app_down_is_a_502_json_result_and_nothing_hangs():
    hqm = proxy(f"127.0.0.1:{_closed_port()}", "--max-retry-duration", "0.2")
    try:
        accepted = request(hqm.port, b"POST", b"/x", body=b"data")
        result = poll_result(hqm.port, accepted.json()["id"])
        assert result.status == 502
        error = result.json()
        assert "cannot connect" in error["error"]
        waited = request(hqm.port, b"GET", b"/y", [(b"Prefer", b"wait=10")])
        assert waited.status == 502
    finally:
        hqm.kill()


def test_app_503_twice_then_200_is_retried(backend):
    calls = []

    def flaky(seen):
        calls.append(seen)
        if len(calls) <= 2:
            return Answer(503, [(b"Retry-After", b"0")], b"busy")
        return Answer(200, [], b"finally")

    backend.respond = flaky
    hqm = proxy(backend.address, "--retry-base", "0.01")
    try:
        accepted = request(hqm.port, b"POST", b"/job", body=b"x")
        result = poll_result(hqm.port, accepted.json()["id"])
        assert (result.status, result.body) == (200, b"finally")
        assert len(calls) == 3
    finally:
        hqm.kill()


def test_chunked_request_is_replayed_with_content_length(backend, hqm):
    body = os.urandom(1 << 20)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:1000], body[1000:]))
    raw = (
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )
    client = RawClient(hqm.port)
    client.send(raw)
    client.expect(b"POST")
    assert client.read_response().status == 202
    client.close()
    assert wait_until(lambda: backend.count() == 1)
    seen = backend.seen[0]
    assert seen.body == body
    assert seen.header(b"Content-Length") == str(len(body)).encode()
    assert seen.header(b"Transfer-Encoding") is None


def test_admin_endpoints(backend, hqm):
    assert request(hqm.admin_port, b"GET", b"/healthz").status == 200
    assert request(hqm.admin_port, b"GET", b"/readyz").status == 200
    request(hqm.port, b"POST", b"/m", body=b"x")
    metrics = request(hqm.admin_port, b"GET", b"/metrics")
    assert b'hqm_proxy_requests_total{mode="async",outcome="accepted"} 1.0' in metrics.body
    assert b"hqm_queue_depth" in metrics.body


def test_sigterm_finishes_in_flight_requests_and_exits_0(backend):
    release = threading.Event()
    backend.respond = lambda seen: (release.wait(30), Answer(200, [], b"done"))[1]
    hqm = proxy(backend.address)
    client = RawClient(hqm.port)
    client.send(build_request(b"GET", b"/held", [(b"Prefer", b"wait=20")]))
    client.expect(b"GET")
    assert wait_until(lambda: backend.count() == 1)
    hqm.proc.send_signal(15)
    assert wait_until(lambda: any('"draining"' in line for line in hqm.lines))
    release.set()
    assert client.read_response().body == b"done"
    assert hqm.proc.wait(20) == 0
    log = [json.loads(line) for line in hqm.lines if line.startswith("{")]
    assert log[-1]["msg"] == "stopped"


def test_bad_flags_give_a_clear_cli_error():
    from tests.support import HqmProcess

    bad = HqmProcess("proxy", "--upstream", "ftp://x:1")
    assert bad.proc.wait(20) == 2
    assert "only http:// upstreams" in bad.log()


def test_flags_can_come_from_hqm_environment_variables(backend):
    from tests.support import HqmProcess

    env = {"HQM_PROXY_UPSTREAM": backend.address, "HQM_PROXY_MODE": "wait"}
    hqm = HqmProcess("proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", env=env)
    try:
        hqm.wait_ready()
        response = request(hqm.port, b"GET", b"/from-env")
        assert (response.status, response.body) == (200, b"you asked for /from-env")
    finally:
        hqm.kill()
