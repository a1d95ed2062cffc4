"""Lua scripts of the Redis Streams backend: each outcome is one atomic step.

``@G`` stands for the consumer group name; ``RedisQueue`` substitutes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

#: One entry claimed by the ``finish`` script's op 'n': len(entry id) u8, len(attempt)
#: u8, status set u8 (1: the script marked it processing), len(record) u32, then the
#: three strings.
_CLAIMED = struct.Struct(">BBBI")
#: First byte of an op 'n' reply that is an error (an entry id is never 255 bytes long).
CLAIM_ERROR = 0xFF

# Stream entries: 'r' the encoded request, 'a' the attempt, 'i' the request id (so that
# a claim can mark it processing in the same script; entries without it are marked
# from Python).

# Each script touches only keys of one queue (one hash tag), so it runs on a cluster.
SCRIPTS = {
    # KEYS stream, delayed, state...; ARGV max_depth (0: none), ttl_ms, state,
    # where the request id starts in a state key name, record...
    "enqueue": """
local depth = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local max, off, out = tonumber(ARGV[1]), tonumber(ARGV[4]), {}
for i = 3, #KEYS do
  if max > 0 and depth >= max then out[#out + 1] = 0 else
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'r', ARGV[i + 2], 'a', '0',
      'i', string.sub(KEYS[i], off))
    redis.call('SET', KEYS[i], ARGV[3], 'PX', ARGV[2])
    depth = depth + 1
  end
end
return out""",
    # The worker's round trip: outcomes of finished deliveries and new claims, batched.
    # Each outcome is acknowledged and recorded (result + state + notification)
    # together, and only if this XACK acknowledged it.
    # KEYS stream, delayed, dlq; ARGV ttl_ms, key prefix of the queue, then one item per
    # argument (see pack_item: redis-py packs one argument instead of ~8): its op, then
    # request id (the result and state keys are derived from it: same hash tag), and
    #   'c' entry, result|'', state, reply_to|'', message              (completed)
    #   'r' entry, due_at, member, state                               (retry later)
    #   'd' entry, r, error, attempts, dead_at, result|'', state|'', reply_to|'', message
    #   'p' state                 (claimed: processing; never overwrites done, dead or
    #                              retrying, which a late reclaim racing an outcome
    #                              could do)
    #   'n' consumer, count       (claim: XREADGROUP without BLOCK; entries that carry
    #                              their request id are marked processing here)
    # Returns, per 'n' item, its entries packed into one string (see unpack_claimed):
    # redis-py parses one bulk string instead of ~10 nested elements per entry.
    "finish": """
local ttl, prefix, out = ARGV[1], ARGV[2], {}
local function settle(st, state)
  local cur = redis.call('GET', st)
  if not cur or not (string.find(cur, '"s":"done"', 1, true)
      or string.find(cur, '"s":"dead"', 1, true)
      or string.find(cur, '"s":"retrying"', 1, true)) then
    redis.call('SET', st, state, 'PX', ttl)
  end
end
for i = 3, #ARGV do
  local item, f, pos = ARGV[i], {}, 2
  while pos <= #item do
    local n = struct.unpack('>I4', item, pos)
    f[#f + 1] = string.sub(item, pos + 4, pos + 3 + n)
    pos = pos + 4 + n
  end
  local op = string.sub(item, 1, 1)
  local res, st = prefix .. 'res:' .. f[1], prefix .. 'st:' .. f[1]
  if op == 'n' then
    local r = redis.pcall('XREADGROUP', 'GROUP', '@G', f[2], 'COUNT', f[3],
      'STREAMS', KEYS[1], '>')
    if type(r) == 'table' and r.err then
      out[#out + 1] = '\\255' .. r.err
    else
      local got = {}
      for _, e in ipairs(r and r[1][2] or {}) do
        local fields, rec, att, id = e[2], '', '0', nil
        for j = 1, #fields, 2 do
          local name = fields[j]
          if name == 'r' then rec = fields[j + 1] elseif name == 'a' then att = fields[j + 1]
          elseif name == 'i' then id = fields[j + 1] end
        end
        if id then  -- new to the group: its state can only be "queued"
          redis.call('SET', prefix .. 'st:' .. id, '{"s":"processing","a":' .. att .. '}',
            'PX', ttl)
        end
        got[#got + 1] = struct.pack('>BBBI4', #e[1], #att, id and 1 or 0, #rec)
          .. e[1] .. att .. rec
      end
      out[#out + 1] = table.concat(got)
    end
  elseif op == 'p' then
    settle(st, f[2])
  elseif redis.pcall('XACK', KEYS[1], '@G', f[2]) == 1 then
    redis.call('XDEL', KEYS[1], f[2])
    if op == 'c' then
      if f[3] ~= '' then redis.call('SET', res, f[3], 'PX', ttl) end
      redis.call('SET', st, f[4], 'PX', ttl)
      if f[5] ~= '' then redis.call('PUBLISH', f[5], f[6]) end
    elseif op == 'r' then
      redis.call('ZADD', KEYS[2], f[3], f[4])
      redis.call('SET', st, f[5], 'PX', ttl)
    else
      redis.call('XADD', KEYS[3], '*', 'r', f[3], 'error', f[4], 'attempts', f[5],
        'dead_at', f[6], 'entry', f[2])
      if f[7] ~= '' then redis.call('SET', res, f[7], 'PX', ttl) end
      if f[8] ~= '' then redis.call('SET', st, f[8], 'PX', ttl) end
      if f[9] ~= '' then redis.call('PUBLISH', f[9], f[10]) end
    end
  end
end
return out""",
    # KEYS stream, delayed; ARGV now, limit, state key prefix, ttl_ms
    "promote": """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local attempt, idlen = struct.unpack('>I4I2', m)
  local a = string.format('%d', attempt)
  local id = string.sub(m, 15, 14 + idlen)
  redis.call('XADD', KEYS[1], '*', 'r', string.sub(m, 15 + idlen), 'a', a, 'i', id)
  redis.call('SET', ARGV[3] .. id,
    '{"s":"queued","a":' .. a .. '}', 'PX', ARGV[4])
  redis.call('ZREM', KEYS[2], m)
end
return #due""",
    # KEYS stream; ARGV consumer, entry... Resets idle time of entries we still own.
    "touch": """
local n = 0
for i = 2, #ARGV do
  if #redis.call('XPENDING', KEYS[1], '@G', ARGV[i], ARGV[i], 1, ARGV[1]) > 0 then
    redis.call('XCLAIM', KEYS[1], '@G', ARGV[1], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n""",
    # KEYS dlq, stream, result, state; ARGV dlq entry, state, ttl_ms, request id
    "replay": """
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local f, r = e[1][2], nil
for i = 1, #f, 2 do if f[i] == 'r' then r = f[i + 1] end end
if not r then return 0 end
redis.call('XADD', KEYS[2], '*', 'r', r, 'a', '0', 'i', ARGV[4])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
return 1""",
    "purge": "local n = redis.call('XLEN', KEYS[1]) redis.call('DEL', KEYS[1]) return n",
}


_LENGTH = struct.Struct(">I").pack


def pack_item(op: str, *fields: bytes | str | int) -> bytes:
    """One item of the ``finish`` script: op, then each field length-prefixed."""
    parts = [op.encode()]
    for field in fields:
        data = field if isinstance(field, bytes) else str(field).encode()
        parts += (_LENGTH(len(data)), data)
    return b"".join(parts)


def unpack_claimed(blob: bytes) -> list[tuple[str, bytes, bytes, bool]]:
    """Entries claimed by op 'n': (entry id, record, attempt, marked processing)."""
    out, pos, end = [], 0, len(blob)
    while pos < end:
        id_len, attempt_len, marked, record_len = _CLAIMED.unpack_from(blob, pos)
        pos += _CLAIMED.size
        entry_id = blob[pos : pos + id_len].decode("ascii")
        pos += id_len
        attempt = blob[pos : pos + attempt_len]
        pos += attempt_len
        out.append((entry_id, blob[pos : pos + record_len], attempt, bool(marked)))
        pos += record_len
    return out


class Scripts:
    """The scripts, called by EVALSHA directly (SCRIPT LOAD on NOSCRIPT), each call
    bounded by one asyncio timeout: on a client without socket timeouts, redis-py then
    spends no ``asyncio.wait_for`` task per send nor timeout context per read.

    ``own=True`` calls (one at a time: the worker's flusher) go over a connection kept
    for them, straight through send_command/read_response: redis-py's per-command
    machinery (pool checkout, retry wrapper, instrumentation) costs ~30 µs a call.
    Not for a cluster client, which routes each command itself.
    """

    def __init__(self, client: Any, group: str, timeout_s: float) -> None:
        self._client = client
        self._timeout = timeout_s
        self._scripts = {}
        for name, source in SCRIPTS.items():
            source = source.replace("@G", group)
            self._scripts[name] = (hashlib.sha1(source.encode()).hexdigest(), source)
        pool = getattr(client, "connection_pool", None)
        self._pool = pool if hasattr(pool, "get_connection") else None
        self._conn: Any = None

    async def __call__(
        self, name: str, keys: list[Any], args: list[Any], *, own: bool = False
    ) -> Any:
        sha, source = self._scripts[name]
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
        conn = self._conn
        for retry in (True, False):  # as the client's Retry: once, on a broken connection
            try:
                try:
                    await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return await conn.read_response()
                except NoScriptError:
                    await conn.send_command("SCRIPT", "LOAD", source)
                    await conn.read_response()
                    await conn.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return await conn.read_response()
            except RedisConnectionError:  # it disconnected itself: the next send reconnects
                if not retry:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            await self._pool.release(conn)
