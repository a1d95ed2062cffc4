"""The original OpenHQM's API on ``hqm proxy``: real redis-server, real proxy and worker
processes, real apps on sockets.

The expected shapes are the original's pydantic models, fok666/openhqm
``src/openhqm/api/models.py`` (``SubmitResponse``, ``StatusResponse``,
``ResultResponse``, ``RequestStatus``), written out field by field below; its routes
(``src/openhqm/api/routes.py``) answer 202 while pending and 404 for an unknown id.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from hqm.ingress.openhqm_api import STATUS_NAMES
from hqm.proto.envelope import decode_request
from hqm.queue.base import Status
from hqm.queue.keys import QueueKeys
from tests.redis_server import RedisServer
from tests.support import Answer, Backend, HqmProcess, Response, Seen, proxy, request, wait_until

#: ``RequestStatus`` of the original.
REQUEST_STATUS = {"PENDING", "PROCESSING", "COMPLETED", "FAILED", "TIMEOUT"}
#: Field -> (type, optional). ``datetime`` is ISO 8601 text as pydantic writes it.
SUBMIT_RESPONSE = {"correlation_id": (str, False), "status": (str, False)}
SUBMIT_RESPONSE["submitted_at"] = (datetime, False)
STATUS_RESPONSE = {**SUBMIT_RESPONSE, "updated_at": (datetime, False)}
RESULT_RESPONSE = {
    "correlation_id": (str, False),
    "status": (str, False),
    "result": (object, True),  # dict[str, Any] | None there; any JSON value here
    "headers": (dict, True),  # dict[str, str] | None
    "status_code": (int, True),
    "error": (str, True),
    "processing_time_ms": (int, True),
    "completed_at": (datetime, True),
}
SUBMIT = b"/api/v1/submit"
JSON = [(b"Content-Type", b"application/json")]
HOLD = threading.Event()
HOLD.set()  # held only by the test that clears it


def conforms(answer: dict, model: dict) -> None:
    """``answer`` has exactly the model's fields, each of its type (None if optional)."""
    assert set(answer) == set(model), answer
    for name, (kind, optional) in model.items():
        value = answer[name]
        if value is None:
            assert optional, f"{name} is null"
        elif kind is datetime:
            assert value.endswith("Z"), value
            assert datetime.fromisoformat(value).utcoffset() == UTC.utcoffset(None), value
        elif kind is int:
            assert isinstance(value, int) and not isinstance(value, bool), (name, value)
        else:
            assert isinstance(value, kind), (name, value)
    assert answer["status"] in REQUEST_STATUS


def the_app(seen: Seen) -> Answer:
    """Answers by the payload's ``answer``; by default echoes what it got, as JSON."""
    try:
        payload = json.loads(seen.body)
    except ValueError:
        payload = None
    kind = payload.get("answer") if isinstance(payload, dict) else None
    if kind == "array":
        return Answer(200, JSON, b"[1, 2, 3]")
    if kind == "number":
        return Answer(200, JSON, b"42")
    if kind == "text":
        return Answer(200, [(b"Content-Type", b"text/plain")], b"plain words")
    if kind == "bytes":
        return Answer(200, [(b"Content-Type", b"application/octet-stream")], b"\xff\xfebin")
    if kind == "broken":
        return Answer(500, JSON, b"{not json")
    if kind == "hold":
        HOLD.wait(20)
    echo = {
        "method": seen.method.decode(),
        "target": seen.target.decode(),
        "payload": payload,
        "headers": {name.decode(): value.decode() for name, value in seen.headers},
    }
    headers = [*JSON, (b"X-App", b"a"), (b"X-App", b"b")]
    return Answer(201, headers, json.dumps(echo).encode())


@dataclass
class Stack:
    redis: RedisServer
    app: Backend
    other: Backend
    proxy: HqmProcess
    #: A proxy of a queue no worker drains: what it queues stays queued.
    idle: HqmProcess
    worker: HqmProcess

    @property
    def port(self) -> int:
        return self.proxy.port


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    server = RedisServer().start()
    app, other = Backend(the_app), Backend(the_app)
    started: list[HqmProcess] = []
    try:
        folder: Path = tmp_path_factory.mktemp("openhqm")
        proxy_toml = folder / "proxy.toml"
        # "ghost" is an app only the proxy names: the worker dead-letters its requests.
        proxy_toml.write_text(f'[upstreams]\nother = "{other.address}"\nghost = "127.0.0.1:9"\n')
        worker_toml = folder / "worker.toml"
        worker_toml.write_text(f'[upstreams]\nother = "{other.address}"\n')
        common = ("--redis", server.url, "--config", str(proxy_toml))
        started.append(proxy(app.address, *common, "--openhqm-target", "/api/process"))
        started.append(proxy(app.address, *common, "--queue", "idle"))
        worker = HqmProcess(
            "worker",
            *("--upstream", app.address, "--redis", server.url, "--admin", "127.0.0.1:0"),
            *("--config", str(worker_toml), "--retry-base", "0.05"),
        ).wait_ready()
        started.append(worker)
        yield Stack(server, app, other, started[0], started[1], worker)
    finally:
        HOLD.set()
        for process in started:
            process.kill()
        app.close()
        other.close()
        server.cleanup()


def submit(port: int, body: dict | bytes) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(port, b"POST", SUBMIT, JSON, raw)


def get(port: int, path: str) -> Response:
    return request(port, b"GET", path.encode())


def finished(port: int, correlation_id: str) -> Response:
    """GET /api/v1/response/{id} until it is not 202 (a deadline, not a sleep)."""
    answers: list[Response] = []

    def done() -> bool:
        answers.append(get(port, f"/api/v1/response/{correlation_id}"))
        return answers[-1].status != 202

    assert wait_until(done), answers[-1].body
    return answers[-1]


def test_every_hqm_status_has_an_original_name():
    assert set(STATUS_NAMES) == set(Status)
    assert set(STATUS_NAMES.values()) <= REQUEST_STATUS


def test_submit_status_and_response_have_the_original_shapes(stack):
    payload = {"order": 7, "items": ["a", "b"], "note": "ünïcode"}
    accepted = submit(
        stack.port,
        {"payload": payload, "headers": {"X-Token": "t1"}, "metadata": {"priority": 5}},
    )
    assert accepted.status == 202, accepted.body
    conforms(accepted.json(), SUBMIT_RESPONSE)
    assert accepted.json()["status"] == "PENDING"
    correlation_id = accepted.json()["correlation_id"]
    assert str(uuid.UUID(correlation_id)) == correlation_id  # formatted as uuid4 is

    answer = finished(stack.port, correlation_id)
    assert answer.status == 200
    result = answer.json()
    conforms(result, RESULT_RESPONSE)
    assert (result["correlation_id"], result["status"]) == (correlation_id, "COMPLETED")
    assert (result["status_code"], result["error"]) == (201, None)
    assert result["processing_time_ms"] >= 0
    assert result["headers"]["X-App"] == "a, b"
    echo = result["result"]
    assert (echo["method"], echo["target"], echo["payload"]) == ("POST", "/api/process", payload)
    assert echo["headers"]["Content-Type"] == "application/json"
    assert echo["headers"]["X-Token"] == "t1"
    assert echo["headers"]["Host"] == stack.app.address  # the worker's app, as aiohttp did

    status = get(stack.port, f"/api/v1/status/{correlation_id}")
    assert status.status == 200
    conforms(status.json(), STATUS_RESPONSE)
    assert status.json()["status"] == "COMPLETED"
    times = [datetime.fromisoformat(status.json()[k]) for k in ("submitted_at", "updated_at")]
    assert times[0] <= times[1]

    # the same request on hqm's own results API: the app's answer verbatim
    verbatim = get(stack.port, "/_hqm/requests/" + uuid.UUID(correlation_id).hex)
    assert verbatim.status == 201 and verbatim.json() == echo


def test_pending_response_is_202_with_every_field(stack):
    HOLD.clear()
    try:
        correlation_id = submit(stack.port, {"payload": {"answer": "hold"}}).json()[
            "correlation_id"
        ]
        assert wait_until(lambda: stack.app.count(lambda s: b'"hold"' in s.body) >= 1)

        def processing() -> bool:
            return get(stack.port, f"/api/v1/status/{correlation_id}").json()["status"] == (
                "PROCESSING"
            )

        assert wait_until(processing)
        pending = get(stack.port, f"/api/v1/response/{correlation_id}")
        assert pending.status == 202
        conforms(pending.json(), RESULT_RESPONSE)
        assert pending.json()["status"] == "PROCESSING"
        assert [k for k, v in pending.json().items() if v is not None] == [
            "correlation_id",
            "status",
        ]
    finally:
        HOLD.set()
    assert finished(stack.port, correlation_id).json()["status"] == "COMPLETED"


def test_queued_submit_is_pending(stack):
    correlation_id = submit(stack.idle.port, {"payload": {}}).json()["correlation_id"]
    status = get(stack.idle.port, f"/api/v1/status/{correlation_id}")
    conforms(status.json(), STATUS_RESPONSE)
    assert status.json()["status"] == "PENDING"
    assert get(stack.idle.port, f"/api/v1/response/{correlation_id}").status == 202


@pytest.mark.parametrize(
    ("answer", "status_code", "result"),
    [
        ("array", 200, [1, 2, 3]),
        ("number", 200, 42),
        ("text", 200, "plain words"),
        ("bytes", 200, "\ufffd\ufffdbin"),
        ("broken", 500, "{not json"),
    ],
)
def test_any_json_value_or_text_is_the_result(stack, answer, status_code, result):
    correlation_id = submit(stack.port, {"payload": {"answer": answer}}).json()["correlation_id"]
    done = finished(stack.port, correlation_id)
    assert done.status == 200
    conforms(done.json(), RESULT_RESPONSE)
    assert done.json()["status"] == "COMPLETED"
    assert (done.json()["status_code"], done.json()["result"]) == (status_code, result)


def test_metadata_endpoint_and_method(stack):
    before = stack.app.count()
    body = {"payload": {"to": "other"}, "metadata": {"endpoint": "other", "method": "put"}}
    correlation_id = submit(stack.port, body).json()["correlation_id"]
    echo = finished(stack.port, correlation_id).json()["result"]
    assert (echo["method"], echo["target"], echo["payload"]) == ("PUT", "/", {"to": "other"})
    assert echo["headers"]["Host"] == stack.other.address
    assert stack.app.count() == before  # the default app never saw it


def test_the_record_names_the_upstream_and_an_unknown_one_is_never_queued(stack):
    client = redis.Redis.from_url(stack.redis.url)
    stream = QueueKeys("idle").stream
    queued = client.xlen(stream)
    refused = submit(stack.idle.port, {"payload": {}, "metadata": {"endpoint": "nowhere"}})
    assert refused.status == 422
    [problem] = refused.json()["detail"]
    assert problem["loc"] == ["body", "metadata", "endpoint"] and "other" in problem["msg"]
    assert client.xlen(stream) == queued
    body = {"payload": {"n": 1}, "metadata": {"endpoint": "other", "method": "PATCH"}}
    assert submit(stack.idle.port, body).status == 202
    fields = client.xrange(stream)[-1][1]
    record = decode_request(fields[b"r"])
    assert (record.upstream, record.method, record.target) == ("other", b"PATCH", b"/")
    assert record.body == b'{"n":1}' and (b"Content-Type", b"application/json") in record.headers


def test_a_request_the_worker_cannot_send_is_failed(stack):
    body = {"payload": {}, "metadata": {"endpoint": "ghost"}}
    correlation_id = submit(stack.port, body).json()["correlation_id"]
    answer = finished(stack.port, correlation_id)
    assert answer.status == 200
    conforms(answer.json(), RESULT_RESPONSE)
    assert answer.json()["status"] == "FAILED"
    assert "ghost" in answer.json()["error"]
    assert answer.json()["result"] is None and answer.json()["status_code"] is None
    assert get(stack.port, f"/api/v1/status/{correlation_id}").json()["status"] == "FAILED"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/status/9b2f6c1e-4a3d-4e8b-9c7a-1d2e3f405162",
        "/api/v1/response/9b2f6c1e-4a3d-4e8b-9c7a-1d2e3f405162",
        "/api/v1/response/9b2f6c1e4a3d4e8b9c7a1d2e3f405162",
        "/api/v1/status/not-an-id",
    ],
)
def test_unknown_ids_are_404(stack, path):
    answer = get(stack.port, path)
    assert (answer.status, answer.json()) == (404, {"detail": "Request not found or expired"})


def test_other_paths_and_methods(stack):
    assert get(stack.port, "/api/v1/nothing").status == 404
    wrong = get(stack.port, "/api/v1/submit")
    assert (wrong.status, wrong.header(b"Allow")) == (405, b"POST")
    assert request(stack.port, b"DELETE", b"/api/v1/status/x").status == 405


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b"{not json", ["body", 1], "json_invalid"),
        (b"", ["body"], "missing"),
        (b"[1]", ["body"], "model_attributes_type"),
        (b'{"headers": {}}', ["body", "payload"], "missing"),
        (b'{"payload": [1]}', ["body", "payload"], "dict_type"),
        (b'{"payload": {}, "headers": {"X": 1}}', ["body", "headers", "X"], "string_type"),
        (b'{"payload": {}, "headers": {"X": "a\\r\\nB: c"}}', ["body", "headers", "X"], "value_error"),
        (b'{"payload": {}, "metadata": {"priority": 10}}', ["body", "metadata", "priority"], "less_than_equal"),
        (b'{"payload": {}, "metadata": {"timeout": 0}}', ["body", "metadata", "timeout"], "greater_than"),
        (b'{"payload": {}, "metadata": {"method": "GE T"}}', ["body", "metadata", "method"], "value_error"),
        (b'{"payload": {}, "metadata": 3}', ["body", "metadata"], "model_type"),
    ],
)  # fmt: skip
def test_a_bad_submit_is_422_with_fastapis_errors(stack, body, loc, kind):
    answer = submit(stack.idle.port, body)
    assert answer.status == 422, answer.body
    [problem] = answer.json()["detail"]
    assert (problem["loc"], problem["type"]) == (loc, kind)
    assert problem["msg"]


def test_every_problem_of_a_submit_is_listed(stack):
    body = {"payload": 1, "metadata": {"priority": -1, "retry_count": "x"}}
    answer = submit(stack.idle.port, body)
    assert answer.status == 422
    locs = [problem["loc"][-1] for problem in answer.json()["detail"]]
    assert locs == ["payload", "priority", "retry_count"]


def test_without_the_api_the_app_gets_api_v1(backend):
    hqm = proxy(backend.address, "--no-openhqm-api")
    try:
        accepted = submit(hqm.port, {"payload": {}})
        assert accepted.status == 202 and accepted.json()["status"] == "queued"
        assert wait_until(lambda: backend.count(lambda s: s.target == SUBMIT) == 1)
    finally:
        hqm.kill()
