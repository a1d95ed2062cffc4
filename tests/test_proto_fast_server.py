"""The httptools fast path against h11: for every request the strategies and the
mutation fuzzer make (whole, split at random points, with or without an EOF, answered
in several ways, streamed or not, timed out), both engines yield the same events,
phases and bytes to send, event by event, and the same as h11 alone writing every
answer (``H11Answers``: the shared writer ``framing.answer_bytes`` turned off). Deferring to h11 is invisible by design, so
"identical" covers it; separate tests show the fast path does take the common request
and does defer the smuggling shapes."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hqm.proto.events import (
    AwaitingResponse,
    BodyEnd,
    NeedData,
    PeerClosed,
    Rejected,
    RequestReceived,
    RequestStarted,
)
from hqm.proto.fast_server import FastServerConnection, connection_factory
from hqm.proto.limits import Limits
from hqm.proto.server import ServerConnection
from tests.http_strategies import COMMON_METHODS, mutated_requests, pipelines, requests, split
from tests.support import DEADLINE_S, proxy, wait_until

DEFAULT = Limits()
FUZZ_LIMITS = Limits(max_header_bytes=4096, max_body_bytes=1024)
#: Events per piece of input before the driver gives up (a loop would be a defect).
MAX_STEPS = 50
#: Headers an app may answer with: plain ones, and ones h11 rewrites, merges or refuses.
ANSWER_HEADERS = [
    (b"Content-Type", b"text/plain"),
    (b"X-App", b"v 1"),
    (b"Connection", b"close"),
    (b"Connection", b"keep-alive"),
    (b"Host", b"app"),
    (b"Content-Length", b"3"),
    (b"Transfer-Encoding", b"chunked"),
    (b"X-Bad", b" leading space"),
    (b"Bad Name", b"x"),
    (b"X-Ctl", b"a\x00b"),
    (b"X-Obs", b"caf\xe9"),
]
PROPERTY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True, slots=True)
class Decision:
    stream: bool


@dataclass(frozen=True, slots=True)
class Script:
    """How the driver answers: status, whether framed from the body (HEAD), when a
    streamed request is answered ("late": after its body; "whole": at its head;
    "start": begun at its head, ended after its body), and which requests stream."""

    status: int = 200
    frame_from_body: bool = False
    streamed: str = "late"
    stream: str = "none"  # none, all, odd (targets of odd length)
    time_out_at: int | None = None  # before this piece, the IO layer's timer fires
    headers: tuple[tuple[bytes, bytes], ...] = ((b"Content-Type", b"text/plain"),)
    reason: bytes | None = None

    def classify(self, head):
        if self.stream == "all":
            return Decision(True)
        if self.stream == "odd":
            return Decision(len(head.target) % 2 == 1)
        return Decision(False)


scripts = st.builds(
    Script,
    status=st.sampled_from([200, 201, 204, 304, 404, 502]),
    frame_from_body=st.booleans(),
    streamed=st.sampled_from(["late", "whole", "start"]),
    stream=st.sampled_from(["none", "all", "odd"]),
    time_out_at=st.none() | st.integers(0, 12),
    headers=st.lists(st.sampled_from(ANSWER_HEADERS), max_size=4).map(tuple),
    reason=st.none() | st.sampled_from([b"", b"Fine", b"Odd \xe9", b"Bad\r\n"]),
)


class H11Answers(ServerConnection):
    """The reference: h11 reads every request and writes every answer."""

    def _request_read(self) -> bool:
        return False


def transcript(factory, chunks: list[bytes], script: Script, limits: Limits = DEFAULT) -> list:
    """Everything the IO layer can see of a connection fed ``chunks``, step by step."""
    conn = factory(limits, script.classify)
    log: list = [conn.phase]
    started = False

    def state(*what):
        log.append((*what, conn.phase, conn.must_close, conn.request_method, conn.data_to_send()))

    def answer():
        body = b"answer body\n"
        conn.send_response(
            script.status,
            list(script.headers),
            body,
            script.reason,
            frame_from_body=script.frame_from_body,
        )

    for at, chunk in enumerate(chunks):
        if at == script.time_out_at:
            state("timeout", conn.time_out())
            break
        conn.receive_data(chunk)
        for _ in range(MAX_STEPS):
            event = conn.next_event()
            state(event)
            if isinstance(event, RequestReceived):
                answer()
            elif isinstance(event, RequestStarted):
                if script.streamed == "whole":
                    answer()
                elif script.streamed == "start":
                    started = conn.start_response(script.status, [(b"X-Streamed", b"1")])
            elif isinstance(event, BodyEnd):
                if started:
                    conn.send_body(b"streamed answer")
                    conn.end_response()
                    started = False
                elif script.streamed == "late":
                    answer()
            elif isinstance(event, NeedData | AwaitingResponse | PeerClosed | Rejected):
                break
            state("answered")
        else:
            pytest.fail(f"no end to the events: {log[-3:]}")
    return log


def assert_same(chunks: list[bytes], script: Script, limits: Limits = DEFAULT) -> None:
    reference = transcript(H11Answers, chunks, script, limits)
    assert transcript(ServerConnection, chunks, script, limits) == reference
    assert transcript(FastServerConnection, chunks, script, limits) == reference


@PROPERTY
@given(
    data=st.data(),
    req=requests(allow_http10=True, absolute_form=True, hop_by_hop=True),
    script=scripts,
    eof=st.booleans(),
)
def test_generated_requests_identical(data, req, script, eof):
    chunks = data.draw(split(req.raw), label="pieces")
    assert_same([*chunks, b""] if eof else chunks, script)


#: Requests of the kind the fast path takes (about half of them: repeated names defer).
plain_requests = requests(
    allow_http10=True,
    absolute_form=True,
    allow_chunked=False,
    methods=st.sampled_from(COMMON_METHODS),
)


@PROPERTY
@given(data=st.data(), req=plain_requests, script=scripts, eof=st.booleans())
def test_generated_plain_requests_identical(data, req, script, eof):
    chunks = data.draw(split(req.raw), label="pieces")
    assert_same([*chunks, b""] if eof else chunks, script)


@PROPERTY
@given(data=st.data(), reqs=pipelines(), script=scripts, eof=st.booleans())
def test_generated_pipelines_identical(data, reqs, script, eof):
    chunks = data.draw(split(b"".join(r.raw for r in reqs), max_pieces=30), label="pieces")
    assert_same([*chunks, b""] if eof else chunks, script)


@PROPERTY
@given(req=requests(max_body=64, allow_http10=True), script=scripts)
def test_generated_requests_byte_by_byte_identical(req, script):
    chunks = [req.raw[i : i + 1] for i in range(len(req.raw))]
    assert_same(chunks, script)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), raw=mutated_requests(max_body=256), script=scripts, eof=st.booleans())
def test_fuzz_mutated_requests_identical(data, raw, script, eof):
    chunks = data.draw(split(raw, max_pieces=20), label="pieces")
    assert_same([*chunks, b""] if eof else chunks, script, FUZZ_LIMITS)


# --- the fast path is taken, and defers what it must ---------------------------------

PLAIN = {
    "get": b"GET /a?b=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    "post": b"POST /q HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "http10": b"GET / HTTP/1.0\r\n\r\n",
    "close": b"DELETE /x HTTP/1.1\r\nhost:a\r\nConnection: close\r\n\r\n",
    "head": b"HEAD / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
    "trailing-ows": b"GET / HTTP/1.1\r\nHost: a \t\r\nX:\t \r\n\r\n",
    "obs-text": b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9 \xff\r\n\r\n",
    "propfind": b"PROPFIND /d HTTP/1.1\r\nHost: a\r\n\r\n",
    "pipeline": b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPUT /2 HTTP/1.1\r\nHost: a\r\n"
    b"Content-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("raw", PLAIN.values(), ids=PLAIN.keys())
def test_common_requests_take_the_fast_path(raw):
    conn = FastServerConnection(DEFAULT)
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, RequestReceived)
    assert conn.engine == "httptools"
    for mode in ("late", "whole"):
        assert_same([raw], Script(streamed=mode, stream="all"))
        assert_same([raw[i : i + 1] for i in range(len(raw))], Script(streamed=mode))


SMUGGLING = {
    "cl-te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n0\r\n\r\n",
        400,
    ),
    "double-cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        400,
    ),
    "double-cl-same": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        None,
    ),
    "cl-list": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", None),
    "cl-sign": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd", 400),
    "te-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bare-lf-line": (b"GET / HTTP/1.1\nHost: a\n\n", None),
    "bare-lf-header": (b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", None),
    "bare-cr": (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    "nul-value": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    "nul-target": (b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", None),
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "expect": (
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        None,
    ),
    "upgrade": (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", 501),
    "connect": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    "http2-version": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "huge-head": (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    "huge-incomplete": (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 40_000, 431),
    "huge-length": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n", 413),
    "leading-crlf": (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "lower-method": (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", None),
}


@pytest.mark.parametrize("raw, status", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_and_odd_shapes_are_deferred_to_h11(raw, status):
    conn = FastServerConnection(DEFAULT)
    conn.receive_data(raw)
    event = conn.next_event()
    assert conn.engine == "h11"
    if status is None:
        assert not isinstance(event, Rejected), event
    else:
        assert isinstance(event, Rejected) and event.status == status, event
    step = 1 if len(raw) < 1024 else 997  # (h11 takes 40 KB byte by byte slowly)
    for script in (Script(), Script(stream="all", streamed="start")):
        assert_same([raw], script)
        assert_same([raw[i : i + step] for i in range(0, len(raw), step)], script)
        assert_same([raw, b""], script)


def test_deferring_after_fast_requests_keeps_the_connection_h11s():
    plain = PLAIN["post"]
    bad = SMUGGLING["cl-te"][0]
    conn = FastServerConnection(DEFAULT)
    conn.receive_data(plain + plain + bad)
    for _ in range(2):
        assert isinstance(conn.next_event(), RequestReceived)
        assert conn.engine == "httptools"
        conn.send_response(200, [], b"ok")
    rejected = conn.next_event()
    assert isinstance(rejected, Rejected) and rejected.status == 400
    assert conn.engine == "h11"
    assert_same([plain + plain + bad], Script())
    assert_same([plain, plain + bad[:20], bad[20:], b""], Script(stream="odd"))


def test_eof_mid_body_is_the_same_400():
    raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"
    conn = FastServerConnection(DEFAULT)
    conn.receive_data(raw)
    assert isinstance(conn.next_event(), NeedData)
    conn.receive_data(b"")
    event = conn.next_event()
    assert isinstance(event, Rejected) and event.status == 400
    assert conn.engine == "httptools"
    for script in (Script(), Script(stream="all"), Script(stream="all", streamed="start")):
        assert_same([raw, b""], script)


@pytest.mark.parametrize("cut", [0, 5, 30, 48])
def test_time_out_at_every_phase_is_the_same_408(cut):
    raw = b"HEAD /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"
    for script in (Script(time_out_at=1), Script(time_out_at=1, stream="all")):
        assert_same([raw[:cut], raw[cut:]], script)


def test_factory():
    assert connection_factory("h11") is ServerConnection
    assert connection_factory("auto") is FastServerConnection
    with pytest.raises(ValueError):
        connection_factory("llhttp")


# --- wired: hqm proxy --parser ----------------------------------------------------


def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, half-close, read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_proxy_parser_flag_answers_alike(backend):
    post = b"POST /q HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    smuggled = SMUGGLING["cl-te"][0]
    answers = {}
    for parser in ("auto", "h11"):
        hqm = proxy(backend.address, "--parser", parser)
        try:
            answers[parser] = (_exchange(hqm.port, post), _exchange(hqm.port, smuggled))
        finally:
            hqm.terminate()
    for accepted, refused in answers.values():
        assert accepted.startswith(b"HTTP/1.1 202 "), accepted
        assert refused.startswith(b"HTTP/1.1 400 "), refused
    assert answers["auto"][1] == answers["h11"][1]
    assert wait_until(lambda: len(backend.seen) == 2)
    assert {seen.body for seen in backend.seen} == {b"hello"}
