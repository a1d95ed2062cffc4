"""The ``hqm`` command line: one module per command, options from ``hqm.config``."""

from __future__ import annotations

import sys

import click

from hqm import __version__
from hqm.cli.common import HELP_OPTIONS
from hqm.cli.config_check import config
from hqm.cli.dlq import dlq
from hqm.cli.iptables import iptables
from hqm.cli.proxy import proxy
from hqm.cli.routes import routes
from hqm.cli.status import status
from hqm.cli.worker import worker


@click.group(context_settings={"max_content_width": 100, "help_option_names": HELP_OPTIONS})
@click.version_option(__version__, prog_name="hqm")
def main() -> None:
    """OpenHQM: a durable queue in front of any HTTP/1.1 app."""


for _command in (proxy, worker, dlq, config, iptables, status, routes):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
