"""Fleet limits through Redis: one script call per decision, Redis's own clock (TIME)
so that every worker shares one time line (docs/architecture.md §5).

- rate: GCRA as a reservation. ``limit:rate`` holds the theoretical arrival time
  (µs) of the next request; a worker reserves ``max(now, tat - tolerance)`` and moves
  the tat one interval on, so the fleet sends at most ``burst + rate * t`` in any t.
  The interval is that of the enforced rate (AIMD on the app's 429/503, see
  ``hqm.queue.base``), and no slot is given inside a pause.
- pause: ``limit:pause`` with a PX of the app's Retry-After.
- concurrency: leases in the sorted set ``limit:leases``, scored by expiry (ms);
  expired ones are dropped before counting, so a dead worker's lapse by themselves.
"""

from __future__ import annotations

from typing import Any

from hqm.queue.base import (
    DECREASE_EVERY_S,
    FLOOR_SHARE,
    STEP_SHARE,
    FleetLimits,
    Reservation,
)
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import errors
from hqm.queue.redis_conn import connect

# KEYS[1] limit:rate, a hash: tat (µs), eff (req/s), down (µs of the last decrease);
# KEYS[2] limit:pause. ARGV[1] cap req/s, [2] burst, [3] successes, [4] throttled,
# [5] DECREASE_EVERY µs, [6] FLOOR_SHARE, [7] STEP_SHARE (hqm.queue.base).
# Returns {µs to wait, effective rate}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cap, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local st = redis.call('HMGET', KEYS[1], 'tat', 'eff', 'down')
local tat, eff, down = tonumber(st[1]) or 0, tonumber(st[2]) or cap, tonumber(st[3]) or 0
if eff > cap then eff = cap end
if tonumber(ARGV[4]) > 0 and now - down >= tonumber(ARGV[5]) then
  eff = math.max(cap * tonumber(ARGV[6]), eff / 2)
  down = now
else
  eff = math.min(cap, eff + tonumber(ARGV[3]) * cap * tonumber(ARGV[7]))
end
local interval = 1000000 / eff
if tat < now then tat = now end
local at = math.max(now, tat - (burst - 1) * interval)
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then at = math.max(at, now + pause * 1000) end
local nxt = math.max(tat, at) + interval
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', nxt), 'eff', string.format('%.6f', eff),
  'down', string.format('%.0f', down))
redis.call('PEXPIRE', KEYS[1], 3600000)
return {string.format('%.0f', at - now), string.format('%.6f', eff)}
"""
# KEYS[1] limit:pause; ARGV[1] ms. Extends a pause, never shortens one.
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 0
"""
# KEYS[1] limit:leases; ARGV[1] limit, ARGV[2] ttl ms, ARGV[3] holder. Returns 1 or 0.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[3])
    or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
"""
# KEYS[1] limit:leases; ARGV[1] ttl ms, ARGV[2..] holders: renewed where still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
"""


class RedisLimits(FleetLimits):
    def __init__(self, url: str, queue: str, *, timeout_s: float = 5.0) -> None:
        self._keys = QueueKeys(queue)
        self._clients = connect(url, timeout_s, timeout_s)
        redis: Any = self._clients.main
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._pause = redis.register_script(_PAUSE)
        self._lease = redis.register_script(_LEASE)
        self._renew = redis.register_script(_RENEW)

    async def reserve(
        self, rate: float, burst: int, *, successes: int = 0, throttled: int = 0
    ) -> Reservation:
        args = [rate, burst, successes, throttled, int(DECREASE_EVERY_S * 1e6)]
        with errors("global rate"):
            wait_us, effective = await self._reserve(
                keys=[self._keys.global_rate, self._keys.pause],
                args=[*args, FLOOR_SHARE, STEP_SHARE],
            )
        return Reservation(max(0, int(wait_us)) / 1e6, float(effective))

    async def pause(self, seconds: float) -> None:
        with errors("queue pause"):
            await self._pause(keys=[self._keys.pause], args=[max(1, int(seconds * 1000))])

    async def paused_for(self) -> float:
        with errors("queue pause"):
            left = await self._redis.pttl(self._keys.pause)
        return max(0, left) / 1000

    async def lease(self, holder: str, limit: int, ttl_s: float) -> bool:
        with errors("global concurrency"):
            got = await self._lease(
                keys=[self._keys.leases], args=[limit, int(ttl_s * 1000), holder]
            )
        return got == 1

    async def renew(self, holders: list[str], ttl_s: float) -> None:
        with errors("global concurrency"):
            await self._renew(keys=[self._keys.leases], args=[int(ttl_s * 1000), *holders])

    async def release(self, holder: str) -> None:
        with errors("global concurrency"):
            await self._redis.zrem(self._keys.leases, holder)

    async def close(self) -> None:
        for client in (self._clients.main, self._clients.blocking, *self._clients.extra):
            await client.aclose()
