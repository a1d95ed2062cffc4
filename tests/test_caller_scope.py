"""The caller (docs/architecture.md §13): an Idempotency-Key is its caller's (Stripe's
model), and a route with ``result_access = "caller"`` shows a result to its submitter
only. Unit checks of hqm.ingress.caller and the route keys; Alice and Mallory end to
end through real hqm processes, over a real redis-server and the embedded queue.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hqm.config.build import proxy_from
from hqm.config.options import ConfigError
from hqm.ingress.caller import CallerScope, digest, owner, owns
from hqm.proto.events import RequestHead
from hqm.queue.keys import QueueKeys
from tests.redis_server import redis_server
from tests.support import (
    DEADLINE_S,
    Answer,
    Backend,
    HqmProcess,
    Response,
    Seen,
    proxy,
    request,
    wait_until,
)
from tests.test_worker_redis import STREAM, Spawner, admin_client, spawn

__all__ = ["redis_server", "spawn"]  # fixtures, imported for pytest

ALICE = [(b"Authorization", b"Bearer alice-secret-token")]
MALLORY = [(b"Authorization", b"Bearer mallory-token")]
KEY = [(b"Idempotency-Key", b'"order-7"')]
WAIT = [(b"Prefer", b"wait=5")]
REQUESTS = b"/_hqm/requests/"


def whose(seen: Seen) -> Answer:
    """The app answers with what it was sent: whose request it got."""
    who = seen.header(b"authorization") or b"anonymous"
    return Answer(200, [(b"Content-Type", b"text/plain")], b"paid for " + who)


@pytest.fixture
def app() -> Iterator[Backend]:
    backend = Backend(whose)
    yield backend
    backend.close()


def head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", tuple(headers), b"1.1")


# --- units ----------------------------------------------------------------------


def test_scopes_parse_and_bad_ones_are_refused() -> None:
    assert CallerScope.parse("authorization") == CallerScope()
    assert CallerScope.parse("client") == CallerScope("client")
    assert CallerScope.parse("header:X-Api-Key") == CallerScope("header", b"x-api-key")
    assert str(CallerScope.parse("header:X-Api-Key")) == "header:x-api-key"
    for bad in ("", "header", "header:", "header:a b", "cookie:x", "client:x", "Authorization"):
        with pytest.raises(ValueError):
            CallerScope.parse(bad)


def test_the_digest_tells_callers_apart_and_keeps_no_credential() -> None:
    scope = CallerScope()
    alice = digest(scope, head(*ALICE), "10.0.0.1")
    assert alice == digest(scope, head((b"AUTHORIZATION", ALICE[0][1])), "10.0.0.2")
    assert alice != digest(scope, head(*MALLORY), "10.0.0.1")
    assert b"alice" not in bytes.fromhex(alice) and "alice" not in owner(scope, head(*ALICE), "")
    # absent: the empty credential, one caller for every anonymous request
    assert digest(scope, head(), "a") == digest(scope, head((b"X", b"y")), "b")
    assert digest(scope, head(), "") == digest(scope, head((b"Authorization", b"")), "")
    # a second Authorization line makes another caller, not the same as the first alone
    assert digest(scope, head(*ALICE, *MALLORY), "") != alice
    by_header = CallerScope.parse("header:X-Api-Key")
    assert digest(by_header, head((b"x-api-key", b"k1"), *ALICE), "") == digest(
        by_header, head((b"X-Api-Key", b"k1"), *MALLORY), ""
    )
    by_client = CallerScope("client")
    assert digest(by_client, head(*ALICE), "10.0.0.1") != digest(by_client, head(*ALICE), "::1")
    # the same value under another scope is another caller
    assert digest(by_header, head((b"X-Api-Key", b"v")), "") != digest(
        CallerScope.parse("header:X-Other"), head((b"X-Other", b"v")), ""
    )


def test_owns_is_the_submitter_only_and_fails_closed() -> None:
    mine = owner(CallerScope(), head(*ALICE), "10.0.0.1")
    assert owns(mine, head(*ALICE), "10.0.0.9")
    assert not owns(mine, head(*MALLORY), "10.0.0.1")
    assert not owns(mine, head(), "10.0.0.1")
    assert owns("", head(*MALLORY), "x")  # no owner: the id is the capability
    for garbage in ("x", "/", "cookie:a/" + "0" * 64, mine + "0", "nonsense/" + mine[-64:]):
        assert not owns(garbage, head(*ALICE), "10.0.0.1")


def _routes(tmp_path: Path, text: str):
    config = tmp_path / "hqm.toml"
    config.write_text(text)
    return proxy_from({"upstream": "127.0.0.1:9", "config": str(config)}, {}).routes


def test_route_keys_are_read_and_checked(tmp_path: Path) -> None:
    table = _routes(
        tmp_path,
        '[[routes]]\nname = "a"\npath = "/a/*"\ncaller = "header:X-Api-Key"\n'
        'result_access = "caller"\n[[routes]]\nname = "b"\npath = "/b"\n',
    )
    first, second = table.routes
    assert (first.caller, first.result_access) == (CallerScope("header", b"x-api-key"), "caller")
    assert (second.caller, second.result_access) == (CallerScope(), "id")
    for bad, named in (
        ('caller = "cookie:x"', "caller"),
        ('result_access = "anyone"', "result_access"),
        ('action = "pass"\nresult_access = "caller"', "result_access"),
        ("caller = 3", "caller"),
    ):
        with pytest.raises(ConfigError) as caught:
            _routes(tmp_path, f'[[routes]]\nname = "r"\n{bad}\n')
        assert f"(r) {named}:" in str(caught.value)


# --- Alice and Mallory, end to end ------------------------------------------------


def _alice_then_mallory(hqm: HqmProcess, app: Backend) -> None:
    alice = request(hqm.port, b"POST", b"/pay", [*ALICE, *KEY, *WAIT], b"10 EUR")
    assert (alice.status, alice.body) == (200, b"paid for Bearer alice-secret-token")
    mallory = request(hqm.port, b"POST", b"/pay", [*MALLORY, *KEY, *WAIT], b"10 EUR")
    # Mallory's request is her own: it reaches the app and she gets her own answer
    assert (mallory.status, mallory.body) == (200, b"paid for Bearer mallory-token")
    assert mallory.header(b"HQM-Request-Id") != alice.header(b"HQM-Request-Id")
    assert b"alice" not in mallory.body + b"".join(v for _, v in mallory.headers)
    assert app.count(lambda seen: seen.target == b"/pay") == 2
    # an anonymous caller is a third one (all anonymous callers share one scope)
    anonymous = request(hqm.port, b"POST", b"/pay", [*KEY, *WAIT], b"10 EUR")
    assert (anonymous.status, anonymous.body) == (200, b"paid for anonymous")
    assert app.count(lambda seen: seen.target == b"/pay") == 3
    # the same caller's resend is still the first request, answered as it was
    again = request(hqm.port, b"POST", b"/pay", [*ALICE, *KEY, *WAIT], b"10 EUR")
    assert again.body == alice.body
    assert again.header(b"HQM-Request-Id") == alice.header(b"HQM-Request-Id")
    assert app.count(lambda seen: seen.target == b"/pay") == 3
    # and the same caller's other request under the key is still a conflict ...
    other = request(hqm.port, b"POST", b"/pay", [*ALICE, *KEY, *WAIT], b"99 EUR")
    assert other.status == 422 and "id" not in other.json()
    # ... while another caller's different body under that key is a request of hers
    fresh = [(b"Authorization", b"Bearer eve")]
    eve = request(hqm.port, b"POST", b"/pay", [*fresh, *KEY, *WAIT], b"99 EUR")
    assert (eve.status, eve.body) == (200, b"paid for Bearer eve")
    assert app.count(lambda seen: seen.target == b"/pay") == 4


def test_alice_and_mallory_over_redis(redis_server, app: Backend, spawn: Spawner) -> None:
    hqm = spawn.proxy(app.address, redis_server.url)
    spawn.worker(redis_server.url, app.address)
    _alice_then_mallory(hqm, app)


def test_alice_and_mallory_on_the_embedded_queue(app: Backend) -> None:
    hqm = proxy(app.address)
    try:
        _alice_then_mallory(hqm, app)
    finally:
        hqm.terminate()


def test_a_route_names_its_own_caller(tmp_path: Path, app: Backend) -> None:
    config = tmp_path / "hqm.toml"
    config.write_text('[[routes]]\nname = "api"\npath = "/api/*"\ncaller = "header:X-Api-Key"\n')
    hqm = proxy(app.address, "--config", str(config))
    try:
        key_a, key_b = [(b"X-Api-Key", b"tenant-a")], [(b"X-Api-Key", b"tenant-b")]
        # one tenant, two Authorization values: one caller on this route
        first = request(hqm.port, b"PUT", b"/api/x", [*key_a, *ALICE, *KEY], b"b")
        second = request(hqm.port, b"PUT", b"/api/x", [*key_a, *MALLORY, *KEY], b"b")
        assert first.json()["id"] == second.json()["id"]
        third = request(hqm.port, b"PUT", b"/api/x", [*key_b, *ALICE, *KEY], b"b")
        assert third.status == 202 and third.json()["id"] != first.json()["id"]
    finally:
        hqm.terminate()


# --- results readable by their caller only -------------------------------------------


def _get(port: int, method: bytes, request_id: str, headers: list) -> Response:
    return request(port, method, REQUESTS + request_id.encode(), headers)


def _done(port: int, request_id: str, headers: list) -> Response:
    """GET as ``headers`` until no longer 202 (a deadline bounds it)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = _get(port, b"GET", request_id, headers)
        if response.status != 202 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def _as_unknown(port: int, response: Response, request_id: str, method: bytes) -> None:
    """``response`` is exactly what an unknown id gets."""
    unknown = uuid.uuid4().hex
    expected = _get(port, method, unknown, [])
    assert response.status == expected.status == 404
    assert response.body.replace(request_id.encode(), unknown.encode()) == expected.body


PRIVATE = '[[routes]]\nname = "private"\npath = "/private/*"\nresult_access = "caller"\n'


def test_a_result_bound_to_its_caller_over_redis(
    tmp_path: Path, redis_server, app: Backend, spawn: Spawner
) -> None:
    config = tmp_path / "hqm.toml"
    config.write_text(PRIVATE)
    hqm = spawn.proxy(app.address, redis_server.url, "--config", str(config))
    accepted = request(hqm.port, b"POST", b"/private/x", ALICE, b"payload")
    assert accepted.status == 202
    rid = accepted.json()["id"]
    # queued, no worker yet: Mallory, holding the id, learns nothing and cancels nothing
    for method in (b"GET", b"HEAD", b"DELETE"):
        _as_unknown(hqm.port, _get(hqm.port, method, rid, MALLORY), rid, method)
        _as_unknown(hqm.port, _get(hqm.port, method, rid, []), rid, method)
    for path in (b"/api/v1/status/", b"/api/v1/response/"):
        seen = request(hqm.port, b"GET", path + str(uuid.UUID(hex=rid)).encode(), MALLORY)
        assert (seen.status, seen.json()) == (404, {"detail": "Request not found or expired"})
    pending = _get(hqm.port, b"GET", rid, ALICE)
    assert (pending.status, pending.json()["status"]) == (202, "queued")  # not cancelled
    admin = admin_client(redis_server.url)
    assert admin.xlen(STREAM) == 1
    state = admin.get(QueueKeys("default").state(rid))
    assert b"alice" not in state and b'"o":"authorization/' in state  # a digest only
    spawn.worker(redis_server.url, app.address)
    done = _done(hqm.port, rid, ALICE)
    assert (done.status, done.body) == (200, b"paid for Bearer alice-secret-token")
    assert _get(hqm.port, b"HEAD", rid, ALICE).status == 200
    status = request(hqm.port, b"GET", b"/api/v1/status/" + rid.encode(), ALICE)
    assert (status.status, status.json()["status"]) == (200, "COMPLETED")
    for method in (b"GET", b"HEAD", b"DELETE"):
        _as_unknown(hqm.port, _get(hqm.port, method, rid, MALLORY), rid, method)
    assert app.count() == 1
    # Alice may still cancel her own (a fresh one, before any worker takes it: delayed)
    later = request(hqm.port, b"POST", b"/private/y", [*ALICE, (b"HQM-Delay", b"60")], b"p")
    later_id = later.json()["id"]
    _as_unknown(hqm.port, _get(hqm.port, b"DELETE", later_id, MALLORY), later_id, b"DELETE")
    assert _get(hqm.port, b"DELETE", later_id, ALICE).status == 200


def test_a_result_bound_to_its_caller_on_the_embedded_queue(tmp_path: Path, app: Backend):
    config = tmp_path / "hqm.toml"
    config.write_text(PRIVATE)
    hqm = proxy(app.address, "--config", str(config))
    try:
        delayed = request(hqm.port, b"POST", b"/private/x", [*ALICE, (b"HQM-Delay", b"1")], b"p")
        rid = delayed.json()["id"]
        for method in (b"GET", b"HEAD", b"DELETE"):
            _as_unknown(hqm.port, _get(hqm.port, method, rid, MALLORY), rid, method)
        done = _done(hqm.port, rid, ALICE)  # Mallory's DELETE cancelled nothing
        assert (done.status, done.body) == (200, b"paid for Bearer alice-secret-token")
        for method in (b"GET", b"HEAD", b"DELETE"):
            _as_unknown(hqm.port, _get(hqm.port, method, rid, MALLORY), rid, method)
        # without the option, as before: the id is the capability
        public = request(hqm.port, b"POST", b"/public", ALICE, b"p").json()["id"]
        assert wait_until(lambda: _get(hqm.port, b"GET", public, MALLORY).status == 200)
        assert _get(hqm.port, b"GET", public, MALLORY).body == b"paid for Bearer alice-secret-token"
    finally:
        hqm.terminate()
