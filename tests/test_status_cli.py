"""``hqm status`` as an operator runs it, against a real redis-server: an empty queue, a
busy one (a real worker holding requests at a real app), a stuck one (its consumer
stopped), one whose oldest request is too old; ``--keys``, ``--json``, and the exit
codes (0 healthy, 1 stuck / too old / Redis unreachable, 2 usage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import redis
from click.testing import CliRunner

from hqm.cli.main import main
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_stats import key_inventory
from tests.redis_server import RedisServer, free_port, redis_server
from tests.support import Answer, Backend, Seen, request, wait_until
from tests.test_worker_redis import Spawner, spawn

__all__ = ["redis_server", "spawn"]  # fixtures, imported for pytest

KEYS = QueueKeys("default")


def status(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["status", *args], env={"HQM_REDIS": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def status_json(url: str, *args: str) -> tuple[int, dict]:
    code, out = status("--redis", url, "--json", *args)
    return code, json.loads(out)


def shell(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQM_")}
    return subprocess.run(
        [sys.executable, "-m", "hqm", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def admin(server: RedisServer) -> redis.Redis:
    r = redis.Redis.from_url(server.url, protocol=2)
    r.xgroup_create(KEYS.stream, KEYS.group, id="0", mkstream=True)
    return r


def add(r: redis.Redis, count: int, *, ago_s: float | None = None) -> None:
    for n in range(count):
        entry = "*" if ago_s is None else f"{int((time.time() - ago_s) * 1000) + n}-0"
        r.xadd(KEYS.stream, {"r": b"x", "a": b"0", "i": b"id%d" % n}, id=entry)


def test_an_empty_queue_is_healthy(redis_server: RedisServer):
    admin(redis_server)
    code, out = status("--redis", redis_server.url)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"queue default  ({KEYS.stream}, group hqm)"
    assert lines[1].split()[:2] == ["backlog", "0"]
    assert lines[-1].split() == ["health", "ok"]
    code, data = status_json(redis_server.url)
    assert code == 0 and data["healthy"] is True
    (queue,) = data["queues"]
    assert (queue["queue"], queue["backlog"], queue["consumers"]) == ("default", 0, [])
    assert queue["stream_exists"] is True and queue["problems"] == []
    assert queue["breaker"] is None and "hqm_worker_breaker_state" in queue["breaker_note"]


def test_a_busy_queue_with_a_live_worker_is_healthy(redis_server: RedisServer, spawn: Spawner):
    gate = threading.Event()

    def respond(seen: Seen) -> Answer:
        assert gate.wait(60)
        return Answer(200, body=b"done")

    app = Backend(respond)
    try:
        hqm = spawn.proxy(app.address, redis_server.url)
        worker = spawn.worker(redis_server.url, app.address, "--concurrency", "1")
        for n in range(3):
            assert request(hqm.port, b"POST", b"/busy/%d" % n, body=b"x").status == 202
        seen: dict = {}

        def busy() -> bool:
            seen["code"], seen["data"] = status_json(redis_server.url)
            queue = seen["data"]["queues"][0]
            return (queue["backlog"], queue["pending"]) == (2, 1)

        assert wait_until(busy), seen
        assert seen["code"] == 0 and seen["data"]["healthy"] is True
        (consumer,) = seen["data"]["queues"][0]["consumers"]
        assert consumer["name"] == worker.info["consumer"]
        assert (consumer["pending"], consumer["alive"]) == (1, True)
        assert seen["data"]["queues"][0]["oldest_age_s"] >= 0
        code, out = status("--redis", redis_server.url)
        assert code == 0, out
        (row,) = [line for line in out.splitlines() if line.strip().startswith(consumer["name"])]
        assert row.split()[-2:] == ["1", "yes"]
    finally:
        gate.set()
        app.close()


def test_a_stuck_queue_exits_1(redis_server: RedisServer):
    r = admin(redis_server)
    add(r, 3)
    code, out = status("--redis", redis_server.url)  # nobody ever consumed it
    assert code == 1 and "stuck: 3 request(s) wait" in out, out
    # a consumer that claimed one and stopped a minute ago
    (claimed,) = r.xreadgroup(KEYS.group, "gone", {KEYS.stream: ">"}, count=1)[0][1]
    r.xclaim(KEYS.stream, KEYS.group, "gone", 0, [claimed[0]], idle=60_000)
    code, data = status_json(redis_server.url)
    assert code == 1 and data["healthy"] is False
    queue = data["queues"][0]
    assert (queue["backlog"], queue["pending"], queue["consumers_alive"]) == (2, 1, 0)
    (gone,) = queue["consumers"]
    assert gone["name"] == "gone" and gone["alive"] is False and gone["idle_s"] >= 60
    assert queue["problems"][0].startswith("stuck: 3 request(s) wait")
    # alive is its heartbeat, not its idle time: with one it counts as alive again
    r.set(KEYS.heartbeat("gone"), b"1", px=60_000)
    code, data = status_json(redis_server.url)
    assert code == 0 and data["queues"][0]["consumers_alive"] == 1


def test_max_age_flags_the_oldest_waiting_request(redis_server: RedisServer):
    r = admin(redis_server)
    add(r, 2, ago_s=600)  # made 10 minutes ago
    r.xreadgroup(KEYS.group, "live", {KEYS.stream: ">"}, count=1)  # a live consumer
    r.set(KEYS.heartbeat("live"), b"1", px=60_000)  # (its heartbeat)
    code, data = status_json(redis_server.url)
    assert code == 0, data
    assert 590 < data["queues"][0]["oldest_age_s"] < 900
    code, out = status("--redis", redis_server.url, "--max-age", "300")
    assert code == 1
    assert "too old: the oldest waiting request is 10.0 min old (--max-age 5.0 min)" in out, out
    assert status("--redis", redis_server.url, "--max-age", "3600")[0] == 0


def test_several_queues_each_get_a_block(redis_server: RedisServer):
    admin(redis_server)
    code, data = status_json(redis_server.url, "--queue", "default", "--queue", "other")
    assert code == 0
    assert [q["queue"] for q in data["queues"]] == ["default", "other"]
    assert [q["stream_exists"] for q in data["queues"]] == [True, False]
    code, out = status("--redis", redis_server.url, "--queue", "default", "--queue", "other")
    assert code == 0 and "queue other  (hqm:{other}:stream, group hqm)" in out
    assert "no stream: no proxy or worker has used this queue" in out


def test_keys_lists_every_key_name_without_redis():
    code, out = status("--keys", "--queue", "orders")
    assert code == 0, out
    names = [k.name for k in key_inventory(QueueKeys("orders"))]
    for name in names:
        assert f"  {name}  " in out
    assert "hqm:{orders}:stream" in names and "hqm:{orders}:res:*" in names
    assert "redis-cli XINFO GROUPS 'hqm:{orders}:stream'" in out
    code, out = status("--keys", "--queue", "orders", "--json")
    assert code == 0
    (queue,) = json.loads(out)["queues"]
    assert queue["group"] == "hqm"
    assert [k["name"] for k in queue["keys"]] == names
    assert all(k["meaning"] for k in queue["keys"])


def test_unreachable_redis_is_one_line_exit_1():
    port = free_port()
    done = shell("--redis", f"redis://:hunter2@127.0.0.1:{port}/0")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: redis redis://:***@127.0.0.1:{port}/0 unreachable: ")
    assert done.stderr.count("\n") == 1 and "hunter2" not in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_usage_errors_are_one_line_exit_2():
    for args, message in [
        (["--redis", "redis://127.0.0.1:1/0", "--max-age", "-1"], "Error: --max-age: "),
        ([], "Error: --redis is required"),
        (["--redis", "redis://127.0.0.1:1/0", "--queue", "a", "--queue", ""], "Error: --queue: "),
        (["--redis", "http://127.0.0.1:1"], "Error: --redis: "),
    ]:
        code, out = status(*args)
        assert code == 2, (args, out)
        assert out.startswith(message) and out.count("\n") == 1, (args, out)
    done = shell("--max-age", "soon")  # as a shell sees it
    assert done.returncode == 2 and done.stderr.startswith("Error: --max-age: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
