"""The smaller holes of the trust boundary (issue 17, item 7), end to end: real proxy,
worker and redis-server processes, real sockets.

- A wait-mode client still held when --drain-timeout runs out gets the async answer
  (202 + Location + its id) before the close, and that id's result is readable later.
- /readyz fails while Redis refuses writes (OOM at maxmemory, READONLY replica, NOAUTH,
  a key of the wrong type), not only when it is unreachable, and comes back by itself,
  without client traffic, once Redis takes writes again.
- A write Redis refused gets "queue full" (OOM) or "queue refused the write", never
  "queue unavailable" (which means: perhaps stored); nothing of it is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis

from hqm.queue.keys import QueueKeys
from tests.redis_server import RedisServer, redis_server
from tests.support import (
    Backend,
    RawClient,
    build_request,
    poll_result,
    request,
    wait_until,
)
from tests.test_worker_redis import Spawner, spawn

__all__ = ["redis_server", "spawn"]  # the fixtures, imported for pytest

KEYS = QueueKeys("default")


def _admin(server: RedisServer, password: str | None = None) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=password, protocol=2)


def _ready(port: int) -> int:
    return request(port, b"GET", b"/readyz").status


def test_held_wait_clients_get_the_async_answer_at_drain_timeout(
    redis_server: RedisServer, spawn: Spawner
) -> None:
    app = Backend()  # no worker yet: nothing answers the held clients
    try:
        hqm = spawn.proxy(app.address, redis_server.url, "--drain-timeout", "2")
        clients = []
        for n in range(3):
            client = RawClient(hqm.port)
            target = b"/held/%d" % n
            client.send(build_request(b"POST", target, [(b"Prefer", b"wait=30")], b"b%d" % n))
            client.expect(b"POST")
            clients.append(client)
        db = _admin(redis_server)
        assert wait_until(lambda: db.xlen(KEYS.stream) == 3)  # all stored, all held
        hqm.proc.send_signal(15)
        answers = [client.read_response() for client in clients]
        for client in clients:
            assert client.read_raw() == b""  # then closed
            client.close()
        assert hqm.proc.wait(20) == 0
        ids = set()
        for answer in answers:
            assert answer.status == 202, answer
            body = answer.json()
            assert body["status"] == "queued"
            assert answer.header(b"Location") == b"/_hqm/requests/" + body["id"].encode()
            assert body["location"] == answer.header(b"Location").decode()
            assert answer.header(b"HQM-Request-Id") == body["id"].encode()
            assert answer.header(b"Preference-Applied") is None  # the wait was not honoured
            ids.add(body["id"])
        assert len(ids) == 3
        log = [json.loads(line) for line in hqm.lines if line.startswith("{")]
        assert log[-1]["msg"] == "stopped"
        # The ids are worth something: a worker runs them, another proxy serves results.
        spawn.worker(redis_server.url, app.address)
        reader = spawn.proxy(app.address, redis_server.url)
        for request_id in ids:
            result = poll_result(reader.port, request_id)
            assert result.status == 200
            assert result.body.startswith(b"you asked for /held/")
        assert app.count() == 3
    finally:
        app.close()


# --- readiness and refused writes -----------------------------------------------------


class Fault:
    """One way Redis refuses writes while it answers, and how it is mended."""

    def __init__(
        self,
        name: str,
        error: str,
        brk: Callable[[RedisServer], None],
        mend: Callable[[RedisServer], None],
        *,
        keeps_data: bool = True,
    ) -> None:
        self.name, self.error, self.brk, self.mend = name, error, brk, mend
        #: Mending keeps what Redis held (the stream shows whether anything was added).
        self.keeps_data = keeps_data

    def __repr__(self) -> str:
        return self.name


def _oom(server: RedisServer) -> None:
    _admin(server).config_set("maxmemory", "1")  # below what Redis uses: every write OOM


def _no_oom(server: RedisServer) -> None:
    _admin(server).config_set("maxmemory", "0")


def _password(server: RedisServer) -> None:
    db = _admin(server)
    db.config_set("requirepass", "s3cret")
    db.client_kill_filter(_type="normal", skipme=True)  # the proxy's connections: NOAUTH


def _no_password(server: RedisServer) -> None:
    _admin(server, "s3cret").config_set("requirepass", "")


def _wrong_type(server: RedisServer) -> None:
    db = _admin(server)
    db.delete(KEYS.stream)
    db.set(KEYS.stream, b"not a stream")  # WRONGTYPE at the enqueue script's XLEN


def _right_type(server: RedisServer) -> None:
    _admin(server).delete(KEYS.stream)


def _primary(server: RedisServer) -> None:
    _admin(server).replicaof("NO", "ONE")


FAULTS = [
    Fault("oom", "queue full", _oom, _no_oom),
    Fault("noauth", "queue refused the write", _password, _no_password),
    Fault("wrongtype", "queue refused the write", _wrong_type, _right_type, keeps_data=False),
]


def _check_refusal_and_recovery(server: RedisServer, spawn: Spawner, fault: Fault) -> None:
    app = Backend()
    try:
        hqm = spawn.proxy(app.address, server.url)
        assert _ready(hqm.admin_port) == 200
        assert request(hqm.port, b"POST", b"/before", body=b"x").status == 202
        stored = _admin(server).xlen(KEYS.stream)
        fault.brk(server)
        # No client traffic: the write probe alone takes the pod out of rotation.
        assert wait_until(lambda: _ready(hqm.admin_port) == 503)
        for mode in (b"respond-async", b"wait=5"):
            refused = request(hqm.port, b"POST", b"/during", [(b"Prefer", mode)], b"y")
            assert refused.status == 503, refused
            assert refused.json() == {"error": fault.error, "retry_after": 1}
            assert refused.header(b"Retry-After") == b"1"
        assert _ready(hqm.admin_port) == 503
        fault.mend(server)
        if fault.keeps_data:
            assert _admin(server).xlen(KEYS.stream) == stored  # nothing was stored
        # Again without any client traffic: /readyz comes back by itself.
        assert wait_until(lambda: _ready(hqm.admin_port) == 200)
        assert request(hqm.port, b"POST", b"/after", body=b"z").status == 202
        metrics = request(hqm.admin_port, b"GET", b"/metrics").body.decode()
        counted = [line for line in metrics.splitlines() if "outcome=" in line]
        maybe = [line for line in counted if 'outcome="unavailable"' in line]
        assert all(line.endswith(" 0.0") for line in maybe), counted  # never "perhaps stored"
        assert any("not ready: the queue takes no write" in line for line in hqm.lines)
        assert any("ready again" in line for line in hqm.lines)
    finally:
        app.close()


@pytest.mark.parametrize("fault", FAULTS, ids=repr)
def test_readyz_follows_refused_writes_and_the_client_is_told_nothing_was_stored(
    redis_server: RedisServer, spawn: Spawner, fault: Fault
) -> None:
    _check_refusal_and_recovery(redis_server, spawn, fault)


def test_readyz_fails_on_a_read_only_replica_and_recovers(
    redis_server: RedisServer, spawn: Spawner
) -> None:
    master = RedisServer().start()
    try:

        def replica(server: RedisServer) -> None:
            _admin(server).replicaof("127.0.0.1", master.port)

        fault = Fault("readonly", "queue refused the write", replica, _primary, keeps_data=False)
        _check_refusal_and_recovery(redis_server, spawn, fault)
    finally:
        master.cleanup()
