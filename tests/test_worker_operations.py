"""A worker as an operator sees it (issue 20): its log through a Redis outage, its
liveness in ``hqm status`` while idle and once killed, and Ctrl-C against a Redis that
does not answer. A real redis-server (stopped, or SIGSTOPped), real worker processes.
"""

from __future__ import annotations

import json
import time

from tests.redis_server import RedisServer, redis_server
from tests.support import HqmProcess, wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest

#: How long Redis stays away: the old worker wrote a warning per failed claim round,
#: about 10 per second (the issue's 20 s outage: 179 lines).
OUTAGE_S = 3.0


def _records(process: HqmProcess) -> list[dict]:
    return [json.loads(line) for line in list(process.lines) if line.startswith("{")]


def _worker(server: RedisServer, *extra: str) -> HqmProcess:
    args = ["worker", "--redis", server.url, "--upstream", "127.0.0.1:9", "--admin", "off"]
    return HqmProcess(*args, *extra).wait_ready()


def test_a_redis_outage_is_one_warning_and_one_recovery_line(redis_server: RedisServer):
    worker = _worker(redis_server)
    try:
        redis_server.stop()
        assert wait_until(lambda: any(r["level"] == "warning" for r in _records(worker)))
        time.sleep(OUTAGE_S)  # the outage's length, not a wait for an outcome
        redis_server.start()  # the same port
        recovered = "queue claim loop works again after"
        assert wait_until(lambda: any(recovered in r["msg"] for r in _records(worker))), (
            worker.log()
        )
        records = _records(worker)
        warnings = [r["msg"] for r in records if r["level"] == "warning"]
        assert 1 <= len(warnings) <= 3, warnings  # not one per failed round
        assert all(w.startswith("queue claim loop failed: QueueUnavailable") for w in warnings)
        (line,) = [r["msg"] for r in records if recovered in r["msg"]]
        failures = int(line.removeprefix(recovered).split()[0])
        # backed off: 0.1 s doubling (full jitter) up to 5 s, not a round per 0.1 s
        assert 1 <= failures <= 20, line
    finally:
        worker.kill()
