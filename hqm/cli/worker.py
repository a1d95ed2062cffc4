"""``hqm worker``: replay queued requests to the app."""

from __future__ import annotations

import click

from hqm.cli.common import build_or_exit, resolved_or_exit, run, table_options
from hqm.cli.supervise import Children, check_admin, command_line, mark_child_logs, supervise
from hqm.config.build import process_count, worker_run
from hqm.config.openhqm_env import log_ignored
from hqm.config.tables import WORKER
from hqm.ops.logs import setup as setup_logging
from hqm.worker.loop import QueueUnreachable


@click.command()
@table_options(WORKER)
def worker(**flags) -> None:
    """Replay queued requests to the app at the rate it can bear; record its answers."""
    resolved = resolved_or_exit(WORKER, flags)
    values = resolved.effective
    settings = build_or_exit(lambda: worker_run(values))
    count = build_or_exit(lambda: process_count(values))
    setup_logging(values["log-level"])
    if count > 1:
        check_admin(settings.admin, count)
        consumer = settings.worker.consumer
        supervise(
            Children(count=count, base=command_line(), admin=settings.admin, consumer=consumer)
        )
    mark_child_logs()
    log_ignored(resolved.ignored)
    from hqm.assembly import run_worker

    try:
        run(run_worker(settings))
    except QueueUnreachable as exc:
        raise click.ClickException(str(exc)) from None
