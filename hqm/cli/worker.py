"""``hqm worker``: replay queued requests to the app."""

from __future__ import annotations

import click

from hqm.cli.common import run, settings_or_exit, table_options
from hqm.config.build import worker_run
from hqm.config.tables import WORKER
from hqm.ops.logs import setup as setup_logging
from hqm.worker.loop import QueueUnreachable


@click.command()
@table_options(WORKER)
def worker(**flags) -> None:
    """Replay queued requests to the app at the rate it can bear; record its answers."""
    values = settings_or_exit(WORKER, flags)
    settings = worker_run(values)
    setup_logging(values["log-level"])
    from hqm.assembly import run_worker

    try:
        run(run_worker(settings))
    except QueueUnreachable as exc:
        raise click.ClickException(str(exc)) from None
