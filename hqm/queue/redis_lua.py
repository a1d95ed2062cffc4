"""Lua scripts of the Redis Streams backend: each outcome is one atomic step.

``@G`` stands for the consumer group name; ``RedisQueue`` substitutes it.
"""

# Each script touches only keys of one queue (one hash tag), so it runs on a cluster.
ACK = "if redis.pcall('XACK', KEYS[1], '@G', ARGV[1]) ~= 1 then return 0 end\n"
SCRIPTS = {
    # KEYS stream, delayed, state...; ARGV max_depth (0: none), ttl_ms, state, record...
    "enqueue": """
local depth = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local max, out = tonumber(ARGV[1]), {}
for i = 3, #KEYS do
  if max > 0 and depth >= max then out[#out + 1] = 0 else
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'r', ARGV[i + 1], 'a', '0')
    redis.call('SET', KEYS[i], ARGV[3], 'PX', ARGV[2])
    depth = depth + 1
  end
end
return out""",
    # KEYS stream, result, state; ARGV entry, result|'', ttl_ms, state, reply_to, id
    "complete": ACK
    + """redis.call('XDEL', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return 1""",
    # KEYS stream, dlq, result, state; ARGV entry, r, error, attempts, dead_at,
    # result|'', ttl_ms, state|'', reply_to, id
    "dead": ACK
    + """redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'r', ARGV[2], 'error', ARGV[3], 'attempts', ARGV[4],
  'dead_at', ARGV[5], 'entry', ARGV[1])
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[7]) end
if ARGV[9] ~= '' then redis.call('PUBLISH', ARGV[9], ARGV[10]) end
return 1""",
    # KEYS stream, delayed, state; ARGV entry, due_at, member, state, ttl_ms
    "retry": ACK
    + """redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
return 1""",
    # KEYS stream, delayed; ARGV now, limit, state key prefix, ttl_ms
    "promote": """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local attempt, idlen = struct.unpack('>I4I2', m)
  local a = string.format('%d', attempt)
  redis.call('XADD', KEYS[1], '*', 'r', string.sub(m, 15 + idlen), 'a', a)
  redis.call('SET', ARGV[3] .. string.sub(m, 15, 14 + idlen),
    '{"s":"queued","a":' .. a .. '}', 'PX', ARGV[4])
  redis.call('ZREM', KEYS[2], m)
end
return #due""",
    # KEYS state...; ARGV state..., ttl_ms. Never overwrites a final state (a late
    # reclaim racing a complete).
    "processing": """
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if not cur or not (string.find(cur, '"s":"done"', 1, true)
      or string.find(cur, '"s":"dead"', 1, true)) then
    redis.call('SET', KEYS[i], ARGV[i], 'PX', ARGV[#ARGV])
  end
end
return 1""",
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
    # KEYS dlq, stream, result, state; ARGV dlq entry, state, ttl_ms
    "replay": """
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local f, r = e[1][2], nil
for i = 1, #f, 2 do if f[i] == 'r' then r = f[i + 1] end end
if not r then return 0 end
redis.call('XADD', KEYS[2], '*', 'r', r, 'a', '0')
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
return 1""",
    "purge": "local n = redis.call('XLEN', KEYS[1]) redis.call('DEL', KEYS[1]) return n",
}
