"""``hqm proxy``: accept, queue, answer."""

from __future__ import annotations

import click

from hqm.cli.common import build_or_exit, resolved_or_exit, run, table_options
from hqm.config.build import proxy_settings
from hqm.config.openhqm_env import log_ignored
from hqm.config.tables import PROXY
from hqm.ops.logs import setup as setup_logging


@click.command()
@table_options(PROXY)
def proxy(**flags) -> None:
    """Accept requests, queue them, answer 202 (or the app's response in wait mode).

    Without --redis an in-process worker drains an embedded (non-durable) queue.
    """
    resolved = resolved_or_exit(PROXY, flags)
    values = resolved.effective
    settings = build_or_exit(lambda: proxy_settings(values))
    setup_logging(values["log-level"])
    log_ignored(resolved.ignored)
    from hqm.assembly import run_proxy

    run(run_proxy(settings))
