"""Answers hqm makes itself, and stored app answers, byte for byte on the wire.

Reason phrases are taken from ``http.HTTPStatus`` (what hqm uses), so no Python
version's wording is assumed. Every request says ``Connection: close`` (or is refused,
which closes), so reading to EOF yields exactly one whole answer and proves that no
body byte follows a HEAD answer.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http import HTTPStatus

import orjson
import pytest

from hqm.proto.envelope import ResponseRecord, decode_response, encode_response
from tests.redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from tests.support import (
    DEADLINE_S,
    Answer,
    Backend,
    HqmProcess,
    echo_target,
    poll_result,
    proxy,
    wait_until,
)

ZERO_ID = b"0" * 32
_ID = re.compile(rb"\r\nHQM-Request-Id: ([0-9a-f]{32})\r\n")


def phrase(status: int) -> bytes:
    return HTTPStatus(status).phrase.encode()


def raw_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    lines = b"".join(b"%s: %s\r\n" % h for h in headers or [])
    return b"%s %s HTTP/1.1\r\nHost: test\r\n%sConnection: close\r\n\r\n" % (method, target, lines)


def exchange(port: int, raw: bytes, *, half_close: bool = False) -> bytes:
    """Send ``raw`` on a new connection; every byte hqm sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(1 << 16):
            out += chunk
    return out


def split(answer: bytes) -> tuple[bytes, bytes]:
    head, blank, body = answer.partition(b"\r\n\r\n")
    assert blank, answer
    return head + blank, body


def request_id(answer: bytes) -> bytes:
    match = _ID.search(answer)
    assert match is not None, answer
    return match[1]


def json_answer(status: int, body: bytes, *headers: bytes) -> bytes:
    """hqm's JSON answer to a ``Connection: close`` request, as it must be on the wire."""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (status, phrase(status))
        + b"".join(h + b"\r\n" for h in headers)
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )


def refusal(status: int, body: bytes) -> bytes:
    """The protocol layer's refusal: JSON, as every error answer hqm makes."""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (status, phrase(status), len(body))
    ) + body


def accepted(rid: bytes) -> bytes:
    location = b"/_hqm/requests/" + rid
    body = b'{"id":"%s","status":"queued","location":"%s"}' % (rid, location)
    return json_answer(202, body, b"HQM-Request-Id: " + rid, b"Location: " + location)


@pytest.fixture(scope="module")
def app():
    backend = Backend()
    yield backend
    backend.close()


@pytest.fixture(autouse=True)
def _echo_app(app):
    yield
    app.respond = echo_target


@pytest.fixture(scope="module")
def hqm(app):
    process = proxy(
        app.address,
        "--max-body", "100",
        "--max-header-bytes", "2048",
        "--header-timeout", "0.5",
    )  # fmt: skip
    yield process
    process.kill()


def stored(hqm: HqmProcess, raw: bytes) -> bytes:
    """Send ``raw`` (async mode), wait until its result is stored; the request id."""
    rid = request_id(exchange(hqm.port, raw))
    assert poll_result(hqm.port, rid.decode()).status != 202
    return rid


# --- 1. reason phrases ----------------------------------------------------------------

BIG_HEADER = (b"X-Big", b"a" * 3000)
REFUSALS = {
    "400-cl-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n",
        400,
        b'{"error":"Content-Length with Transfer-Encoding"}',
    ),
    "400-te-http10": (
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        b'{"error":"Transfer-Encoding in an HTTP/1.0 request"}',
    ),
    "400-closed-mid-body": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        400,
        None,
    ),
    "408": (b"GET /slow HTTP/1.1\r\nHost: a\r\n", 408, b'{"error":"request timeout"}'),
    "413": (
        b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n",
        413,
        b'{"error":"request body too large"}',
    ),
    "413-chunked": (
        b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n"
        + b"x" * 101
        + b"\r\n0\r\n\r\n",
        413,
        b'{"error":"request body too large"}',
    ),
    "431": (raw_request(b"GET", b"/", [BIG_HEADER]), 431, None),
    "501-connect": (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        501,
        b'{"error":"CONNECT is not supported"}',
    ),
    "501-upgrade": (
        raw_request(b"GET", b"/ws", [(b"Upgrade", b"websocket")]),
        501,
        b'{"error":"Upgrade is not supported"}',
    ),
    "505": (
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        505,
        b'{"error":"only HTTP/1.0 and HTTP/1.1 are spoken here"}',
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refusals_carry_the_standard_reason_phrase(hqm, case):
    raw, status, body = REFUSALS[case]
    answer = exchange(hqm.port, raw, half_close=case == "400-closed-mid-body")
    if body is None:  # refused by h11 (or by whichever of h11 and hqm sees it first)
        body = split(answer)[1]
        assert set(orjson.loads(body)) == {"error"} and orjson.loads(body)["error"]
    assert answer == refusal(status, body)


def test_json_answers_carry_the_standard_reason_phrase(hqm):
    answer = exchange(hqm.port, raw_request(b"POST", b"/orders"))
    assert answer == accepted(request_id(answer))
    assert exchange(hqm.port, raw_request(b"GET", b"/_hqm/requests/" + ZERO_ID)) == json_answer(
        404, b'{"error":"unknown or expired request id","id":"%s"}' % ZERO_ID
    )
    assert exchange(hqm.port, raw_request(b"GET", b"/_hqm/nothing")) == json_answer(
        404, b'{"error":"no such hqm endpoint"}'
    )
    assert exchange(hqm.port, raw_request(b"PUT", b"/_hqm/requests/" + ZERO_ID)) == (
        json_answer(405, b'{"error":"use GET, HEAD or DELETE"}', b"Allow: GET, HEAD, DELETE")
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_502_hqm_made_up_carries_the_standard_reason_phrase():
    hqm = proxy(f"127.0.0.1:{_closed_port()}", "--max-retry-duration", "0.2")
    try:
        rid = stored(hqm, raw_request(b"POST", b"/x"))
        get = exchange(hqm.port, raw_request(b"GET", b"/_hqm/requests/" + rid))
        head, body = split(get)
        assert head == (
            b"HTTP/1.1 502 %s\r\nContent-Type: application/json\r\nHQM-Request-Id: %s\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (phrase(502), rid, len(body))
        )
        assert json.loads(body)["status"] == 502
        # framed for HEAD exactly as for GET (item 2), no body byte
        assert exchange(hqm.port, raw_request(b"HEAD", b"/_hqm/requests/" + rid)) == head
    finally:
        hqm.kill()


@pytest.mark.parametrize("reason", [b"", b"Fine By Me"], ids=["empty", "custom"])
def test_app_answers_keep_the_apps_own_reason_phrase(app, hqm, reason):
    app.respond = lambda seen: Answer(200, [(b"Content-Length", b"2")], b"ok", reason)
    waited = exchange(hqm.port, raw_request(b"GET", b"/w", [(b"Prefer", b"wait=10")]))
    rid = request_id(waited)
    assert waited == (
        b"HTTP/1.1 200 %s\r\nContent-Length: 2\r\nHQM-Request-Id: %s\r\n"
        b"Preference-Applied: wait=10\r\nConnection: close\r\n\r\nok" % (reason, rid)
    )
    rid = stored(hqm, raw_request(b"GET", b"/a"))
    assert exchange(hqm.port, raw_request(b"GET", b"/_hqm/requests/" + rid)) == (
        b"HTTP/1.1 200 %s\r\nContent-Length: 2\r\nHQM-Request-Id: %s\r\n"
        b"Connection: close\r\n\r\nok" % (reason, rid)
    )


# --- 2. HEAD framed like GET ----------------------------------------------------------

HEAD_PAIRS = {
    "404-unknown-id": (b"/_hqm/requests/" + ZERO_ID, []),
    "404-no-endpoint": (b"/_hqm/nothing", []),
    "501-upgrade": (b"/ws", [(b"Upgrade", b"websocket")]),
    "413": (b"/big", [(b"Content-Length", b"101")]),
    "431": (b"/", [BIG_HEADER]),
    "400-bad-header-line": (b"/", [(b"Bad Header", b"x")]),  # refused by h11 itself
    "400-two-lengths": (b"/", [(b"Content-Length", b"5"), (b"Content-Length", b"6")]),
}


@pytest.mark.parametrize("case", HEAD_PAIRS)
def test_head_gets_the_get_answers_head_and_no_body(hqm, case):
    target, headers = HEAD_PAIRS[case]
    get = exchange(hqm.port, raw_request(b"GET", target, headers))
    head, body = split(get)
    assert body and head.endswith(
        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    assert exchange(hqm.port, raw_request(b"HEAD", target, headers)) == head


def test_head_in_async_mode_gets_the_202_framed_like_get(hqm):
    get = exchange(hqm.port, raw_request(b"GET", b"/thing"))
    head = exchange(hqm.port, raw_request(b"HEAD", b"/thing"))
    get_id, head_id = request_id(get), request_id(head)
    assert get == accepted(get_id)
    assert head == split(accepted(head_id))[0]
    assert b"Transfer-Encoding" not in head


def test_head_of_a_408_has_no_body(hqm):
    answer = exchange(hqm.port, b"HEAD /slow HTTP/1.1\r\nHost: a\r\n")
    assert answer == split(refusal(408, b'{"error":"request timeout"}'))[0]


def test_head_of_a_stored_get_answer_is_framed_like_the_get(app, hqm):
    # chunked by the app: stored without Content-Length; the app's own
    # HQM-Original-Method is not passed on (the proxy owns that header)
    app.respond = lambda seen: Answer(
        201, [(b"X-App", b"1"), (b"HQM-Original-Method", b"FAKE")], b"made it", b"Made"
    )
    rid = stored(hqm, raw_request(b"POST", b"/orders"))
    get = exchange(hqm.port, raw_request(b"GET", b"/_hqm/requests/" + rid))
    assert get == (
        b"HTTP/1.1 201 Made\r\nX-App: 1\r\nHQM-Request-Id: %s\r\nContent-Length: 7\r\n"
        b"Connection: close\r\n\r\nmade it" % rid
    )
    head = exchange(hqm.port, raw_request(b"HEAD", b"/_hqm/requests/" + rid))
    assert head == split(get)[0]


# --- 3. a stored answer to HEAD -------------------------------------------------------


def test_stored_answer_to_head_read_with_head_is_the_apps_head_exactly(app, hqm):
    app.respond = lambda seen: Answer(
        200, [(b"Content-Type", b"text/html"), (b"Content-Length", b"25")], b"", b"Here"
    )
    rid = stored(hqm, raw_request(b"HEAD", b"/file"))
    assert app.seen[-1].method == b"HEAD"
    assert exchange(hqm.port, raw_request(b"HEAD", b"/_hqm/requests/" + rid)) == (
        b"HTTP/1.1 200 Here\r\nContent-Type: text/html\r\nContent-Length: 25\r\n"
        b"HQM-Request-Id: %s\r\nConnection: close\r\n\r\n" % rid
    )


def test_stored_answer_to_head_read_with_get_is_empty_and_says_why(app, hqm):
    app.respond = lambda seen: Answer(
        200, [(b"Content-Type", b"text/html"), (b"Content-Length", b"25")], b"", b"Here"
    )
    rid = stored(hqm, raw_request(b"HEAD", b"/file"))
    assert exchange(hqm.port, raw_request(b"GET", b"/_hqm/requests/" + rid)) == (
        b"HTTP/1.1 200 Here\r\nContent-Type: text/html\r\nContent-Length: 0\r\n"
        b"HQM-Request-Id: %s\r\nHQM-Original-Method: HEAD\r\nConnection: close\r\n\r\n" % rid
    )


def test_wait_mode_head_gets_the_apps_head_exactly(app, hqm):
    app.respond = lambda seen: Answer(200, [(b"Content-Length", b"25")], b"", b"Here")
    answer = exchange(hqm.port, raw_request(b"HEAD", b"/file", [(b"Prefer", b"wait=10")]))
    assert answer == (
        b"HTTP/1.1 200 Here\r\nContent-Length: 25\r\nHQM-Request-Id: %s\r\n"
        b"Preference-Applied: wait=10\r\nConnection: close\r\n\r\n" % request_id(answer)
    )


def test_stored_answer_to_head_over_redis_keeps_its_method(app, redis_server):  # noqa: F811
    app.respond = lambda seen: Answer(200, [(b"Content-Length", b"25")], b"", b"Here")
    hqm = proxy(app.address, "--redis", redis_server.url)
    worker = HqmProcess(
        "worker", "--redis", redis_server.url, "--upstream", app.address, "--admin", "off"
    )
    try:
        worker.wait_ready()
        rid = stored(hqm, raw_request(b"HEAD", b"/file"))
        target = b"/_hqm/requests/" + rid
        assert exchange(hqm.port, raw_request(b"HEAD", target)) == (
            b"HTTP/1.1 200 Here\r\nContent-Length: 25\r\nHQM-Request-Id: %s\r\n"
            b"Connection: close\r\n\r\n" % rid
        )
        assert exchange(hqm.port, raw_request(b"GET", target)) == (
            b"HTTP/1.1 200 Here\r\nContent-Length: 0\r\nHQM-Request-Id: %s\r\n"
            b"HQM-Original-Method: HEAD\r\nConnection: close\r\n\r\n" % rid
        )
    finally:
        worker.kill()
        hqm.kill()


def test_request_method_in_the_envelope_is_optional_both_ways():
    old = ResponseRecord(200, b"OK", ((b"Content-Length", b"25"),))
    new = ResponseRecord(200, b"OK", ((b"Content-Length", b"25"),), request_method=b"HEAD")
    assert decode_response(encode_response(new)) == new
    # a record without the method is written as before (no new key), and reads as unknown
    encoded = encode_response(old)
    head_len = int.from_bytes(encoded[5:9], "big")
    assert "request_method" not in orjson.loads(encoded[9 : 9 + head_len])
    assert decode_response(encoded).request_method == b""


# --- 4. queue failures: a fixed 503 for clients, the detail in the log ----------------

UNAVAILABLE = b'{"error":"queue unavailable","retry_after":1}'


def _ingress_log(hqm: HqmProcess) -> list[dict]:
    records = [json.loads(line) for line in list(hqm.lines) if line.startswith("{")]
    return [r for r in records if r.get("logger") == "hqm.ingress"]


def test_queue_down_gives_a_fixed_503_and_logs_the_detail_once(backend):
    redis = RedisServer()  # its port is free: nothing listens there yet
    where = f"127.0.0.1:{redis.port}"
    hqm = HqmProcess(
        "proxy", "--listen", "127.0.0.1:0", "--admin", "off",
        "--upstream", backend.address, "--redis", redis.url,
    ).wait_ready()  # fmt: skip
    try:
        expected = json_answer(503, UNAVAILABLE, b"Retry-After: 1")
        answers = [exchange(hqm.port, raw_request(b"POST", b"/x")) for _ in range(2)]
        answers.append(exchange(hqm.port, raw_request(b"GET", b"/x")))
        assert answers == [expected] * 3
        assert exchange(hqm.port, raw_request(b"HEAD", b"/x")) == split(expected)[0]
        poll = raw_request(b"GET", b"/_hqm/requests/" + ZERO_ID)
        answers.append(exchange(hqm.port, poll))
        assert answers[-1] == expected
        for leak in (
            where.encode(),
            str(redis.port).encode(),
            b"Error 111",
            b"ConnectionError",
            b"redis",
        ):
            assert not any(leak in answer for answer in answers)

        redis.start()  # the queue comes back
        answer = exchange(hqm.port, raw_request(b"POST", b"/x"))
        assert answer == accepted(request_id(answer))
        assert exchange(hqm.port, poll) == json_answer(
            404, b'{"error":"unknown or expired request id","id":"%s"}' % ZERO_ID
        )
        # each recovery line follows its failure line: once both are read, all are
        assert wait_until(lambda: len(_ingress_log(hqm)) == 4), hqm.log()
        lines = {(r["level"], r["msg"].split(" ")[1]): r for r in _ingress_log(hqm)}
        assert sorted(lines) == [
            ("info", "enqueue"), ("info", "results"),
            ("warning", "enqueue"), ("warning", "results"),
        ]  # fmt: skip
        for op in ("enqueue", "results read"):
            failed = lines["warning", op.split(" ")[0]]
            assert failed["msg"].startswith(f"queue {op} failed: QueueUnavailable: ")
            assert where in failed["msg"] and "ConnectionError" in failed["msg"]
            assert "exc" not in failed  # no traceback
        assert lines["info", "enqueue"]["msg"] == "queue enqueue works again after 4 failures"
        assert lines["info", "results"]["msg"] == "queue results read works again after 1 failure"
    finally:
        hqm.kill()
        redis.cleanup()


def test_queue_full_gives_a_fixed_503(backend):
    release = threading.Event()
    backend.respond = lambda seen: (release.wait(DEADLINE_S), Answer(200))[1]
    hqm = proxy(backend.address, "--max-depth", "1")
    try:
        first = exchange(hqm.port, raw_request(b"POST", b"/held"))
        assert first == accepted(request_id(first))
        assert wait_until(lambda: backend.count() == 1)  # held by the app: the one entry
        full = exchange(hqm.port, raw_request(b"POST", b"/x"))
        assert full == json_answer(
            503, b'{"error":"queue full","retry_after":1}', b"Retry-After: 1"
        )
        assert wait_until(
            lambda: any(
                r["msg"].startswith("queue enqueue failed: QueueFull: ") for r in _ingress_log(hqm)
            )
        ), hqm.log()
    finally:
        release.set()
        hqm.kill()
