"""The options that matter most, shown by behaviour over real sockets, a real app and a
real redis-server: each used to be silently ignored or misnamed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from hqm.queue.keys import QueueKeys
from tests.redis_server import command, free_port, redis_server
from tests.support import (
    Answer,
    Backend,
    HqmProcess,
    poll_result,
    proxy,
    request,
)

__all__ = ["redis_server"]  # the fixture, imported for pytest


def _xlen(port: int, queue: str = "default") -> int:
    reply = command(port, "XLEN", QueueKeys(queue).stream)
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


def _proxy_with_env(upstream: str, env: dict[str, str], *args: str) -> HqmProcess:
    argv = ["proxy", "--listen", "127.0.0.1:0", "--admin", "off", "--upstream", upstream]
    return HqmProcess(*argv, *args, env=env).wait_ready()


@pytest.mark.parametrize("env_name", ["HQM_PROXY_REDIS", "HQM_REDIS"])
def test_redis_from_the_environment_makes_the_proxy_durable(redis_server, backend, env_name):
    hqm = _proxy_with_env(backend.address, {env_name: redis_server.url})
    try:
        assert hqm.info["queue"] == "redis"
        for i in range(3):
            assert request(hqm.port, b"POST", b"/o/%d" % i, body=b"x").status == 202
        assert _xlen(redis_server.port) == 3  # stored in Redis; no worker runs
        assert backend.count() == 0
    finally:
        hqm.terminate()


class Held:
    """An app that holds every request until released (or a generous deadline)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.backend = Backend(self.respond)

    def respond(self, seen) -> Answer:
        self.release.wait(30)
        return Answer(200, [], b"late")

    def close(self) -> None:
        self.release.set()
        self.backend.close()


@pytest.fixture
def held():
    app = Held()
    yield app
    app.close()


def test_wait_from_the_environment_holds_about_that_long(held):
    """HQM_PROXY_WAIT=1: past the 1 s hold the client gets the async answer. With the
    30 s default the client's 10 s socket timeout would fire first."""
    hqm = _proxy_with_env(held.backend.address, {"HQM_PROXY_WAIT": "1"}, "--mode", "wait")
    try:
        client = socket.create_connection(("127.0.0.1", hqm.port), timeout=10)
        with client:
            client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            head = client.recv(65536)
        assert head.startswith(b"HTTP/1.1 202 ")
        assert b"/_hqm/requests/" in head
        assert held.backend.count() == 1  # it reached the app and is still there
    finally:
        held.release.set()
        hqm.terminate()


def test_read_timeout_applies_to_the_embedded_worker(held):
    """--read-timeout 0.3: the app holding a POST makes a recorded timeout (a 502
    result: a POST that may have been processed is not retried), not a stored 200."""
    hqm = proxy(held.backend.address, "--read-timeout", "0.3")
    try:
        accepted = request(hqm.port, b"POST", b"/report", body=b"x")
        assert accepted.status == 202
        result = poll_result(hqm.port, accepted.json()["id"])
        assert result.status == 502, result
        assert "within 0.3 s" in result.json()["error"]
    finally:
        held.release.set()
        hqm.terminate()


def test_no_forwarded_headers_on_the_embedded_proxy_reaches_the_app(backend):
    hqm = proxy(backend.address, "--no-forwarded-headers")
    try:
        accepted = request(hqm.port, b"GET", b"/f", [(b"X-Forwarded-Proto", b"gopher")])
        assert poll_result(hqm.port, accepted.json()["id"]).status == 200
        seen = backend.seen[0]
        assert seen.header(b"x-forwarded-for") is None
        assert seen.header(b"x-forwarded-host") is None
        assert seen.header(b"x-forwarded-proto") == b"gopher"  # untouched, as sent
    finally:
        hqm.terminate()


def test_forwarded_headers_by_default_trust_nothing_from_the_client(backend):
    hqm = proxy(backend.address)
    try:
        spoofed = [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"evil.example")]
        accepted = request(hqm.port, b"GET", b"/f", spoofed)
        assert poll_result(hqm.port, accepted.json()["id"]).status == 200
        seen = backend.seen[0]
        assert seen.header(b"x-forwarded-proto") == b"http"
        assert seen.header(b"x-forwarded-host") == b"test"  # the request's own Host
        assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
    finally:
        hqm.terminate()


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hqm", *args], capture_output=True, text=True, timeout=timeout
    )


def test_burst_worker_gives_up_on_an_unreachable_queue():
    done = _run(
        "worker",
        "--burst",
        "--burst-timeout",
        "1",
        "--admin",
        "off",
        "--redis",
        f"redis://127.0.0.1:{free_port()}/0",
        "--upstream",
        "127.0.0.1:9",
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: queue unreachable for 1 s in burst mode: "), done.stderr
    assert "Traceback" not in done.stderr


def test_admin_port_in_use_names_the_flag_and_off_disables_it(redis_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["worker", "--burst", "--redis", redis_server.url, "--upstream", "127.0.0.1:9"]
        done = _run(*args, "--admin", f"127.0.0.1:{port}")
        assert done.returncode == 1
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: --admin 127.0.0.1:{port}: cannot listen: "), last
        assert "--admin off" in last
        done = _run(*args, "--admin", "off")
        assert done.returncode == 0, done.stderr
        started = [
            json.loads(line) for line in done.stderr.splitlines() if "worker started" in line
        ]
        assert started and started[0]["admin"] == "off"


def test_two_workers_on_one_host_with_their_own_admin_ports(redis_server, backend):
    """What the README tells users running several workers on one host."""
    ports = [free_port(), free_port()]
    workers = [
        HqmProcess(
            "worker",
            "--redis",
            redis_server.url,
            "--upstream",
            backend.address,
            "--admin",
            f"127.0.0.1:{port}",
        ).wait_ready()
        for port in ports
    ]
    try:
        assert [w.admin_port for w in workers] == ports
        for port in ports:
            assert request(port, b"GET", b"/healthz").body == b"ok\n"
    finally:
        for w in workers:
            w.terminate()
