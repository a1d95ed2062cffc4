"""The figures of a Redis Streams queue that answer the 3 a.m. questions: how much waits,
since when, who is consuming, what is stuck, what fills Redis (docs/architecture.md §4).

Read-only and bounded: a few commands per queue, one SCAN sample for the results of
every queue read together, never a full KEYS. Key names come from hqm.queue.keys only.

- backlog: entries not yet claimed. The group's ``lag`` when Redis reports it; it is
  null once entries were deleted past the group's position, and then ``XLEN - pending``
  is exact, because acknowledged entries are deleted with their acknowledgement (XLEN =
  unfinished = waiting + pending).
- scheduled: the ``delayed`` sorted set as one figure (retries waiting for their due
  time, and requests delayed by the client). Its members do not say cheaply which is
  which: telling them apart means reading every member, encoded request included.
- oldest age: from the id of the first entry after the group's last-delivered id (the
  oldest one no worker claimed yet), an XADD time on Redis's clock, measured against
  Redis's ``TIME``.
- consumers: a consumer is alive while its heartbeat key exists (``hqm.worker.heartbeat``:
  written every --heartbeat seconds, expiring after 3 of them, deleted on clean exit),
  not by its idle time, which grows while an idle worker blocks in XREADGROUP. The
  worker also creates its consumer (XGROUP CREATECONSUMER), so an idle one is listed.
  Its idle time still says when it last read, claimed or renewed (or the oldest entry
  it holds past ``alive_within_s``, the workers' visibility timeout: being reclaimed).
  "Stuck" is what waits with none alive.
- results: the ``res:`` keys, counted in a SCAN sample (exact when the sample covered
  the database, else scaled by DBSIZE; on a cluster, the queue's slot) and their memory
  from MEMORY USAGE of a few of them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from hqm.queue import keys as keys_module
from hqm.queue.keys import QueueKeys
from hqm.queue.redis_codec import errors, text
from hqm.queue.redis_conn import connect

#: Keys one results sample looks at: a background refresh every few seconds on every
#: worker must stay cheap; ``hqm status`` asks for more.
SAMPLE_KEYS = 1000
#: Keys per SCAN call (Redis's own default is 10: too many round trips).
_SCAN_BATCH = 500
#: Result keys whose MEMORY USAGE is asked for: the average of a few is the estimate.
MEMORY_SAMPLES = 16
#: Entries held past the visibility timeout that one read lists (XPENDING IDLE).
_STALE_LIMIT = 100
#: Sphinx roles and literals in a docstring (":data:`GROUP`", "``x``"): shown bare.
_ROLE = re.compile(r"(?::\w+:)?`+([^`]*)`+")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerStats:
    name: str
    #: Seconds since it last read, claimed or renewed (the oldest entry it holds, if it
    #: holds one past the alive threshold).
    idle_s: float
    #: Entries it holds (claimed, not finished).
    pending: int
    #: Its heartbeat key exists (hqm.worker.heartbeat).
    alive: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultsHeld:
    """The results (``res:`` keys) of one queue and the Redis memory they take."""

    count: int
    memory_bytes: int
    #: Counted key by key (the sample covered every key); else scaled from a sample.
    exact: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    queue: str
    #: False: no proxy or worker has used this queue name on this Redis.
    stream_exists: bool
    backlog: int
    pending: int
    #: Retries and delayed requests waiting for their time (the ``delayed`` set).
    scheduled: int
    #: Of those, the ones already due (a worker moves them within a second).
    due: int
    dead_letters: int
    #: Age of the oldest request no worker claimed yet (0 when none waits).
    oldest_age_s: float
    consumers: tuple[ConsumerStats, ...]
    #: The threshold ``alive`` was judged by.
    alive_within_s: float
    #: None: they could not be counted (SCAN or MEMORY refused, e.g. by an ACL).
    results: ResultsHeld | None
    #: Seconds left of a pause the app asked for (429/503 Retry-After), 0 when none.
    paused_s: float
    #: The fleet's enforced rate (--global-rate, lowered by 429/503), None when unset.
    effective_rate: float | None
    #: Redis's clock when read (epoch seconds).
    read_at: float

    @property
    def alive(self) -> int:
        return sum(1 for c in self.consumers if c.alive)

    @property
    def depth(self) -> int:
        """What --max-depth counts: unfinished entries and scheduled ones."""
        return self.backlog + self.pending + self.scheduled


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyName:
    """A key of the queue (or a pattern of one per request, with ``*``) and what it is."""

    name: str
    meaning: str


def key_inventory(keys: QueueKeys) -> tuple[KeyName, ...]:
    """Every key name ``keys`` builds: each property naming a key, and each builder of
    one key per request or instance as a pattern (``res:*``)."""
    out = []
    for attr, member in vars(QueueKeys).items():
        if attr.startswith("_"):
            continue
        if isinstance(member, property):
            name = getattr(keys, attr)
        elif inspect.isfunction(member) and len(inspect.signature(member).parameters) == 2:
            name = member(keys, "*")
        else:
            continue
        if isinstance(name, str) and name.startswith(keys.prefix):
            doc = (inspect.getdoc(member) or "").split("\n\n")[0].replace("\n", " ")
            out.append(KeyName(name=name, meaning=_ROLE.sub(_named, doc)))
    return tuple(out)


def _named(role: re.Match[str]) -> str:
    """A constant of hqm.queue.keys by its value (":data:`GROUP`" is "hqm"), else bare."""
    value = getattr(keys_module, role[1], None)
    return value if isinstance(value, str) else role[1]


def _is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def _failed(reply: Any) -> bool:
    return isinstance(reply, ResponseError)


def _int(reply: Any) -> int:
    return 0 if _failed(reply) or reply is None else int(reply)


async def redis_time(redis: Any) -> float:
    seconds, micros = await redis.time()
    return int(seconds) + int(micros) / 1e6


async def read_stats(
    redis: Any,
    queue: str,
    *,
    alive_within_s: float,
    now: float | None = None,
    sample_keys: int = SAMPLE_KEYS,
) -> QueueStats:
    """The figures of ``queue``. ``now`` (epoch seconds) defaults to Redis's clock, the
    one entry ids are made on; ``sample_keys`` bounds the results sample.
    QueueUnavailable when Redis fails."""
    with errors("stats"):
        if now is None:
            now = await redis_time(redis)
        held = await results_held(redis, [queue], max_keys=sample_keys)
        return await _read_queue(redis, queue, alive_within_s, now, held[queue])


async def _read_queue(
    redis: Any, queue: str, alive_within_s: float, now: float, results: ResultsHeld | None
) -> QueueStats:
    keys = QueueKeys(queue)
    idle_ms = max(1, round(alive_within_s * 1000))
    pipe = redis.pipeline(transaction=False)
    pipe.xinfo_groups(keys.stream)
    pipe.xlen(keys.stream)
    pipe.zcard(keys.delayed)
    pipe.zcount(keys.delayed, "-inf", repr(float(now)))
    pipe.xlen(keys.dlq)
    pipe.xinfo_consumers(keys.stream, keys.group)
    pipe.xpending_range(keys.stream, keys.group, min="-", max="+", count=_STALE_LIMIT, idle=idle_ms)
    pipe.pttl(keys.pause)
    pipe.hget(keys.global_rate, "eff")
    replies = await pipe.execute(raise_on_error=False)
    groups, length, scheduled, due, dlq, consumers, stale, pause, rate = replies
    consumers = [] if _failed(consumers) else consumers
    beats = redis.pipeline(transaction=False)  # a consumer is alive while its key exists
    for consumer in consumers:
        beats.exists(keys.heartbeat(text(consumer["name"])))
    alive = await beats.execute(raise_on_error=False) if consumers else []
    listed = [] if _failed(groups) else groups
    group = next((g for g in listed if text(g["name"]) == keys.group), None)
    pending = int(group["pending"]) if group else 0
    backlog = max(0, _int(length) - pending)
    if group and group.get("lag") is not None:
        backlog = int(group["lag"])
    oldest = 0.0
    if backlog and group:
        first = await redis.xrange(
            keys.stream, min="(" + text(group["last-delivered-id"]), max="+", count=1
        )
        if first:
            oldest = max(0.0, now - int(text(first[0][0]).split("-")[0]) / 1000)
    return QueueStats(
        queue=queue,
        stream_exists=not _failed(groups),
        backlog=backlog,
        pending=pending,
        scheduled=_int(scheduled),
        due=_int(due),
        dead_letters=_int(dlq),
        oldest_age_s=oldest,
        consumers=_consumers(consumers, stale, [_int(a) > 0 for a in alive]),
        alive_within_s=alive_within_s,
        results=results,
        paused_s=max(0, _int(pause)) / 1000,
        effective_rate=None if rate is None or _failed(rate) else float(rate),
        read_at=now,
    )


def _consumers(listed: list[Any], stale: Any, alive: list[bool]) -> tuple[ConsumerStats, ...]:
    held_idle: dict[str, int] = {}  # consumer -> its oldest entry held past idle_ms
    for entry in [] if _failed(stale) else stale:
        name = text(entry["consumer"])
        held_idle[name] = max(held_idle.get(name, 0), int(entry["time_since_delivered"]))
    out = []
    for consumer, beating in zip(listed, alive, strict=True):
        name = text(consumer["name"])
        idle = max(int(consumer["idle"]), held_idle.get(name, 0))
        out.append(
            ConsumerStats(
                name=name,
                idle_s=idle / 1000,
                pending=int(consumer["pending"]),
                alive=beating,
            )
        )
    return tuple(sorted(out, key=lambda c: (not c.alive, c.idle_s, c.name)))


async def results_held(
    redis: Any, queues: Sequence[str], *, max_keys: int = SAMPLE_KEYS
) -> dict[str, ResultsHeld | None]:
    """Results of each queue from one bounded sample of keys (per queue on a cluster:
    its slot). None for every queue when Redis refuses the commands (an ACL)."""
    prefixes = {queue: QueueKeys(queue).result("").encode() for queue in queues}
    try:
        if _is_cluster(redis):
            out = {}
            for queue, prefix in prefixes.items():
                slot = redis.keyslot(QueueKeys(queue).stream)
                total = int(await redis.cluster_countkeysinslot(slot))
                sample = _as_bytes(await redis.cluster_get_keys_in_slot(slot, max_keys))
                out[queue] = await _estimate(redis, sample, prefix, total)
            return out
        sample, total = await _scan_sample(redis, max_keys)
        return {q: await _estimate(redis, sample, p, total) for q, p in prefixes.items()}
    except ResponseError:
        return dict.fromkeys(queues)


def _as_bytes(names: Iterable[bytes | str]) -> set[bytes]:
    return {n if isinstance(n, bytes) else n.encode() for n in names}


async def _scan_sample(redis: Any, max_keys: int) -> tuple[set[bytes], int]:
    """Up to about ``max_keys`` key names from the start of a SCAN, and how many keys
    the database holds (the sample's own size when the SCAN came round)."""
    seen: set[bytes] = set()
    cursor = 0
    while True:
        cursor, batch = await redis.scan(cursor, count=_SCAN_BATCH)
        seen |= _as_bytes(batch)  # (a SCAN may return a key twice)
        if int(cursor) == 0:
            return seen, len(seen)
        if len(seen) >= max_keys:
            return seen, int(await redis.dbsize())


async def _estimate(redis: Any, sample: set[bytes], prefix: bytes, total: int) -> ResultsHeld:
    matches = sorted(name for name in sample if name.startswith(prefix))
    complete = total <= len(sample)
    count = len(matches) if complete else round(len(matches) * total / max(1, len(sample)))
    sizes: list[int] = []
    if matches:
        pipe = redis.pipeline(transaction=False)
        for name in matches[:MEMORY_SAMPLES]:
            pipe.memory_usage(name)
        sizes = [int(s) for s in await pipe.execute() if s is not None]  # (expired meanwhile)
    memory = round(sum(sizes) / len(sizes) * count) if sizes else 0
    return ResultsHeld(count=count, memory_bytes=memory, exact=complete and len(sizes) == count)


class StatsReader:
    """Reads the figures of several queues over connections of its own (so a slow read
    never queues behind the worker's round trips)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._clients = connect(url, timeout_s, timeout_s)

    async def read(
        self, queues: Sequence[str], *, alive_within_s: float, sample_keys: int = SAMPLE_KEYS
    ) -> list[QueueStats]:
        redis = self._clients.main
        with errors("stats"):
            now = await redis_time(redis)
            held = await results_held(redis, queues, max_keys=sample_keys)
            return [
                await _read_queue(redis, queue, alive_within_s, now, held[queue])
                for queue in queues
            ]

    async def close(self) -> None:
        for client in (self._clients.main, self._clients.blocking, *self._clients.extra):
            await client.aclose()
