"""``hqm dlq list | show | replay | purge`` as a user runs it: the real CLI in a child
process, against a real redis-server whose dead letters a real worker wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.redis_server import RedisServer, redis_server
from tests.support import Backend, HqmProcess, poll_result, request
from tests.test_worker_redis import (
    Spawner,
    closed_port,
    dlq,
    dlq_json,
    done_target,
    spawn,
)

__all__ = ["redis_server", "spawn"]  # fixtures, imported for pytest


@dataclass
class Dead:
    """Three requests dead-lettered because their app was down."""

    url: str
    proxy: HqmProcess
    app_port: int
    ids: list[str]  # request ids, in the order they were sent
    entries: dict[str, str]  # request id -> dead-letter entry id

    def run_worker(self, spawner: Spawner) -> None:
        """A worker that drains the queue and exits; the app stays down past
        --max-retry-duration, so each request is dead-lettered."""
        upstream = f"127.0.0.1:{self.app_port}"
        worker = spawner.worker(self.url, upstream, "--burst", "--max-retry-duration", "0.2")
        assert worker.proc.wait(20) == 0


@pytest.fixture
def dead(redis_server: RedisServer, spawn: Spawner) -> Dead:
    port = closed_port()
    upstream = f"127.0.0.1:{port}"
    hqm = spawn.proxy(upstream, redis_server.url)
    ids = []
    for n in range(3):
        headers = [(b"X-Case", b"%d" % n)]
        accepted = request(hqm.port, b"POST", b"/dead/%d" % n, headers, b"body %d" % n)
        assert accepted.status == 202
        ids.append(accepted.json()["id"])
    state = Dead(redis_server.url, hqm, port, ids, {})
    state.run_worker(spawn)
    letters = dlq_json("list", redis_server.url)
    assert sorted(letter["id"] for letter in letters) == sorted(ids)
    state.entries = {letter["id"]: letter["entry"] for letter in letters}
    return state


def no_traceback(done) -> None:
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout


# --- list --------------------------------------------------------------------


def test_list_is_a_readable_table(dead: Dead):
    done = dlq("list", "--redis", dead.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ENTRY", "DIED", "(UTC)", "TRIES", "REQUEST", "ERROR"]
    assert len(lines) == 4
    for request_id, entry in dead.entries.items():
        n = dead.ids.index(request_id)
        (row,) = [line for line in lines[1:] if line.startswith(entry + " ")]
        assert f"POST /dead/{n}  " in row
        assert "cannot connect" in row
        assert row.split()[3] == "1"  # tries (after the date and the time)


def test_list_json_is_one_object_per_line(dead: Dead):
    letters = dlq_json("list", dead.url)
    assert len(letters) == 3
    for letter in letters:
        assert set(letter) == {
            "entry",
            "id",
            "method",
            "target",
            "attempts",
            "error",
            "dead_at",
            "received_at",
        }
        n = dead.ids.index(letter["id"])
        assert (letter["method"], letter["target"], letter["attempts"]) == ("POST", f"/dead/{n}", 1)
        assert "cannot connect" in letter["error"]
        assert letter["dead_at"] >= letter["received_at"] > 0


def test_list_when_empty(redis_server: RedisServer):
    done = dlq("list", "--redis", redis_server.url)
    assert (done.returncode, done.stdout) == (0, "no dead letters\n")
    assert dlq_json("list", redis_server.url) == []


# --- show ----------------------------------------------------------------------


def test_show_one_entry(dead: Dead):
    request_id = dead.ids[1]
    entry = dead.entries[request_id]
    done = dlq("show", "--redis", dead.url, entry)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for expected in (
        f"entry: {entry}",
        f"id: {request_id}",
        "method: POST",
        "target: /dead/1",
        "attempts: 1",
        "headers:",
        "  X-Case: 1",
        "body_bytes: 6",
        "body_preview: body 1",
    ):
        assert expected in lines, (expected, lines)
    assert any(line.startswith("error: ") and "cannot connect" in line for line in lines)
    assert any(line.startswith("dead_at: 20") and " UTC (" in line for line in lines)
    shown = json.loads(dlq("show", "--redis", dead.url, entry, "--json").stdout)
    assert (shown["entry"], shown["id"], shown["body_preview"]) == (entry, request_id, "body 1")
    assert ["X-Case", "1"] in shown["headers"]


@pytest.mark.parametrize("entry", ["1-0", "not-an-entry"])
def test_show_unknown_entry_is_a_clear_error(dead: Dead, entry: str):
    done = dlq("show", "--redis", dead.url, entry)
    assert done.returncode == 1
    assert f"no dead letter '{entry}'" in done.stderr
    assert done.stdout == ""
    no_traceback(done)


# --- replay --------------------------------------------------------------------


def test_replay_one_entry_then_it_completes(dead: Dead, spawn: Spawner):
    first, second = dead.ids[0], dead.ids[1]
    app = Backend(done_target, port=dead.app_port)  # the app is back
    try:
        done = dlq("replay", "--redis", dead.url, dead.entries[first])
        assert (done.returncode, done.stdout) == (0, "replayed 1 dead letter(s)\n")
        left = {letter["entry"] for letter in dlq_json("list", dead.url)}
        assert left == set(dead.entries.values()) - {dead.entries[first]}
        as_json = dlq("replay", "--redis", dead.url, dead.entries[second], "--json")
        assert json.loads(as_json.stdout) == {"replayed": [dead.entries[second]]}
        dead.run_worker(spawn)
        for n, request_id in enumerate((first, second)):
            result = poll_result(dead.proxy.port, request_id)
            assert result.status == 200
            assert result.body == b"done /dead/%d %s" % (n, request_id.encode())
        untouched = poll_result(dead.proxy.port, dead.ids[2])
        assert untouched.status == 502  # still dead: only what was replayed ran again
        assert app.count() == 2
    finally:
        app.close()


def test_replay_all(dead: Dead, spawn: Spawner):
    app = Backend(done_target, port=dead.app_port)
    try:
        done = dlq("replay", "--redis", dead.url, "--all", "--json")
        assert done.returncode == 0, done.stderr
        assert sorted(json.loads(done.stdout)["replayed"]) == sorted(dead.entries.values())
        assert dlq_json("list", dead.url) == []
        dead.run_worker(spawn)
        for request_id in dead.ids:
            assert poll_result(dead.proxy.port, request_id).status == 200
        again = dlq("replay", "--redis", dead.url, "--all")
        assert (again.returncode, again.stdout) == (0, "replayed 0 dead letter(s)\n")
    finally:
        app.close()


def test_replay_errors_are_clear(dead: Dead):
    unknown = dlq("replay", "--redis", dead.url, "1-0")
    assert unknown.returncode == 1
    assert "no dead letter '1-0'" in unknown.stderr
    no_traceback(unknown)
    for args in ((), (dead.entries[dead.ids[0]], "--all")):
        usage = dlq("replay", "--redis", dead.url, *args)
        assert usage.returncode == 2
        assert "give one ENTRY or --all" in usage.stderr
    assert len(dlq_json("list", dead.url)) == 3  # nothing was replayed


# --- purge ---------------------------------------------------------------------


def test_purge_asks_then_deletes(dead: Dead):
    declined = dlq("purge", "--redis", dead.url, stdin="n\n")
    assert declined.returncode == 1
    assert "Aborted" in declined.stderr
    assert len(dlq_json("list", dead.url)) == 3
    done = dlq("purge", "--redis", dead.url, "--yes")
    assert (done.returncode, done.stdout) == (0, "purged 3 dead letter(s)\n")
    assert dlq_json("list", dead.url) == []
    again = dlq("purge", "--redis", dead.url, "--yes", "--json")
    assert json.loads(again.stdout) == {"purged": 0}


def test_purge_confirmed_interactively(dead: Dead):
    done = dlq("purge", "--redis", dead.url, stdin="y\n")
    assert done.returncode == 0
    assert "purged 3 dead letter(s)" in done.stdout


# --- Redis unreachable or misnamed ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("list",), ("list", "--json"), ("show", "1-0"), ("replay", "--all"), ("purge", "--yes")],
    ids=["list", "list-json", "show", "replay", "purge"],
)
def test_unreachable_redis_is_a_clear_error(args: tuple[str, ...]):
    port = closed_port()
    done = dlq(*args, "--redis", f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: queue unavailable: ")
    assert f"127.0.0.1:{port}" in done.stderr
    assert done.stdout == ""
    no_traceback(done)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:port/0"])
def test_bad_redis_url_is_a_usage_error(url: str):
    done = dlq("list", "--redis", url)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: --redis: ")
    assert done.stderr.count("\n") == 1  # one line
    no_traceback(done)


def test_list_says_when_it_shows_only_part(dead: Dead):
    """Issue 20: `dlq list` showed 100 of 502 entries without a word."""
    part = dlq("list", "--redis", dead.url, "--count", "2")
    assert part.returncode == 0, part.stderr
    assert len(part.stdout.splitlines()) == 1 + 2
    assert "showing the oldest 2 dead letters; more follow" in part.stderr
    whole = dlq("list", "--redis", dead.url, "--count", "3")
    assert len(whole.stdout.splitlines()) == 1 + 3 and "more follow" not in whole.stderr
    as_json = dlq("list", "--redis", dead.url, "--count", "2", "--json")
    assert len(as_json.stdout.splitlines()) == 2 and "more follow" in as_json.stderr
