"""Real parts for tests: a raw-socket HTTP backend, hqm processes, a raw HTTP client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

Headers = list[tuple[bytes, bytes]]
DEADLINE_S = 20.0


@dataclass(frozen=True)
class Seen:
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    http_version: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    reason: bytes = b""


def echo_target(seen: Seen) -> Answer:
    return Answer(200, [(b"Content-Type", b"text/plain")], b"you asked for " + seen.target)


class Backend:
    """An HTTP/1.1 app on 127.0.0.1 that records every request it gets (h11-parsed).

    ``respond`` runs in the connection's thread and may block (to hold a request).
    ``port`` 0 picks a free port; a fixed one brings an app up where one was down.
    """

    def __init__(self, respond: Callable[[Seen], Answer] = echo_target, port: int = 0) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", port), backlog=512)
        self.port = self._sock.getsockname()[1]
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        request: h11.Request | None = None
        body: list[bytes] = []
        with conn:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = conn.recv(1 << 16)
                    except OSError:
                        return
                    h.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request, body = event, []
                elif isinstance(event, h11.Data):
                    body.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    seen = Seen(
                        request.method,
                        request.target,
                        list(request.headers.raw_items()),
                        b"".join(body),
                        request.http_version,
                    )
                    with self._lock:
                        self.seen.append(seen)
                        self.in_flight += 1
                        self.peak = max(self.peak, self.in_flight)
                    try:
                        answer = self.respond(seen)
                    finally:
                        with self._lock:
                            self.in_flight -= 1
                    out = h.send(
                        h11.Response(
                            status_code=answer.status, headers=answer.headers, reason=answer.reason
                        )
                    )
                    if answer.body and request.method != b"HEAD":
                        out += h.send(h11.Data(data=answer.body))
                    out += h.send(h11.EndOfMessage())
                    try:
                        conn.sendall(out)
                    except OSError:
                        return
                    if h.our_state is h11.MUST_CLOSE or h.their_state is h11.MUST_CLOSE:
                        return
                    h.start_next_cycle()
                else:  # ConnectionClosed or PAUSED
                    return

    def count(self, predicate: Callable[[Seen], bool] = lambda s: True) -> int:
        with self._lock:
            return sum(1 for s in self.seen if predicate(s))

    def close(self) -> None:
        self._closing = True
        self._sock.close()


class HqmProcess:
    """``python -m hqm ...`` as a child process; readiness read from its JSON log."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.info: dict = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hqm", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") in ("listening", "worker started"):
                self.info = record
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = DEADLINE_S) -> HqmProcess:
        if not self._ready.wait(timeout) or not self.info:
            self.proc.kill()
            raise RuntimeError("hqm did not start:\n" + "".join(self.lines))
        return self

    def _port(self, key: str) -> int:
        return int(self.info[key].rsplit(":", 1)[1])

    @property
    def port(self) -> int:
        return self._port("listen")

    @property
    def admin_port(self) -> int:
        return self._port("admin")

    def terminate(self, timeout: float = DEADLINE_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEADLINE_S)

    def log(self) -> str:
        return "".join(self.lines)


def proxy(upstream: str, *extra: str, env: dict[str, str] | None = None) -> HqmProcess:
    args = ["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", upstream]
    return HqmProcess(*args, *extra, env=env).wait_ready()


def run_hqm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``hqm ARGS`` to its end, as a shell runs it, with no HQM_* or OPENHQM_* setting of
    the host's but ``env``'s."""
    own = {k: v for k, v in os.environ.items() if not k.startswith(("HQM_", "OPENHQM_"))}
    return subprocess.run(
        [sys.executable, "-m", "hqm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**own, **(env or {})},
    )


@dataclass(frozen=True)
class Response:
    status: int
    headers: Headers
    body: bytes
    reason: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> dict:
        return json.loads(self.body)


class RawClient:
    """One client connection: send raw bytes, read h11-parsed responses."""

    def __init__(self, port: int, timeout: float = DEADLINE_S) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._h = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
        self._pending: list[bytes] = []

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def expect(self, method: bytes = b"GET") -> None:
        """Tell the parser a request with ``method`` was sent (raw bytes bypass h11)."""
        self._pending.append(method)

    def read_response(self) -> Response:
        """Next final response; raises ConnectionError on a close without one."""
        method = self._pending.pop(0) if self._pending else b"GET"
        if self._h.our_state is h11.IDLE:
            self._h.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"x")]))
            self._h.send(h11.EndOfMessage())
        response: h11.Response | None = None
        body: list[bytes] = []
        while True:
            event = self._h.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(1 << 16)
                self._h.receive_data(data)
                if not data and response is None:
                    raise ConnectionError("closed without a response")
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                if self._h.our_state is h11.DONE and self._h.their_state is h11.DONE:
                    self._h.start_next_cycle()
                return Response(
                    response.status_code,
                    list(response.headers.raw_items()),
                    b"".join(body),
                    response.reason,
                )
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed")

    def read_raw(self, size: int = 1 << 16) -> bytes:
        return self.sock.recv(size)

    def close(self) -> None:
        self.sock.close()


def build_request(
    method: bytes, target: bytes, headers: Headers | None = None, body: bytes = b""
) -> bytes:
    headers = list(headers or [])
    if not any(k.lower() == b"host" for k, _ in headers):
        headers.insert(0, (b"Host", b"test"))
    if body and not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers):
        headers.append((b"Content-Length", str(len(body)).encode()))
    head = b"%s %s HTTP/1.1\r\n" % (method, target)
    head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in headers)
    return head + b"\r\n" + body


def request(
    port: int,
    method: bytes,
    target: bytes,
    headers: Headers | None = None,
    body: bytes = b"",
) -> Response:
    client = RawClient(port)
    try:
        client.send(build_request(method, target, headers, body))
        client.expect(method)
        return client.read_response()
    finally:
        client.close()


def poll_result(port: int, request_id: str, timeout: float = DEADLINE_S) -> Response:
    """GET the result until it is no longer 202; a deadline, not a sleep, bounds it."""
    deadline = time.monotonic() + timeout
    while True:
        response = request(port, b"GET", b"/_hqm/requests/" + request_id.encode())
        if response.status != 202 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class HandClock:
    """A clock function the test moves by hand (``clock.now += 1.5``)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
