"""The access log (hqm.ops.access_log) and W3C trace context across the queue: real
proxies and workers, a real redis-server, real sockets; the parser with bytes."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import threading
import time
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from hqm.ops.access_log import AccessLog, AccessLogSettings, bounded_target
from hqm.proto.envelope import RequestRecord, decode_request, encode_request
from hqm.proto.traceparent import parse_trace_id, trace_id_of
from tests.redis_server import redis_server
from tests.support import (
    Answer,
    Backend,
    HqmProcess,
    RawClient,
    Seen,
    build_request,
    poll_result,
    proxy,
    request,
    wait_until,
)

__all__ = ["redis_server"]  # the fixture, imported for pytest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
#: Every log line's ts (hqm.ops.logs): RFC 3339, UTC, milliseconds.
RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TRACEPARENT = b"00-" + TRACE_ID.encode() + b"-00f067aa0ba902b7-01"
#: Odd but legal bytes: hqm must pass them on exactly as they came.
TRACESTATE = b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
APP_TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
APP_TRACESTATE = b"app=xyz;v=1"


def traced_app(seen: Seen) -> Answer:
    """An app that answers with trace headers of its own (name case kept)."""
    headers = [(b"TraceParent", APP_TRACEPARENT), (b"tracestate", APP_TRACESTATE)]
    return Answer(200, [(b"Content-Type", b"text/plain"), *headers], b"ok " + seen.target)


def access_lines(hqm: HqmProcess, msg: str | None = None) -> list[dict]:
    out = []
    for line in list(hqm.lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("logger") == "hqm.access" and msg in (None, record.get("msg")):
            out.append(record)
    return out


def line_for(hqm: HqmProcess, msg: str, request_id: str) -> dict | None:
    """The line of ``request_id`` (on the proxy: not a results-API read of it)."""
    lines = access_lines(hqm, msg)
    found = [r for r in lines if r.get("id") == request_id and r.get("action") != "api"]
    assert len(found) <= 1, found
    return found[0] if found else None


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hqm.toml"
    path.write_text(text)
    return str(path)


# --- the parser, with bytes ---------------------------------------------------------


def test_traceparent_parser_reads_valid_version_00_and_refuses_the_rest():
    assert parse_trace_id(TRACEPARENT) == TRACE_ID
    assert parse_trace_id(b" " + TRACEPARENT + b"\t") == TRACE_ID
    bad = [
        b"",
        TRACEPARENT.upper(),  # upper-case hex
        TRACEPARENT[:-1],  # too short
        TRACEPARENT + b"-extra",  # version 00 is exactly 55 characters
        b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",  # zero trace id
        b"00-" + TRACE_ID.encode() + b"-" + b"0" * 16 + b"-01",  # zero parent id
        b"ff" + TRACEPARENT[2:],  # version ff is invalid
        b"0g" + TRACEPARENT[2:],
        TRACEPARENT.replace(b"-", b"_", 1),
        b"00-" + TRACE_ID.encode() + b"-00f067aa0ba902b7-0z",
        b"01" + TRACEPARENT[2:] + b"x",  # a later version: more only after a "-"
    ]
    for value in bad:
        assert parse_trace_id(value) == "", value
    assert parse_trace_id(b"01" + TRACEPARENT[2:] + b"-what-comes-later") == TRACE_ID
    assert trace_id_of([(b"Host", b"x"), (b"TraceParent", TRACEPARENT)]) == TRACE_ID
    assert trace_id_of([(b"traceparent", TRACEPARENT), (b"traceparent", TRACEPARENT)]) == ""
    assert trace_id_of([(b"tracestate", TRACEPARENT)]) == ""


def test_trace_id_is_written_only_when_set_and_old_records_still_read():
    record = RequestRecord(id="a" * 32, method=b"GET", target=b"/", headers=())
    assert b"trace_id" not in encode_request(record)
    traced = RequestRecord(id="b" * 32, method=b"GET", target=b"/", headers=(), trace_id=TRACE_ID)
    assert decode_request(encode_request(traced)).trace_id == TRACE_ID
    # a record as written before trace_id existed (version 1, no such key)
    head = orjson.dumps(
        {
            "id": "c" * 32,
            "method": "POST",
            "target": "/x",
            "headers": [["traceparent", TRACEPARENT.decode()]],
            "http_version": "1.1",
            "client": "10.0.0.1",
            "scheme": "http",
            "received_at": 1.5,
            "reply_to": "",
            "mode": "async",
            "upstream": "default",
            "body_len": 2,
        }
    )
    old = b"HQM" + struct.pack(">BBI", 1, 1, len(head)) + head + b"hi"
    decoded = decode_request(old)
    assert decoded.trace_id == "" and decoded.body == b"hi"
    assert decoded.headers == ((b"traceparent", TRACEPARENT),)


def test_a_long_target_is_cut():
    assert bounded_target(b"/" + b"a" * 5000).endswith("...")
    assert len(bounded_target(b"/" + b"a" * 5000)) == 259
    assert bounded_target(b"/caf\xe9") == "/caf\xe9"


# --- the buffer -------------------------------------------------------------------------


def test_a_full_buffer_drops_and_counts_instead_of_blocking():
    """stderr stuck (a pipe nobody reads): add() never waits; past the buffer it drops,
    and the metric counts exactly what was dropped."""
    read_fd, write_fd = os.pipe()
    flags = fcntl.fcntl(write_fd, fcntl.F_GETFL)
    fcntl.fcntl(write_fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with pytest.raises(BlockingIOError):
        while True:
            os.write(write_fd, b"x" * 4096)  # fill the pipe
    fcntl.fcntl(write_fd, fcntl.F_SETFL, flags)
    stream = os.fdopen(write_fd, "wb")
    dropped = Counter("dropped", "", registry=(registry := CollectorRegistry()))
    log = AccessLog(
        settings=AccessLogSettings(mode="on"),
        on_drop=dropped.inc,
        stream=stream,
        capacity=50,
        flush_interval_s=0.005,
    )
    log.start()
    log.add({"ts": 1.0, "msg": "request", "id": "first"})
    assert wait_until(lambda: log.pending == 0)  # taken: the writer is now stuck in write
    for n in range(50 + 120):
        log.add({"ts": 1.0, "msg": "request", "id": str(n)})
    assert log.pending == 50
    assert log.dropped == 120
    assert registry.get_sample_value("dropped_total") == 120
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: os.read(read_fd, 1 << 16), b""))
    )
    reader.start()
    log.close()
    stream.close()
    reader.join(10)
    lines = b"".join(chunks).replace(b"x", b"").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["first", *map(str, range(50))]
    assert log.written == 51
    os.close(read_fd)


# --- a real proxy and worker ------------------------------------------------------------


def test_one_line_per_request_with_its_fields(backend):
    started = time.time()
    hqm = proxy(backend.address, "--access-log", "on")
    try:
        ids = []
        for n in range(5):
            got = request(hqm.port, b"POST", b"/orders/%d" % n, body=b"x" * n)
            assert got.status == 202
            ids.append(got.json()["id"])
        assert request(hqm.port, b"GET", b"/_hqm/requests/" + ids[0].encode()).status in (200, 202)
        assert wait_until(lambda: len(access_lines(hqm, "request")) >= 6)
        lines = access_lines(hqm, "request")
        assert len(lines) == 6
        for n, (line, request_id) in enumerate(zip(lines, ids, strict=False)):
            assert line["method"] == "POST" and line["target"] == f"/orders/{n}"
            assert line["status"] == 202 and line["action"] == "queue"
            assert line["id"] == request_id and line["mode"] == "async"
            assert line["route"] == "default" and line["client"] == "127.0.0.1"
            assert line["bytes_in"] == n and line["bytes_out"] > 0
            assert line["duration_ms"] >= 0 and RFC3339_UTC_MS.fullmatch(line["ts"])
            logged = datetime.fromisoformat(line["ts"]).timestamp()
            assert started - 1 <= logged <= time.time() + 1  # UTC, the wall clock
            assert "trace_id" not in line
        assert lines[5]["action"] == "api" and lines[5]["method"] == "GET"
        every = [json.loads(line) for line in hqm.lines if line.startswith("{")]
        assert len(every) > len(lines) and all(RFC3339_UTC_MS.fullmatch(x["ts"]) for x in every)
        # the embedded worker's lines: one per finished request
        assert wait_until(lambda: len(access_lines(hqm, "finished")) == 5)
        metrics = request(hqm.admin_port, b"GET", b"/metrics").body
        assert b"hqm_proxy_access_log_dropped_total 0.0" in metrics
    finally:
        hqm.terminate()


def test_off_writes_no_line(backend):
    hqm = proxy(backend.address)
    for n in range(20):
        assert request(hqm.port, b"POST", b"/o/%d" % n, [(b"traceparent", TRACEPARENT)]).status
    assert wait_until(lambda: backend.count() == 20)
    assert hqm.terminate() == 0
    assert access_lines(hqm) == []
    assert any(json.loads(line).get("msg") == "stopped" for line in hqm.lines)


def test_sampled_logs_about_its_share_of_requests(backend):
    hqm = proxy(backend.address, "--access-log", "sampled", "--access-log-sample", "0.1")
    client = RawClient(hqm.port)
    try:
        for n in range(2000):
            client.send(build_request(b"GET", b"/_hqm/requests/%032x" % n))
            assert client.read_response().status == 404
    finally:
        client.close()
    assert hqm.terminate() == 0  # (the writer's last flush runs before "stopped")
    count = len(access_lines(hqm, "request"))
    # binomial(2000, 0.1): mean 200, sd 13.4; 5 sd either side
    assert 133 <= count <= 267, count


def test_traceparent_crosses_the_queue_untouched_and_names_both_lines(redis_server):
    app = Backend(traced_app)
    hqm = proxy(app.address, "--redis", redis_server.url, "--access-log", "on")
    worker = HqmProcess(
        "worker",
        *("--redis", redis_server.url, "--upstream", app.address, "--admin", "127.0.0.1:0"),
        *("--access-log", "on"),
    ).wait_ready()
    try:
        sent = [(b"TraceParent", TRACEPARENT), (b"tracestate", TRACESTATE)]
        accepted = request(hqm.port, b"POST", b"/jobs", sent, b"{}")
        assert accepted.status == 202
        request_id = accepted.json()["id"]
        result = poll_result(hqm.port, request_id)
        assert result.status == 200
        assert (b"TraceParent", APP_TRACEPARENT) in result.headers
        assert (b"tracestate", APP_TRACESTATE) in result.headers
        assert [h for h in app.seen[0].headers if h[0].lower().startswith(b"trace")] == sent
        # wait mode: the app's answer straight back, headers as the app sent them
        waited = request(hqm.port, b"POST", b"/jobs", [*sent, (b"Prefer", b"wait=10")], b"{}")
        assert waited.status == 200
        assert (b"TraceParent", APP_TRACEPARENT) in waited.headers
        assert (b"tracestate", APP_TRACESTATE) in waited.headers
        assert [h for h in app.seen[1].headers if h[0].lower().startswith(b"trace")] == sent
        # one grep: the trace id names the proxy's line and the worker's
        assert wait_until(lambda: line_for(worker, "finished", request_id) is not None)
        done = line_for(worker, "finished", request_id)
        assert done is not None
        assert done["trace_id"] == TRACE_ID and done["outcome"] == "done"
        assert done["status"] == 200 and done["attempts"] == 1 and done["queue"] == "default"
        assert done["route"] == "default" and done["latency_ms"] >= 0
        assert wait_until(lambda: line_for(hqm, "request", request_id) is not None)
        accepted_line = line_for(hqm, "request", request_id)
        assert accepted_line is not None and accepted_line["trace_id"] == TRACE_ID
        # an invalid traceparent: passed on untouched, no trace id recorded
        bogus = [(b"traceparent", b"00-not-a-trace")]
        again = request(hqm.port, b"POST", b"/jobs", bogus, b"{}")
        other_id = again.json()["id"]
        assert poll_result(hqm.port, other_id).status == 200
        assert (b"traceparent", b"00-not-a-trace") in app.seen[2].headers
        assert wait_until(lambda: line_for(worker, "finished", other_id) is not None)
        assert "trace_id" not in (line_for(worker, "finished", other_id) or {"trace_id": 1})
    finally:
        worker.terminate()
        hqm.terminate()
        app.close()


def test_traceparent_passes_through_a_pass_route_both_ways(tmp_path):
    app = Backend(traced_app)
    routes = config(tmp_path, '[[routes]]\nname = "live"\npath = "/live/*"\naction = "pass"\n')
    hqm = proxy(app.address, "--config", routes, "--access-log", "on")
    try:
        sent = [(b"traceparent", TRACEPARENT), (b"TraceState", TRACESTATE)]
        got = request(hqm.port, b"GET", b"/live/x", sent)
        assert got.status == 200 and got.body == b"ok /live/x"
        assert (b"TraceParent", APP_TRACEPARENT) in got.headers
        assert (b"tracestate", APP_TRACESTATE) in got.headers
        assert [h for h in app.seen[0].headers if h[0].lower().startswith(b"trace")] == sent
        request_id = got.header(b"HQM-Request-Id").decode()
        assert wait_until(lambda: line_for(hqm, "request", request_id) is not None)
        line = line_for(hqm, "request", request_id)
        assert line is not None
        assert line["action"] == "pass" and line["route"] == "live" and line["status"] == 200
        assert line["trace_id"] == TRACE_ID and line["bytes_out"] == len(b"ok /live/x")
    finally:
        hqm.terminate()
        app.close()
