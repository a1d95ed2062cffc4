"""``hqm status``: what a queue holds, since when, who consumes it, and whether it is
stuck. Exit 0 healthy; 1 when no consumer is alive while work waits, when the oldest
waiting request is older than ``--max-age``, or when Redis cannot be read; 2 on usage
errors. ``--keys`` prints the queue's Redis key names for a redis-cli user."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import orjson

from hqm.cli.common import UsageFailure, help_text, settings_or_exit, table_options
from hqm.config.options import redact_url
from hqm.config.tables import QUEUE
from hqm.config.tables_status import STATUS
from hqm.queue.base import QueueError
from hqm.queue.keys import GROUP, QueueKeys
from hqm.queue.redis_stats import QueueStats, StatsReader, key_inventory

#: Keys the results sample of one ``hqm status`` looks at (a one-off: more than the
#: background refresh's, a few dozen SCAN calls at most).
_SAMPLE_KEYS = 20_000
#: Seconds each Redis command may take.
_TIMEOUT_S = 3.0
#: Dead consumers listed in the text table (JSON lists all): old ones pile up, one per
#: worker process that was killed, until someone deletes them.
_DEAD_SHOWN = 10
_QUEUES = "hqm.status.queues"
_BREAKER = "not in Redis: per worker, gauge hqm_worker_breaker_state on its /metrics"


def _first_queue(ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]):
    """``--queue`` may repeat: the options table resolves the first (so ``config check``
    shows it), the command reads them all."""
    ctx.meta[_QUEUES] = values
    return values[0] if values else None


def _queue_names(value: str) -> list[str]:
    """The queues: every ``--queue`` given, else the one of the environment or file."""
    names: list[str] = []
    for raw in click.get_current_context().meta.get(_QUEUES) or (value,):
        try:
            name = QUEUE.parse(raw)
        except ValueError as exc:
            raise UsageFailure(f"--queue: {exc}") from None
        if name not in names:
            names.append(name)
    return names


@click.command()
@click.option(
    "--queue",
    "queue",
    multiple=True,
    callback=_first_queue,
    metavar="NAME",
    help=help_text(STATUS, QUEUE) + " Repeat for several.",
)
@table_options(STATUS, without=("queue",))
@click.option("--json", "as_json", is_flag=True, help="One JSON object, stable keys.")
def status(as_json: bool, **flags) -> None:
    """Backlog, in-flight, scheduled and dead requests of each queue, the age of the
    oldest waiting one, the consumers and the results held. Exit 1 when a queue is
    stuck (no consumer alive while work waits) or too old (--max-age)."""
    values = settings_or_exit(STATUS, flags)
    queues = _queue_names(values["queue"])
    if values["keys"]:
        _print_keys(queues, as_json)
        return
    url = values["redis"]
    if url is None:
        raise UsageFailure(
            "--redis is required (or HQM_STATUS_REDIS or HQM_REDIS, or redis in [status] of "
            "the --config file)"
        )
    alive_within = values["visibility-timeout"]
    read = _read(url, queues, alive_within)
    reports = [(stats, _problems(stats, values["max-age"])) for stats in read]
    if as_json:
        out = {
            "healthy": not any(problems for _, problems in reports),
            "queues": [_as_dict(stats, problems) for stats, problems in reports],
        }
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo("\n\n".join(_table(stats, problems) for stats, problems in reports))
    if any(problems for _, problems in reports):
        raise SystemExit(1)


def _read(url: str, queues: list[str], alive_within_s: float) -> list[QueueStats]:
    async def main() -> list[QueueStats]:
        reader = StatsReader(url, timeout_s=_TIMEOUT_S)
        try:
            return await reader.read(
                queues, alive_within_s=alive_within_s, sample_keys=_SAMPLE_KEYS
            )
        finally:
            await reader.close()

    try:
        return asyncio.run(main())
    except ValueError as exc:  # a URL redis-py cannot use (bad port, sentinel path)
        raise UsageFailure(f"--redis: {exc}") from None
    except QueueError as exc:
        reason = " ".join(str(exc).split())
        raise click.ClickException(f"redis {redact_url(url)} unreachable: {reason}") from None


def _problems(stats: QueueStats, max_age_s: float) -> list[str]:
    out = []
    waiting = stats.backlog + stats.pending + stats.due
    if waiting and not stats.alive:
        out.append(
            f"stuck: {waiting} request(s) wait and no consumer is alive (no worker "
            "heartbeat: workers down, or cut off from Redis)"
        )
    if max_age_s and stats.oldest_age_s > max_age_s:
        out.append(
            f"too old: the oldest waiting request is {_duration(stats.oldest_age_s)} old "
            f"(--max-age {_duration(max_age_s)})"
        )
    return out


def _as_dict(stats: QueueStats, problems: list[str]) -> dict[str, Any]:
    results = stats.results
    return {
        "queue": stats.queue,
        "stream": QueueKeys(stats.queue).stream,
        "stream_exists": stats.stream_exists,
        "backlog": stats.backlog,
        "pending": stats.pending,
        "scheduled": stats.scheduled,
        "due": stats.due,
        "dead_letters": stats.dead_letters,
        "oldest_age_s": round(stats.oldest_age_s, 3),
        "alive_within_s": stats.alive_within_s,
        "consumers_alive": stats.alive,
        "consumers": [
            {"name": c.name, "idle_s": c.idle_s, "pending": c.pending, "alive": c.alive}
            for c in stats.consumers
        ],
        "paused_s": stats.paused_s,
        "effective_rate": stats.effective_rate,
        "breaker": None,
        "breaker_note": _BREAKER,
        "results": None
        if results is None
        else {"count": results.count, "memory_bytes": results.memory_bytes, "exact": results.exact},
        "problems": problems,
    }


def _table(stats: QueueStats, problems: list[str]) -> str:
    keys = QueueKeys(stats.queue)
    lines = [f"queue {stats.queue}  ({keys.stream}, group {keys.group})"]
    if not stats.stream_exists:
        lines.append("  (no stream: no proxy or worker has used this queue on this Redis)")

    def row(name: str, value: object, note: str = "") -> None:
        lines.append(f"  {name:<15} {value!s:>8}  {note}".rstrip())

    row("backlog", stats.backlog, "waiting, not claimed by a worker yet")
    row("pending", stats.pending, "claimed by a worker, not finished")
    row("scheduled", stats.scheduled, f"retries and delayed requests ({stats.due} due)")
    row("dead letters", stats.dead_letters, "hqm dlq list" if stats.dead_letters else "")
    row("oldest waiting", _duration(stats.oldest_age_s) if stats.backlog else "-")
    row("paused", _duration(stats.paused_s) if stats.paused_s else "no", "app's Retry-After")
    if stats.effective_rate is not None:
        row("enforced rate", f"{stats.effective_rate:g}/s", "--global-rate, lowered by 429/503")
    row("breaker", "-", _BREAKER)
    if stats.results is None:
        row("results", "?", "not counted: SCAN or MEMORY USAGE refused")
    else:
        held = stats.results
        how = "counted" if held.exact else "estimated from a key sample"
        row("results", held.count, f"{_size(held.memory_bytes)} of Redis memory, {how}")
    row("consumers", f"{stats.alive} alive", f"of {len(stats.consumers)} (by their heartbeat)")
    if stats.consumers:
        shown = [c for c in stats.consumers if c.alive]
        dead = [c for c in stats.consumers if not c.alive]
        shown += dead[:_DEAD_SHOWN]
        width = max(len("NAME"), *(len(c.name) for c in shown))
        lines.append(f"    {'NAME':<{width}}  {'IDLE':>9}  {'PENDING':>7}  ALIVE")
        for c in shown:
            alive = "yes" if c.alive else "no"
            lines.append(
                f"    {c.name:<{width}}  {_duration(c.idle_s):>9}  {c.pending:>7}  {alive}"
            )
        if len(dead) > _DEAD_SHOWN:
            lines.append(f"    ... and {len(dead) - _DEAD_SHOWN} more dead (see --json)")
    lines.append(f"  {'health':<15} {'ok' if not problems else 'PROBLEM':>8}")
    lines.extend(f"    {problem}" for problem in problems)
    return "\n".join(lines)


def _print_keys(queues: list[str], as_json: bool) -> None:
    listing = [(queue, key_inventory(QueueKeys(queue))) for queue in queues]
    if as_json:
        out = {
            "queues": [
                {
                    "queue": queue,
                    "group": GROUP,
                    "keys": [{"name": k.name, "meaning": k.meaning} for k in names],
                }
                for queue, names in listing
            ]
        }
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    blocks = []
    for queue, names in listing:
        width = max(len(k.name) for k in names)
        lines = [f"queue {queue} (consumer group {GROUP}; * = one key per request or process)"]
        lines += [f"  {k.name:<{width}}  {k.meaning}" for k in names]
        stream, results = QueueKeys(queue).stream, QueueKeys(queue).result("*")
        lines += [
            "  e.g.",
            f"    redis-cli XINFO GROUPS '{stream}'",
            f"    redis-cli XINFO CONSUMERS '{stream}' {GROUP}",
            f"    redis-cli --scan --pattern '{results}'",
        ]
        blocks.append("\n".join(lines))
    click.echo("\n\n".join(blocks))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value, units = count / 1024, ["KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    return f"{value:.1f} {units[0]}"
