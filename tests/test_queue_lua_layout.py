"""The Python-Lua boundary (hqm/queue/redis_lua.py, docs/architecture.md §4): every key
a script touches is one it declares in KEYS, and the layout documented is the layout in
the code.

Checked on a real redis-server: MONITOR shows every command a script runs (lines from
"lua", after the EVALSHA that ran them); COMMAND GETKEYS names the keys of each. Every
script and every op of the finish script runs at least once, through RedisQueue.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import redis
from redis.exceptions import ResponseError

from hqm.queue.base import CancelOutcome, IdempotencyClaim
from hqm.queue.keys import GROUP
from hqm.queue.redis_codec import delayed_member
from hqm.queue.redis_lua import OPS, SCRIPTS, Script
from hqm.queue.redis_scripts import Scripts
from hqm.queue.redis_streams import RedisQueue
from tests.redis_server import RedisServer, redis_server
from tests.support import wait_until
from tests.test_queue_redis import record, response, run, until

__all__ = ["redis_server"]

DOCS = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def parse(line: bytes) -> tuple[bool, list[bytes]]:
    """One MONITOR line: (run by a script, its arguments unquoted)."""
    head, _, rest = line.partition(b"] ")
    by_lua = head.endswith(b" lua")
    args, i = [], 0
    while i < len(rest):
        if rest[i : i + 1] != b'"':
            i += 1
            continue
        i, arg = i + 1, bytearray()
        while rest[i : i + 1] != b'"':
            if rest[i : i + 1] == b"\\":
                code = rest[i + 1 : i + 2]
                if code == b"x":
                    arg.append(int(rest[i + 2 : i + 4], 16))
                    i += 4
                    continue
                arg += _ESCAPES.get(code, code)
                i += 2
                continue
            arg += rest[i : i + 1]
            i += 1
        args.append(bytes(arg))
        i += 1
    return by_lua, args


class Monitor:
    """MONITOR on its own connection, every line kept."""

    def __init__(self, port: int) -> None:
        self.lines: list[bytes] = []
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            self.lines += [line[1:] for line in lines if line.startswith(b"+")]

    def close(self) -> None:
        self._sock.close()


async def _every_script(url: str) -> None:
    """Each script and each op of ``finish`` and ``enqueue`` at least once."""
    q = RedisQueue(url, "layout", max_depth=9)
    await q.start()
    waiting = record(reply_to="hqm:{layout}:reply:someone", mode="wait")
    recs = [record(), record(), record(), waiting]
    await asyncio.gather(*(q.enqueue(r) for r in recs))  # enqueue, add
    claim = IdempotencyClaim(key="k", fingerprint="f", ttl_s=60)
    later, taken_back = record(not_before=9.0), record()
    await q.enqueue(later, idempotency=claim)  # add_once, delayed
    assert (await q.enqueue(record(), idempotency=claim)).duplicate
    await q.enqueue(taken_back)
    assert await q.cancel(later.id) is CancelOutcome.CANCELLED  # cancel, in the delayed set
    assert await q.cancel(taken_back.id) is CancelOutcome.CANCELLED  # cancel, in the stream
    got = await q.claim("c", 2, 0)  # claim
    got += await q.claim("c", 2, 0)
    await q.touch("c", [d.entry_id for d in got])  # touch
    await until(lambda: not q._outcomes._items and q._outcomes._task is None)  # mark
    by_id = {d.record.id: d for d in got}
    await q.complete(by_id[waiting.id], response())  # complete, with a notification
    await q.retry_later(by_id[recs[0].id], 1.0, "503")  # retry
    await q.dead_letter(by_id[recs[1].id], "gone", 1)  # dead
    r = redis.Redis.from_url(url, protocol=2)
    r.xadd(q.keys.stream, {"r": b"garbage", "a": "0", "i": record().id})  # dead, corrupt
    r.xadd(q.keys.stream, {"x": b"1"})  # dead, unknown request
    r.zadd(q.keys.delayed, {b"junk": 0.5, delayed_member(1, recs[2], b"bad"): 0.5})  # drop
    assert await q.claim("c", 5, 0) == []
    assert await q.promote_due(2.0) == 1  # promote
    [letter, *_] = await q.dead_letters()
    assert await q.replay_dead_letter(letter.entry_id)  # replay
    assert await q.purge_dead_letters() > 0  # purge
    await q.close()


def test_every_key_a_script_touches_is_declared(redis_server: RedisServer) -> None:
    monitor = Monitor(redis_server.port)
    admin = redis.Redis.from_url(redis_server.url, protocol=2)
    try:
        run(_every_script(redis_server.url))
        admin.echo(b"the end")
        assert wait_until(lambda: any(b'"the end"' in line for line in monitor.lines))
    finally:
        monitor.close()
    shas = {sha: name for name, (sha, _) in Scripts(None, GROUP, 1.0)._scripts.items()}
    ran, ops, declared, checked = set(), set(), None, 0
    for by_lua, args in map(parse, monitor.lines):
        if not by_lua:
            declared = None
            if args and args[0].upper() == b"EVALSHA":
                name, count = shas[args[1].decode()], int(args[2])
                declared, arguments = set(args[3 : 3 + count]), args[3 + count :]
                ran.add(name)
                script = next(s for s in SCRIPTS if s.name == name)
                if script.ops:
                    ops |= {item[:1].decode() for item in arguments[len(script.args) :]}
            continue
        assert declared is not None, f"a script command outside a script: {args}"
        try:
            keys = {k.encode() if isinstance(k, str) else k for k in admin.command_getkeys(*args)}
        except ResponseError as exc:
            assert "no key arguments" in str(exc), (args, exc)
            keys = set()
        assert keys <= declared, f"{args[0]!r} touches undeclared {keys - declared}"
        checked += 1
    assert ran == {script.name for script in SCRIPTS}
    assert ops == set(OPS)
    assert checked > 30


def test_no_script_source_holds_a_key_name() -> None:
    """(The MONITOR test above is the proof; this names the usual way to break it.)"""
    for script in SCRIPTS:
        source = script.source(GROUP)
        for fragment in ("hqm:", "st:", "res:", "prefix"):
            assert fragment not in source, (script.name, fragment)


# --- the documented layout is the code's --------------------------------------------


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _names(names: tuple[str, ...]) -> str:
    return " ".join(f"`{n}`" for n in names) or "-"


def _script_row(script: Script) -> str:
    keys, args = _names(script.keys), _names(script.args)
    if script.each_keys or script.each_args:
        keys += f", then per repetition {_names(script.each_keys)}" if script.each_keys else ""
        args += f", then per repetition {_names(script.each_args)}"
    if script.ops:
        keys += ", then the keys of each item"
        args += ", then one item per argument"
    return _row(f"`{script.name}`", keys, args)


def layout_table() -> str:
    rows = [_row("script", "KEYS", "ARGV"), _row("---", "---", "---")]
    rows += [_script_row(script) for script in SCRIPTS]
    for script in (s for s in SCRIPTS if s.ops):
        rows += ["", _row(f"`{script.name}` item", "code", "KEYS of its request", "fields")]
        rows.append(_row("---", "---", "---", "---"))
        for op in script.ops:
            keys = _names(op.keys) + (" or none" if op.optional_keys and op.keys else "")
            rows.append(_row(f"`{op.name}`", f"`{op.code}`", keys, _names(op.fields)))
    return "\n".join(rows) + "\n"


def test_docs_show_the_script_layout_of_the_code() -> None:
    text = DOCS.read_text()
    assert layout_table() in text, "docs/architecture.md §4: paste\n" + layout_table()


def test_docs_say_what_each_name_means() -> None:
    section = DOCS.read_text().split("## 4 ", 1)[1].split("\n## 5 ", 1)[0]
    glossary = section.split("Names in the layouts:", 1)[1]
    names = set()
    for script in SCRIPTS:
        names |= {*script.args, *script.each_args}
        for op in script.ops:
            names |= set(op.fields)
    missing = {n for n in names if f"`{n}`" not in glossary}
    assert not missing, f"docs/architecture.md §4 does not describe {sorted(missing)}"
