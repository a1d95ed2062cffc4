"""Calling the scripts of hqm.queue.redis_lua: EVALSHA, loading a script on NOSCRIPT,
each call bounded by one timeout."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from hqm.queue.redis_lua import SCRIPTS, Script


def _packed(args: Sequence[Any]) -> list[bytes]:
    """A command in RESP, built in one pass (redis-py's pack_command re-copies its buffer
    per argument: a finish call has 2-3 arguments per message)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return out


class Scripts:
    """The scripts, called by EVALSHA (SCRIPT LOAD on NOSCRIPT), each call bounded by
    one asyncio timeout (no ``wait_for`` task per send on a client without socket
    timeouts). ``own=True`` calls (one at a time: the worker's flusher) use a connection
    kept for them, straight through send_packed_command/read_response: redis-py's
    per-command machinery costs ~30 µs a call. Not for a cluster client, which routes each command.
    """

    def __init__(self, client: Any, group: str, timeout_s: float) -> None:
        self._client = client
        self._timeout = timeout_s
        self._scripts = {}
        for script in SCRIPTS:
            source = script.source(group)
            self._scripts[script.name] = (hashlib.sha1(source.encode()).hexdigest(), source)
        pool = getattr(client, "connection_pool", None)
        self._pool = pool if hasattr(pool, "get_connection") else None
        self._conn: Any = None

    async def __call__(
        self, script: Script, keys: list[Any], args: list[Any], *, own: bool = False
    ) -> Any:
        sha, source = self._scripts[script.name]
        async with asyncio.timeout(self._timeout):
            if own and self._pool is not None:
                return await self._on_own_connection(sha, source, keys, args)
            try:
                return await self._client.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:  # not loaded yet, or Redis restarted
                await self._client.script_load(source)
                return await self._client.evalsha(sha, len(keys), *keys, *args)

    async def _on_own_connection(
        self, sha: str, source: str, keys: list[Any], args: list[Any]
    ) -> Any:
        if self._conn is None:
            try:
                self._conn = await self._pool.get_connection()  # type: ignore[union-attr]
            except TypeError:  # redis-py before 5.3 wants a command name
                self._conn = await self._pool.get_connection("EVALSHA")  # type: ignore[union-attr]
        conn, command = self._conn, _packed(("EVALSHA", sha, len(keys), *keys, *args))
        for retry in (True, False):  # as the client's Retry: once, on a broken connection
            try:
                try:
                    await conn.send_packed_command(command)
                    return await conn.read_response()
                except NoScriptError:
                    await conn.send_command("SCRIPT", "LOAD", source)
                    await conn.read_response()
                    await conn.send_packed_command(command)
                    return await conn.read_response()
            except RedisConnectionError:  # it disconnected itself: the next send reconnects
                if not retry:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            await self._pool.release(conn)
