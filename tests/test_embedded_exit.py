"""Stopping a proxy with the embedded queue (no --redis): what it accepted is
delivered within --drain-timeout, or counted in a warning and the exit status."""

from __future__ import annotations

import json
import socket
import threading

from tests.support import Answer, Backend, Seen, proxy, request

N = 5


def _accept(port: int) -> None:
    for i in range(N):
        answer = request(port, b"POST", b"/jobs/%d" % i, body=b"x")
        assert answer.status == 202, answer


def _warnings(log: str) -> list[dict]:
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [r for r in records if r.get("level") == "warning" and "undelivered" in r]


def test_requests_accepted_while_the_app_is_down_are_counted_lost_and_the_exit_fails():
    # A port bound but not listening (and held: nobody else takes it): refused.
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    hqm = proxy(f"127.0.0.1:{down.getsockname()[1]}", "--drain-timeout", "0.5")
    try:
        _accept(hqm.port)
        code = hqm.terminate()
    finally:
        hqm.kill()
        down.close()
    assert code != 0, hqm.log()
    warned = _warnings(hqm.log())
    assert [w["undelivered"] for w in warned] == [N], hqm.log()
    assert str(N) in warned[0]["msg"]


def test_requests_accepted_for_a_slow_app_are_delivered_before_exit():
    release = threading.Event()

    def slow(seen: Seen) -> Answer:
        release.wait(0.2)  # (a slow app: one at a time, each a while)
        return Answer(200, body=b"done")

    app = Backend(slow)
    hqm = proxy(app.address, "--drain-timeout", "15", "--concurrency", "1")
    try:
        _accept(hqm.port)
        code = hqm.terminate()
    finally:
        hqm.kill()
        app.close()
    assert code == 0, hqm.log()
    assert sorted(s.target for s in app.seen) == [b"/jobs/%d" % i for i in range(N)]
    assert _warnings(hqm.log()) == []
