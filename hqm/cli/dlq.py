"""``hqm dlq list | show ID | replay [ID | --all] | purge``: the dead-letter stream."""

from __future__ import annotations

import asyncio
import datetime

import click
import orjson

from hqm.cli.common import UsageFailure, settings_or_exit, table_options
from hqm.config.tables import DLQ
from hqm.queue.base import DeadLetter, Queue, QueueError


def _open(redis_url: str, queue: str) -> Queue:
    from hqm.queue.redis_streams import RedisQueue

    return RedisQueue(redis_url, queue)


def _letter_dict(letter: DeadLetter, *, full: bool) -> dict:
    record = letter.record
    out = {
        "entry": letter.entry_id,
        "id": record.id,
        "method": record.method.decode("latin-1"),
        "target": record.target.decode("latin-1"),
        "attempts": letter.attempts,
        "error": letter.error,
        "dead_at": letter.dead_at,
        "received_at": record.received_at,
    }
    if full:
        out["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in record.headers]
        out["body_bytes"] = len(record.body)
        out["body_preview"] = record.body[:200].decode("utf-8", "replace")
    return out


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _run(redis_url: str, queue: str, action):
    async def main():
        try:
            q = _open(redis_url, queue)
        except ValueError as exc:  # a URL redis-py cannot use (bad port, sentinel path)
            raise UsageFailure(f"--redis: {exc}") from None
        try:
            return await action(q)
        finally:
            await q.close()

    try:
        return asyncio.run(main())
    except QueueError as exc:
        raise click.ClickException(f"queue unavailable: {exc}") from None


def _values(flags: dict) -> tuple[str, str]:
    values = settings_or_exit(DLQ, flags)
    return values["redis"], values["queue"]


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered requests."""


@dlq.command("list")
@table_options(DLQ)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(as_json: bool, **flags) -> None:
    """List dead letters, oldest first."""
    values = settings_or_exit(DLQ, flags)
    count = values["count"]
    # (one more than shown: whether the list is whole)
    letters = _run(values["redis"], values["queue"], lambda q: q.dead_letters(count + 1))
    if len(letters) > count:
        letters = letters[:count]
        click.echo(  # on stderr: stdout stays the list
            f"showing the oldest {count} dead letters; more follow (`hqm status` counts "
            "them; --count N lists more)",
            err=True,
        )
    if as_json:
        for letter in letters:
            click.echo(orjson.dumps(_letter_dict(letter, full=False)))
        return
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(f"{'ENTRY':<17} {'DIED (UTC)':<19} {'TRIES':>5}  REQUEST  ERROR")
    for letter in letters:
        request = (
            f"{letter.record.method.decode('latin-1')} {letter.record.target.decode('latin-1')}"
        )
        click.echo(
            f"{letter.entry_id:<17} {_when(letter.dead_at):<19} {letter.attempts:>5}  "
            f"{request}  {letter.error}"
        )


@dlq.command()
@table_options(DLQ, without=("count",))
@click.argument("entry")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object, the body's first 200 bytes."
)
def show(entry: str, as_json: bool, **flags) -> None:
    """Show one dead letter in full."""
    redis_url, queue = _values(flags)
    letter = _run(redis_url, queue, lambda q: q.dead_letter_get(entry))
    if letter is None:
        raise click.ClickException(f"no dead letter {entry!r} in queue {queue!r}")
    data = _letter_dict(letter, full=True)
    if as_json:
        click.echo(orjson.dumps(data))
        return
    for key, value in data.items():
        if key == "headers":
            click.echo("headers:")
            for name, val in value:
                click.echo(f"  {name}: {val}")
        elif key in ("dead_at", "received_at"):
            click.echo(f"{key}: {_when(value)} UTC ({value:.3f})")
        else:
            click.echo(f"{key}: {value}")


@dlq.command()
@table_options(DLQ, without=("count",))
@click.argument("entry", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--json", "as_json", is_flag=True, help='JSON: {"replayed": [ENTRY, ...]}.')
def replay(entry: str | None, replay_all: bool, as_json: bool, **flags) -> None:
    """Queue dead letters again (attempts start over)."""
    if bool(entry) == replay_all:
        raise click.UsageError("give one ENTRY or --all")
    redis_url, queue = _values(flags)

    async def action(q: Queue) -> list[str]:
        if entry:
            return [entry] if await q.replay_dead_letter(entry) else []
        done: list[str] = []
        after = None
        while letters := await q.dead_letters(500, after=after):
            after = letters[-1].entry_id  # page on: unreplayable letters are skipped
            done.extend([le.entry_id for le in letters if await q.replay_dead_letter(le.entry_id)])
        return done

    replayed = _run(redis_url, queue, action)
    if entry and not replayed:
        raise click.ClickException(f"no dead letter {entry!r} in queue {queue!r}")
    if as_json:
        click.echo(orjson.dumps({"replayed": replayed}))
    else:
        click.echo(f"replayed {len(replayed)} dead letter(s)")


@dlq.command()
@table_options(DLQ, without=("count",))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help='JSON: {"purged": COUNT}.')
def purge(yes: bool, as_json: bool, **flags) -> None:
    """Delete every dead letter of the queue."""
    redis_url, queue = _values(flags)
    if not yes:
        click.confirm(f"Delete every dead letter of queue {queue!r}?", abort=True)
    count = _run(redis_url, queue, lambda q: q.purge_dead_letters())
    if as_json:
        click.echo(orjson.dumps({"purged": count}))
    else:
        click.echo(f"purged {count} dead letter(s)")
