"""``hqm proxy``: accept, queue, answer."""

from __future__ import annotations

import click

from hqm.cli.common import build_or_exit, resolved_or_exit, run, table_options
from hqm.cli.supervise import (
    Children,
    check_admin,
    command_line,
    mark_child_logs,
    reserve,
    supervise,
)
from hqm.config.build import process_count, proxy_settings
from hqm.config.openhqm_env import log_ignored
from hqm.config.tables import PROXY
from hqm.ops.logs import setup as setup_logging

#: The exit status of a proxy that stopped with accepted requests undelivered (its
#: embedded queue was not empty by --drain-timeout); 2 is a usage error.
EXIT_UNDELIVERED = 1


@click.command()
@table_options(PROXY)
def proxy(**flags) -> None:
    """Accept requests, queue them, answer 202 (or the app's response in wait mode).

    Without --redis an in-process worker drains an embedded (non-durable) queue.
    """
    resolved = resolved_or_exit(PROXY, flags)
    values = resolved.effective
    settings = build_or_exit(lambda: proxy_settings(values))
    count = build_or_exit(lambda: process_count(values))
    setup_logging(values["log-level"])
    if count > 1:
        check_admin(settings.admin, count)
        reserved, listen = reserve(settings.listen)
        children = Children(count=count, base=command_line(), admin=settings.admin, listen=listen)
        supervise(children, reserved)
    child = mark_child_logs()
    log_ignored(resolved.ignored)
    from hqm.assembly import run_proxy

    # (a supervisor's child shares the port with its siblings)
    undelivered = run(run_proxy(settings, reuse_port=child is not None))
    if undelivered:  # (embedded queue: accepted requests lost at exit, logged)
        raise SystemExit(EXIT_UNDELIVERED)
