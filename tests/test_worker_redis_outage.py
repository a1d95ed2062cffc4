"""Redis goes away while the app works on a request: the worker keeps the answer and
records it once Redis is back, so the app does not run the request a second time."""

from __future__ import annotations

import threading

from tests.redis_server import RedisServer
from tests.support import Answer, Backend, HqmProcess, poll_result, proxy, request, wait_until


def test_an_answer_that_could_not_be_recorded_is_recorded_after_redis_returns():
    server = RedisServer(appendonly=True).start()
    release = threading.Event()

    def held(seen) -> Answer:
        release.wait(30)
        return Answer(200, [], b"made once")

    app = Backend(held)
    hqm = proxy(app.address, "--redis", server.url)
    worker = HqmProcess(
        "worker", "--redis", server.url, "--upstream", app.address, "--admin", "off"
    ).wait_ready()
    try:
        accepted = request(hqm.port, b"POST", b"/charge", body=b"card")
        assert accepted.status == 202
        assert wait_until(lambda: app.count() == 1)  # at the app
        server.kill()  # Redis goes away meanwhile
        release.set()  # the app answers: the outcome cannot be recorded now
        assert wait_until(lambda: "could not record an outcome" in worker.log())
        server.restart()
        result = poll_result(hqm.port, accepted.json()["id"], timeout=60)
        assert (result.status, result.body) == (200, b"made once")
        assert app.count() == 1  # not redelivered: the app ran it once
    finally:
        release.set()
        worker.terminate()
        hqm.terminate()
        app.close()
        server.cleanup()
