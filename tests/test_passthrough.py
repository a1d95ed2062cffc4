"""Routes over real sockets: pass-through streams both bodies with bounded memory and
changes nothing for the app; reject answers its status; percent splits; a route's queue,
mode and injected headers; secrets never logged."""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from pathlib import Path

import h11

from tests.redis_server import command, redis_server
from tests.support import Answer, HqmProcess, poll_result, proxy, request

__all__ = ["redis_server"]  # the fixture, imported for pytest
MIB = 1 << 20


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hqm.toml"
    path.write_text(text)
    return str(path)


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


class StreamingEcho:
    """An app that streams every request body straight back (chunked) as it reads it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        app = h11.Connection(h11.SERVER)
        with conn:
            while True:
                event = app.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(MIB)
                    if not data:
                        return
                    app.receive_data(data)
                elif isinstance(event, h11.Request):
                    conn.sendall(
                        app.send(h11.Response(status_code=200, headers=[(b"X-Echo", b"1")]))
                    )
                elif isinstance(event, h11.Data):
                    self.received += len(event.data)
                    conn.sendall(app.send(h11.Data(data=event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    conn.sendall(app.send(h11.EndOfMessage()))
                    return
                else:
                    return

    def close(self) -> None:
        self.sock.close()


def _blocks(total: int):
    """Generated upload: distinct 1 MiB blocks (never stored whole)."""
    seed = hashlib.sha256(b"hqm").digest() * (MIB // 32)
    for i in range(total // MIB):
        yield i.to_bytes(8, "big") + seed[8:]


def test_a_256_mib_upload_streams_through_a_pass_route_in_bounded_memory(tmp_path):
    app = StreamingEcho()
    routes = config(tmp_path, '[[routes]]\nname = "upload"\npath = "/upload"\naction = "pass"\n')
    hqm = proxy(f"127.0.0.1:{app.port}", "--config", routes, "--max-body", "1024")
    total = 256 * MIB
    sent = hashlib.sha256()
    try:
        sock = socket.create_connection(("127.0.0.1", hqm.port))
        sock.settimeout(60)

        def upload() -> None:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % total
            )
            for block in _blocks(total):
                sent.update(block)
                sock.sendall(block)

        sender = threading.Thread(target=upload)
        sender.start()
        client = h11.Connection(h11.CLIENT)
        client.send(
            h11.Request(
                method=b"POST",
                target=b"/upload",
                headers=[(b"Host", b"app"), (b"Content-Length", str(total).encode())],
            )
        )
        got = hashlib.sha256()
        size = 0
        status = None
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(MIB))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                got.update(event.data)
                size += len(event.data)
            else:
                break
        sender.join()
        sock.close()
        assert status == 200 and size == total
        assert got.hexdigest() == sent.hexdigest()
        assert app.received == total
        assert rss_peak_kib(hqm.proc.pid) < 100 * 1024  # peak RSS of the proxy, KiB
    finally:
        hqm.terminate()
        app.close()


def test_percent_zero_changes_nothing_for_the_app(tmp_path, backend):
    backend.respond = lambda seen: Answer(
        207,
        [(b"X-App", b"yes"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")],
        b"app body",
        b"Multi",
    )
    routes = config(tmp_path, '[[routes]]\nname = "all"\npercent = 0\n')
    hqm = proxy(backend.address, "--config", routes)
    try:
        headers = [
            (b"Host", b"shop.example"),
            (b"X-Trace", b"t1"),
            (b"Content-Type", b"text/plain"),
        ]
        answer = request(hqm.port, b"PUT", b"/cart/7?x=%20y", headers, b"payload")
        assert (answer.status, answer.reason, answer.body) == (207, b"Multi", b"app body")
        assert [(n, v) for n, v in answer.headers if n.lower() in (b"x-app", b"set-cookie")] == [
            (b"X-App", b"yes"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
        (seen,) = backend.seen
        assert (seen.method, seen.target, seen.body) == (b"PUT", b"/cart/7?x=%20y", b"payload")
        assert [
            h for h in seen.headers if h[0].lower() in (b"host", b"x-trace", b"content-type")
        ] == headers
        assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
    finally:
        hqm.terminate()


def test_pass_reject_and_queue_routes_side_by_side(tmp_path, backend, redis_server):
    routes = config(
        tmp_path,
        """
[[routes]]
name = "health"
methods = ["GET", "HEAD"]
path = "/healthz"
action = "pass"

[[routes]]
name = "internal"
path = "/internal/*"
action = "reject"
status = 404

[[routes]]
name = "reports"
path = "/reports/*"
queue = "reports"
""",
    )
    hqm = proxy(backend.address, "--config", routes, "--redis", redis_server.url, "--max-body", "8")
    try:
        assert request(hqm.port, b"GET", b"/healthz", [(b"Host", b"a")]).status == 200
        assert backend.count() == 1  # straight to the app, not queued
        refused = request(hqm.port, b"GET", b"/internal/x", [(b"Host", b"a")])
        assert refused.status == 404 and refused.json()["route"] == "internal"
        queued = request(hqm.port, b"POST", b"/reports/q4", [(b"Host", b"a")], b"r")
        assert queued.status == 202
        assert command(redis_server.port, "XLEN", "hqm:{reports}:stream") == b":1\r\n"
        assert command(redis_server.port, "XLEN", "hqm:{default}:stream") == b":0\r\n"
        other = request(hqm.port, b"POST", b"/other", [(b"Host", b"a")], b"o")
        assert other.status == 202
        assert command(redis_server.port, "XLEN", "hqm:{default}:stream") == b":1\r\n"
        # --max-body binds queued routes only
        big = request(hqm.port, b"POST", b"/reports/x", [(b"Host", b"a")], b"x" * 9)
        assert big.status == 413
        backend_before = backend.count()
        passed = request(hqm.port, b"GET", b"/healthz", [(b"Host", b"a")], b"x" * 100)
        assert passed.status == 200 and backend.count() == backend_before + 1
    finally:
        hqm.terminate()


def test_a_pass_route_with_the_app_down_answers_502(tmp_path):
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    routes = config(tmp_path, '[[routes]]\nname = "all"\naction = "pass"\n')
    hqm = proxy(f"127.0.0.1:{port}", "--config", routes)
    try:
        answer = request(hqm.port, b"GET", b"/", [(b"Host", b"a")])
        assert answer.status == 502 and "cannot connect" in answer.json()["error"]
    finally:
        hqm.terminate()


def test_percent_10_of_10000_requests_is_queued_and_sticky(tmp_path, backend, redis_server):
    routes = config(
        tmp_path, '[[routes]]\nname = "canary"\npercent = 10\nsticky = "header:X-User"\n'
    )
    hqm = proxy(backend.address, "--config", routes, "--redis", redis_server.url)
    sides: dict[int, set[int]] = {}

    def client(first: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", hqm.port, timeout=20)
        for user in range(first, 10_000, 8):
            for _ in range(2 if user < 400 else 1):  # some users twice: never change side
                conn.request("GET", "/x", headers={"X-User": f"user-{user}"})
                response = conn.getresponse()
                response.read()
                sides.setdefault(user, set()).add(response.status)
        conn.close()

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        queued = int(command(redis_server.port, "XLEN", "hqm:{default}:stream")[1:-2])
        first_time = [s for s in sides.values()]
        assert all(len(s) == 1 for s in first_time)
        users_queued = sum(1 for s in first_time if s == {202})
        assert 850 <= users_queued <= 1150  # 10% +- 1.5% of 10,000
        assert queued == users_queued + sum(1 for u in range(400) if sides[u] == {202})
        assert backend.count() == 10_400 - queued
    finally:
        hqm.terminate()


def test_injected_headers_reach_the_app_and_never_a_log_line(tmp_path, backend, redis_server):
    secret = "Bearer s3cr3t-t0ken-value"
    routes = config(
        tmp_path,
        """
[[routes]]
name = "api"
path = "/api/*"
action = "pass"
inject_headers = { Authorization = "${APP_TOKEN}", X-Api-Key = "key-${APP_KEY}" }

[[routes]]
name = "jobs"
path = "/jobs/*"
inject_headers = { Authorization = "${APP_TOKEN}" }
""",
    )
    env = {"APP_TOKEN": secret, "APP_KEY": "k9k9k9"}
    hqm = HqmProcess(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        backend.address,
        "--config",
        routes,
        "--log-level",
        "debug",
        env=env,
    ).wait_ready()
    worker = None
    try:
        headers = [(b"Host", b"a"), (b"Authorization", b"Basic client-own")]
        assert request(hqm.port, b"GET", b"/api/me", headers).status == 200
        (seen,) = backend.seen
        assert seen.header(b"authorization") == secret.encode()
        assert seen.header(b"x-api-key") == b"key-k9k9k9"
        assert [n for n, _ in seen.headers].count(b"Authorization") == 1
        queued = request(hqm.port, b"POST", b"/jobs/1", [(b"Host", b"a")], b"job")
        assert queued.status == 202
        done = poll_result(hqm.port, queued.json()["id"])
        assert done.status == 200
        assert backend.seen[-1].header(b"authorization") == secret.encode()
    finally:
        hqm.terminate()
        if worker is not None:
            worker.terminate()
    assert secret not in hqm.log() and "s3cr3t" not in hqm.log() and "k9k9k9" not in hqm.log()


def test_routes_are_the_label_of_the_routed_counter(tmp_path, backend):
    routes = config(
        tmp_path,
        '[[routes]]\nname = "health"\npath = "/healthz"\naction = "pass"\n'
        '[[routes]]\nname = "no"\npath = "/no"\naction = "reject"\nstatus = 410\n',
    )
    hqm = proxy(backend.address, "--config", routes)
    try:
        for target in (b"/healthz", b"/healthz", b"/no", b"/other"):
            request(hqm.port, b"GET", target, [(b"Host", b"a")])
        metrics = request(hqm.admin_port, b"GET", b"/metrics", [(b"Host", b"a")]).body
        assert b'hqm_proxy_routed_total{action="pass",route="health"} 2.0' in metrics
        assert b'hqm_proxy_routed_total{action="reject",route="no"} 1.0' in metrics
        assert b'hqm_proxy_routed_total{action="queue",route="default"} 1.0' in metrics
    finally:
        hqm.terminate()


def test_a_signed_replay_passes_straight_to_the_app_and_a_forged_one_is_refused(
    tmp_path, backend, redis_server
):
    from hqm.proto.replay_token import sign

    key = tmp_path / "replay.key"
    key.write_text("k3y-of-the-passthrough-test-32-bytes\n")
    hqm = proxy(backend.address, "--redis", redis_server.url, "--replay-key-file", str(key))
    try:
        rid, request_of = "0123456789abcdef0123456789abcdef", {"method": b"POST", "target": b"/r"}
        token = sign(
            b"k3y-of-the-passthrough-test-32-bytes", rid, time.time(), **request_of, body=b"x"
        )
        passed = request(hqm.port, b"POST", b"/r", [(b"Host", b"a"), (b"HQM-Replay", token)], b"x")
        assert passed.status == 200  # the app's own answer: not queued again
        (seen,) = backend.seen
        assert seen.header(b"hqm-replay") is None  # stripped before the app
        forged = sign(b"other-key", rid, time.time(), **request_of, body=b"x")
        for value in (forged, b"v1.garbage", token.replace(b"v2.0", b"v2.1")):
            refused = request(hqm.port, b"POST", b"/r", [(b"Host", b"a"), (b"HQM-Replay", value)])
            assert refused.status == 403 and "HQM-Replay refused" in refused.json()["error"]
        assert backend.count() == 1
        # never queued: a worker's replay queued again would loop
        entries = command(redis_server.port, "XRANGE", "hqm:{default}:stream", "-", "+")
        assert entries == b"*0\r\n"
    finally:
        hqm.terminate()


def test_a_request_on_a_route_queue_is_read_and_cancelled_through_its_location(
    tmp_path, backend, redis_server
):
    routes = config(
        tmp_path, '[[routes]]\nname = "reports"\npath = "/reports/*"\nqueue = "reports"\n'
    )
    hqm = proxy(backend.address, "--config", routes, "--redis", redis_server.url)
    try:
        first = request(hqm.port, b"POST", b"/reports/a", [(b"Host", b"a")], b"1").json()
        second = request(hqm.port, b"POST", b"/reports/b", [(b"Host", b"a")], b"2").json()
        location = first["location"].encode()
        assert request(hqm.port, b"GET", location, [(b"Host", b"a")]).json()["status"] == "queued"
        cancelled = request(hqm.port, b"DELETE", second["location"].encode(), [(b"Host", b"a")])
        assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
        assert command(redis_server.port, "XLEN", "hqm:{reports}:stream") == b":1\r\n"
        worker = HqmProcess(
            "worker",
            "--redis",
            redis_server.url,
            "--upstream",
            backend.address,
            "--queue",
            "reports",
            "--burst",
            "--admin",
            "off",
        )
        assert worker.proc.wait(60) == 0
        done = request(hqm.port, b"GET", location, [(b"Host", b"a")])
        assert done.status == 200 and done.body == b"you asked for /reports/a"
        assert [s.target for s in backend.seen] == [b"/reports/a"]
    finally:
        hqm.terminate()


class ClosesKeptConnections:
    """An app that answers the first request of each connection, then reads the next one
    and closes without answering (a keep-alive connection it had given up on)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        app = h11.Connection(h11.SERVER)
        with conn:
            answered = False
            while True:
                event = app.next_event()
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    if not data:
                        return
                    app.receive_data(data)
                elif isinstance(event, h11.Request):
                    self.requests += 1
                    if answered:
                        return  # closes: the request never reaches the app's code
                elif isinstance(event, h11.EndOfMessage):
                    body = b"fresh"
                    headers = [(b"Content-Length", b"%d" % len(body))]
                    conn.sendall(app.send(h11.Response(status_code=200, headers=headers)))
                    conn.sendall(app.send(h11.Data(data=body)) + app.send(h11.EndOfMessage()))
                    app.start_next_cycle()
                    answered = True

    def close(self) -> None:
        self.sock.close()


def test_a_kept_connection_the_app_closed_is_retried_once_for_a_bodyless_request(tmp_path):
    app = ClosesKeptConnections()
    routes = config(tmp_path, '[[routes]]\nname = "all"\naction = "pass"\n')
    hqm = proxy(f"127.0.0.1:{app.port}", "--config", routes)
    try:
        for _ in range(2):  # the second goes out on the kept connection first
            answer = request(hqm.port, b"GET", b"/", [(b"Host", b"a")])
            assert (answer.status, answer.body) == (200, b"fresh")
        assert app.requests == 3  # the first, the one the app dropped, its retry
    finally:
        hqm.terminate()
        app.close()


def test_a_pass_route_with_a_slow_app_answers_504(tmp_path, backend):
    release = threading.Event()
    backend.respond = lambda seen: (release.wait(30), Answer(200, [], b"late"))[1]
    routes = config(tmp_path, '[[routes]]\nname = "slow"\naction = "pass"\ntimeout = 0.2\n')
    hqm = proxy(backend.address, "--config", routes)
    try:
        answer = request(hqm.port, b"GET", b"/", [(b"Host", b"a")])
        assert answer.status == 504 and "no answer from the app" in answer.json()["error"]
    finally:
        release.set()
        hqm.terminate()
