"""``hqm iptables``: install (or ``--cleanup`` remove) the nat rules of transparent
mode in the current network namespace; ``--dry-run`` only prints them."""

from __future__ import annotations

import click

from hqm.cli.common import build_or_exit, settings_or_exit, table_options
from hqm.config.build import iptables_run
from hqm.config.tables_iptables import IPTABLES
from hqm.io.iptables_apply import (
    IptablesError,
    apply,
    choose_backend,
    cleanup,
    describe,
    describe_cleanup,
)


@click.command()
@table_options(IPTABLES)
def iptables(**flags) -> None:
    """Redirect the app's inbound TCP ports to hqm proxy (nat PREROUTING -> chains
    HQM_INBOUND, HQM_IN_REDIRECT). Run it once per pod, e.g. in an init container with
    NET_ADMIN; running it again changes nothing."""
    run = build_or_exit(lambda: iptables_run(settings_or_exit(IPTABLES, flags)))
    if run.dry_run:
        for plan, rules in zip(run.plans, run.rule_sets, strict=True):
            click.echo(f"# {plan.family}: {plan.family.iptables}-restore --noflush")
            text = rules.cleanup_text() if run.cleanup else rules.restore_text()
            click.echo(text, nl=False)
        return
    try:
        for plan, rules in zip(run.plans, run.rule_sets, strict=True):
            backend = choose_backend(run.mode, plan.family)
            if run.cleanup:
                click.echo(describe_cleanup(plan.family, cleanup(backend)))
            else:
                click.echo(describe(plan, apply(rules, backend)))
    except IptablesError as exc:
        raise click.ClickException(str(exc)) from None
