"""Lua scripts of the Redis Streams backend, each outcome one atomic step, and the
layout of each one's KEYS and ARGV (docs/architecture.md §4), declared once: here
(``Script``, ``Op``). A script's source starts with a prelude generated from its layout
(``local stream, delayed = KEYS[1], KEYS[2]``...) and ``Script.bind`` builds a call's
KEYS and ARGV from the same names, so the two sides cannot disagree. Every key a script
touches is one of its KEYS, built by hqm.queue.keys (a Redis Cluster routes by them;
Dragonfly refuses undeclared keys); no script builds a key name. The state JSON is
written by Python only (``redis_codec.encode_state``) and comes in ARGV; Lua reads a
stored one only with cjson (op ``mark``) and never builds it. Two narrow exceptions:
the state of a request entering the stream ends in an empty slot (:data:`ENTRY_SLOT`)
that the script writing the XADD fills with the new entry id (``filled``), so that
``cancel`` can find the entry; and ``cancel`` compares the stored state byte for byte
with the one Python read and decided on (compare and set).
"""

from __future__ import annotations

import struct
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hqm.queue.base import Status

#: Fields of a request stream entry: the encoded request, the attempt (decimal digits),
#: the request id (docs/architecture.md §4).
RECORD, ATTEMPT, REQUEST_ID = "r", "a", "i"
#: Statuses a late "processing" mark must not overwrite (op ``mark``).
FINAL = (Status.DONE, Status.DEAD, Status.RETRYING, Status.CANCELLED)
#: How a state written as a request enters the stream ends: an entry id slot, filled
#: by the script with the XADD's id (``"x": ""`` written last by encode_state).
ENTRY_SLOT = ',"x":""}'
#: Head of a delayed member (a retry, or a scheduled request with attempt 0): attempt
#: u32 | length of the request id u16 | 8 random bytes; then the id and the record.
MEMBER_HEAD = struct.Struct(">IH8s")
#: First byte of a claim reply that is an error (an entry id is never 255 bytes long).
CLAIM_ERROR = 0xFF


@dataclass(frozen=True, slots=True)
class Op:
    """One kind of item of an item script: its code (one byte on the wire), the
    per-request KEYS it consumes (all or, with ``optional_keys``, none), its fields."""

    code: str
    name: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    lua: str
    #: May come without its keys: the request is unknown (a corrupt entry).
    optional_keys: bool = False
    #: Adds one element to the script's reply.
    replies: bool = False


@dataclass(frozen=True, slots=True)
class Script:
    """KEYS ``keys``, ARGV ``args``, then either repetitions of ``each_keys`` (KEYS) and
    ``each_args`` (ARGV) run through ``each_lua``, or items (ARGV, one per item; the
    keys of each item follow in KEYS in item order) run through the Lua of their ``Op``.
    What each name means: docs/architecture.md §4. A KEYS name is the QueueKeys member
    that builds it (``result_key``: QueueKeys.result of the item's request)."""

    name: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    lua: str
    each_keys: tuple[str, ...] = ()
    each_args: tuple[str, ...] = ()
    each_lua: str = ""
    after_lua: str = ""
    ops: tuple[Op, ...] = ()

    def source(self, group: str) -> str:
        return "".join(self._parts(group))

    def _parts(self, group: str) -> Iterable[str]:
        yield _PRELUDE.format(
            group=_lua_str(group),
            fields=", ".join(map(_lua_str, (RECORD, ATTEMPT, REQUEST_ID))),
            final=", ".join(f"[{_lua_str(s.value)}] = true" for s in FINAL),
            slot=_lua_str(ENTRY_SLOT),
        )
        yield _locals(self.keys, "KEYS", 0) + _locals(self.args, "ARGV", 0)
        yield textwrap.dedent(self.lua).lstrip("\n")
        nk, na = len(self.keys), len(self.args)
        if self.each_keys or self.each_args:
            step_k, step_a = len(self.each_keys), len(self.each_args)
            times = f"(#KEYS - {nk}) / {step_k}" if step_k else f"(#ARGV - {na}) / {step_a}"
            yield f"for n = 0, {times} - 1 do  -- the n-th repetition\n"
            yield textwrap.indent(_locals(self.each_keys, "KEYS", nk, step_k), "  ")
            yield textwrap.indent(_locals(self.each_args, "ARGV", na, step_a), "  ")
            yield textwrap.indent(textwrap.dedent(self.each_lua).strip("\n") + "\n", "  ")
            yield "end\n"
        if self.ops:
            yield from self._dispatch(nk, na)
        yield textwrap.dedent(self.after_lua).lstrip("\n")

    def _dispatch(self, nk: int, na: int) -> Iterable[str]:
        yield f"local k = {nk + 1}\nfor i = {na + 1}, #ARGV do\n"
        yield textwrap.indent(_UNPACK, "  ")
        for n, op in enumerate(self.ops):
            yield f"  {'if' if n == 0 else 'elseif'} op == {_lua_str(op.code)} then  -- {op.name}\n"
            if op.keys:
                refs = ", ".join(f"nk > 0 and KEYS[k + {j}]" for j in range(len(op.keys)))
                yield f"    local {', '.join(op.keys)} = {refs}\n"
            yield "    " + _locals(op.fields, "f", 0)
            yield textwrap.indent(textwrap.dedent(op.lua).strip("\n") + "\n", "    ")
        yield "  end\n  k = k + nk\nend\n"

    def bind(
        self,
        *,
        each: Iterable[Sequence[Any]] = (),
        items: Iterable[tuple[Sequence[str], bytes]] = (),
        **named: Any,
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV of one call from the layout's names (all, no others); ``each``:
        each_keys + each_args per repetition; ``items``: (keys, packed item) per item."""
        if named.keys() != {*self.keys, *self.args}:
            raise TypeError(f"script {self.name}: got {sorted(named)}")
        keys = [named[name] for name in self.keys]
        args = [named[name] for name in self.args]
        split = len(self.each_keys)
        for values in each:
            keys += values[:split]
            args += values[split:]
        for item_keys, packed in items:
            keys += item_keys
            args.append(packed)
        return keys, args


def _lua_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _locals(names: Sequence[str], array: str, base: int, step: int = 0) -> str:
    at = [f"{array}[{base + j + 1}{f' + {step} * n' if step else ''}]" for j in range(len(names))]
    return f"local {', '.join(names)} = {', '.join(at)}\n" if names else ""


_PRELUDE = """\
local GROUP, FINAL = {group}, {{{final}}}
local F_RECORD, F_ATTEMPT, F_ID = {fields}
local ENTRY_SLOT = {slot}
local function filled(state, entry)  -- the entry id into the state's slot, if it has one
  if string.sub(state, -#ENTRY_SLOT) ~= ENTRY_SLOT then return state end
  return string.sub(state, 1, -3) .. entry .. '"}}'
end
"""
# An item: op code (1 byte), how many KEYS it brings (1 byte), then each field as a
# u32 length and its bytes (redis_codec.pack_item: one argument per item, not ~8).
_UNPACK = """\
local item, f, pos = ARGV[i], {}, 3
local op, nk = string.sub(item, 1, 1), string.byte(item, 2)
while pos <= #item do
  local len = struct.unpack('>I4', item, pos)
  f[#f + 1] = string.sub(item, pos + 4, pos + 3 + len)
  pos = pos + 4 + len
end
"""

# The --max-depth check and the write are one step, and so are the Idempotency-Key's
# check and its SET. One reply per item: 0 full; 1 scheduled (delayed set); the entry
# id; for a known key "=" (the same request) or "!" (another one) and the id it names;
# "?" and the error when the key cannot be read (nothing of that item is written).
_ENQUEUE_LUA = """
local depth = redis.call('XLEN', stream) + redis.call('ZCARD', delayed)
local max, out = tonumber(max_depth), {}
local function add(state_key, id, record, member, due_at, state, state_ttl_ms)
  if max > 0 and depth >= max then return 0 end
  depth = depth + 1
  if member ~= '' then  -- not before due_at: waits in the delayed set
    redis.call('ZADD', delayed, due_at, member)
    redis.call('SET', state_key, state, 'PX', state_ttl_ms)
    return 1
  end
  local entry = redis.call('XADD', stream, '*', F_RECORD, record, F_ATTEMPT, '0', F_ID, id)
  redis.call('SET', state_key, filled(state, entry), 'PX', state_ttl_ms)
  return entry
end
"""
_ADD_LUA = """
out[#out + 1] = add(state_key, id, record, member, due_at, state, state_ttl_ms)
"""
_ADD_ONCE_LUA = """
local known = redis.pcall('GET', idem_key)
if type(known) == 'table' then  -- not a string: this item writes nothing, the others go on
  out[#out + 1] = '?' .. tostring(known.err)
elseif known then
  local same = string.sub(known, 1, #fingerprint) == fingerprint
  out[#out + 1] = (same and '=' or '!') .. string.sub(known, #fingerprint + 1)
else
  local reply = add(state_key, id, record, member, due_at, state, state_ttl_ms)
  if reply ~= 0 then redis.call('SET', idem_key, fingerprint .. id, 'PX', idem_ttl_ms) end
  out[#out + 1] = reply
end
"""
_ADD_FIELDS = ("id", "record", "member", "due_at", "state", "state_ttl_ms")
# fmt: off
#             code  name        per-request KEYS           fields
ADD      = Op("a", "add",      ("state_key",),             _ADD_FIELDS, _ADD_LUA, replies=True)
ADD_ONCE = Op("o", "add_once", ("state_key", "idem_key"),  (*_ADD_FIELDS, "fingerprint", "idem_ttl_ms"), _ADD_ONCE_LUA, replies=True)
# fmt: on

ENQUEUE = Script(
    "enqueue",
    keys=("stream", "delayed"),
    args=("max_depth",),
    lua=_ENQUEUE_LUA,
    ops=(ADD, ADD_ONCE),
    after_lua="return out\n",
)

_FINISH_LUA = """
local out = {}
local function acked(entry)  -- only the first outcome of an entry counts
  if redis.pcall('XACK', stream, GROUP, entry) ~= 1 then return false end
  redis.call('XDEL', stream, entry)
  return true
end
local function store(result_key, result, state_key, state, reply_to, message)
  if result_key and result ~= '' then redis.call('SET', result_key, result, 'PX', ttl_ms) end
  if state_key then redis.call('SET', state_key, state, 'PX', ttl_ms) end
  if reply_to ~= '' then redis.call('PUBLISH', reply_to, message) end
end
local function bury(entry, record, reason, attempts, dead_at)  -- a dead letter
  redis.call('XADD', dlq, '*', F_RECORD, record, 'error', reason, 'attempts', attempts,
    'dead_at', dead_at, 'entry', entry)
end
"""

_CLAIM_LUA = """
local r = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count,
  'STREAMS', stream, '>')
if type(r) == 'table' and r.err then
  out[#out + 1] = '\\255' .. r.err
else
  local got = {}
  for _, e in ipairs(r and r[1][2] or {}) do
    local v, rec, att, rid = e[2], '', '0', ''  -- fields as stored, any bytes
    for j = 1, #v, 2 do
      if v[j] == F_RECORD then rec = v[j + 1] elseif v[j] == F_ATTEMPT then att = v[j + 1]
      elseif v[j] == F_ID then rid = v[j + 1] end
    end
    got[#got + 1] = struct.pack('>BI4I4I4', #e[1], #att, #rid, #rec) .. e[1] .. att .. rid .. rec
  end
  out[#out + 1] = table.concat(got)
end
"""

_MARK_LUA = """
local cur = redis.call('GET', state_key)
local ok, st = pcall(cjson.decode, cur or 'null')
if not (ok and type(st) == 'table' and FINAL[st.s]) then
  redis.call('SET', state_key, state, 'PX', ttl_ms)
end
"""
_COMPLETE_LUA = """
if acked(entry) then store(result_key, result, state_key, state, reply_to, message) end
"""
_RETRY_LUA = """
if acked(entry) then
  redis.call('ZADD', delayed, due_at, member)
  redis.call('SET', state_key, state, 'PX', ttl_ms)
end
"""
_DEAD_LUA = """
if acked(entry) then
  bury(entry, record, reason, attempts, dead_at)
  store(result_key, result, state_key, state, reply_to, message)
end
"""
_PROMOTE_LUA = """
if redis.call('ZREM', delayed, member) == 1 then
  local entry = redis.call('XADD', stream, '*', F_RECORD, record, F_ATTEMPT, attempt, F_ID, id)
  redis.call('SET', state_key, filled(state, entry), 'PX', ttl_ms)
  out[#out + 1] = 1
else
  out[#out + 1] = 0
end
"""
_DROP_LUA = """
if redis.call('ZREM', delayed, member) == 1 then
  bury('', record, reason, '0', dead_at)
  store(result_key, result, state_key, state, '', '')
end
"""

# The items of the finish script, what a worker records (docs/architecture.md §4):
# complete, retry, dead only if this XACK acknowledged the entry; promote, drop only if
# this ZREM removed the member. claim and promote add a reply.
# fmt: off
#             code  name        per-request KEYS              fields
CLAIM    = Op("n", "claim",    (),                           ("consumer", "count"), _CLAIM_LUA, replies=True)
MARK     = Op("p", "mark",     ("state_key",),               ("state",), _MARK_LUA)
COMPLETE = Op("c", "complete", ("result_key", "state_key"),  ("entry", "result", "state", "reply_to", "message"), _COMPLETE_LUA)
RETRY    = Op("r", "retry",    ("state_key",),               ("entry", "due_at", "member", "state"), _RETRY_LUA)
DEAD     = Op("d", "dead",     ("result_key", "state_key"),  ("entry", "record", "reason", "attempts", "dead_at", "result", "state", "reply_to", "message"), _DEAD_LUA, optional_keys=True)
PROMOTE  = Op("q", "promote",  ("state_key",),               ("member", "attempt", "id", "record", "state"), _PROMOTE_LUA, replies=True)
DROP     = Op("z", "drop",     ("result_key", "state_key"),  ("member", "record", "reason", "dead_at", "result", "state"), _DROP_LUA, optional_keys=True)
# fmt: on

FINISH = Script(
    "finish",
    keys=("stream", "delayed", "dlq"),
    args=("ttl_ms",),
    lua=_FINISH_LUA,
    ops=(CLAIM, MARK, COMPLETE, RETRY, DEAD, PROMOTE, DROP),
    after_lua="return out\n",
)
#: The ops of FINISH and ENQUEUE by code.
OPS = {op.code: op for op in (*FINISH.ops, *ENQUEUE.ops)}

TOUCH = Script(
    "touch",
    keys=("stream",),
    args=("consumer",),
    each_args=("entry",),
    lua="local touched = 0\n",
    # resets the idle time of entries this consumer still holds
    each_lua="""
    if #redis.call('XPENDING', stream, GROUP, entry, entry, 1, consumer) > 0 then
      redis.call('XCLAIM', stream, GROUP, consumer, 0, entry, 'JUSTID')
      touched = touched + 1
    end
    """,
    after_lua="return touched\n",
)

REPLAY = Script(
    "replay",
    keys=("dlq", "stream", "result_key", "state_key"),
    args=("letter", "id", "state", "ttl_ms"),
    lua="""
    local e = redis.call('XRANGE', dlq, letter, letter)
    if #e == 0 then return 0 end
    local f, record = e[1][2], nil
    for j = 1, #f, 2 do if f[j] == 'r' then record = f[j + 1] end end
    if not record then return 0 end
    local entry = redis.call('XADD', stream, '*', F_RECORD, record, F_ATTEMPT, '0', F_ID, id)
    redis.call('XDEL', dlq, letter)
    redis.call('DEL', result_key)
    redis.call('SET', state_key, filled(state, entry), 'PX', ttl_ms)
    return 1
    """,
)

PURGE = Script(
    "purge",
    keys=("dlq",),
    args=(),
    lua="local n = redis.call('XLEN', dlq)\nredis.call('DEL', dlq)\nreturn n\n",
)

# Compare and set: the state Python read and decided on must still be there. A stream
# entry is taken back only while no consumer holds it (the PEL, not the "processing"
# mark, which may lag a claim); a delayed one is found among the members due at its
# due time (the state's "d": the score exactly as written), by its request id.
_PAGE = 100
CANCEL = Script(
    "cancel",
    keys=("stream", "delayed", "state_key"),
    args=("seen", "id", "entry", "due_at", "state", "ttl_ms"),
    lua=f"""
    if redis.call('GET', state_key) ~= seen then return 'changed' end
    if entry ~= '' then
      if #redis.call('XPENDING', stream, GROUP, entry, entry, 1) > 0 then return 'busy' end
      if redis.call('XDEL', stream, entry) == 0 then return 'busy' end
    else
      local head, removed, offset, page = {MEMBER_HEAD.size}, 0, 0, {{}}
      repeat
        page = redis.call('ZRANGEBYSCORE', delayed, due_at, due_at, 'LIMIT', offset, {_PAGE})
        for _, m in ipairs(page) do
          if #m >= head + #id and struct.unpack('>H', m, 5) == #id
            and string.sub(m, head + 1, head + #id) == id then
            removed = removed + redis.call('ZREM', delayed, m)
          end
        end
        offset = offset + {_PAGE}
      until removed > 0 or #page < {_PAGE}
      if removed == 0 then return 'busy' end
    end
    redis.call('SET', state_key, state, 'PX', ttl_ms)
    return 'cancelled'
    """,
)

SCRIPTS = (ENQUEUE, FINISH, TOUCH, REPLAY, PURGE, CANCEL)
