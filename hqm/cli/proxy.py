"""``hqm proxy``: accept, queue, answer."""

from __future__ import annotations

import click

from hqm.cli.common import run, settings_or_exit, table_options
from hqm.config.build import proxy_settings
from hqm.config.tables import PROXY
from hqm.ops.logs import setup as setup_logging


@click.command()
@table_options(PROXY)
def proxy(**flags) -> None:
    """Accept requests, queue them, answer 202 (or the app's response in wait mode).

    Without --redis an in-process worker drains an embedded (non-durable) queue.
    """
    values = settings_or_exit(PROXY, flags)
    settings = proxy_settings(values)
    setup_logging(values["log-level"])
    from hqm.assembly import run_proxy

    run(run_proxy(settings))
