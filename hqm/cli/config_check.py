"""``hqm config check [--config FILE] [--json] [COMMAND [FLAGS...]]``: the effective
settings of a command, each with its source, exactly as the command would resolve them.
Exit 2 on any error: what a platform engineer runs against a ConfigMap."""

from __future__ import annotations

import os
from typing import Any

import click
import orjson

from hqm.cli.common import HELP_OPTIONS, UsageFailure
from hqm.config.build import replay_key, route_table
from hqm.config.commands import COMMANDS
from hqm.config.openhqm_env import resolve_aliased, why_ignored
from hqm.config.options import ConfigError, Option
from hqm.config.resolve import Effective, Setting, load_file


@click.group()
def config() -> None:
    """Check configuration: options tables, environment and --config file."""


def _command_flags(name: str, args: tuple[str, ...]) -> dict[str, Any]:
    """The command's own click parser reads FLAGS, so they mean what they mean there."""
    from hqm.cli.dlq import list_
    from hqm.cli.iptables import iptables
    from hqm.cli.proxy import proxy
    from hqm.cli.status import status
    from hqm.cli.worker import worker

    command = {
        "proxy": proxy,
        "worker": worker,
        "dlq": list_,
        "iptables": iptables,
        "status": status,
    }[name]
    try:
        ctx = command.make_context(
            f"hqm {name}", list(args), resilient_parsing=False, help_option_names=HELP_OPTIONS
        )
    except click.exceptions.Exit:
        raise
    except click.ClickException as exc:
        raise UsageFailure(exc.format_message()) from None
    params = dict(ctx.params)
    params.pop("as_json", None)
    return params


def _json_value(setting: Setting) -> Any:
    value = setting.value
    if setting.option.display is not None and value:
        return setting.option.shown(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _shown(option: Option, value: Any) -> str:
    if value is None and option.name == "admin":
        return "off"
    return option.shown(value)


def _source(setting: Setting) -> str:
    if setting.source.value == "flag":
        return "flag"
    if setting.source.value == "default":  # "default", or which OpenHQM default
        return setting.origin
    return f"{setting.source.value} {setting.origin}"


def _used(effective: Effective) -> list[Setting]:
    """The settings the command will use: with Redis the proxy runs no worker."""
    no_worker = effective.command.name == "proxy" and effective["redis"] is not None
    return [s for s in effective if not (no_worker and s.option.embedded_worker)]


def _table(effective: Effective) -> str:
    rows = [(s.option.flag, _shown(s.option, s.value), _source(s)) for s in _used(effective)]
    widths = [max(len(row[i]) for row in [("OPTION", "VALUE", "SOURCE"), *rows]) for i in (0, 1)]
    lines = [f"hqm {effective.command.name}"]
    for flag, value, source in [("OPTION", "VALUE", "SOURCE"), *rows]:
        lines.append(f"  {flag:<{widths[0]}}  {value:<{widths[1]}}  {source}")
    return "\n".join(lines)


@config.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--config", "config_path", default=None, help="The TOML file to check.")
@click.option("--json", "as_json", is_flag=True, help="JSON for machines.")
@click.argument("command", required=False, type=click.Choice(sorted(COMMANDS)))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def check(config_path: str | None, as_json: bool, command: str | None, args: tuple[str, ...]):
    """Print the effective settings of COMMAND (default: each command the file configures,
    else proxy and worker) with the source of each value: flag, env, file or default.
    FLAGS after COMMAND are read as that command would read them."""
    if args and command is None:
        raise UsageFailure("give COMMAND before its flags")
    names = [command] if command else _commands_of(config_path)
    results, ignored = [], {}
    for name in names:
        flags = _command_flags(name, args)
        if config_path is not None and flags.get("config") is None:
            flags["config"] = config_path
        try:
            resolved = resolve_aliased(COMMANDS[name], flags, os.environ)
            if name in ("proxy", "worker"):
                route_table(resolved.effective)  # [[routes]] checked as the command would
                replay_key(resolved.effective)
        except ConfigError as exc:
            raise UsageFailure(str(exc)) from None
        results.append(resolved.effective)
        ignored.update(dict.fromkeys(resolved.ignored))
    for variable in ignored:  # on stderr: stdout stays the table (or the JSON)
        click.echo(f"ignored: {variable} ({why_ignored(variable)})", err=True)
    if as_json:
        out = {
            e.command.name: [
                {
                    "option": s.option.name,
                    "value": _json_value(s),
                    "source": s.source.value,
                    "origin": s.origin,
                }
                for s in _used(e)
            ]
            for e in results
        }
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo("\n\n".join(_table(e) for e in results))


def _commands_of(config_path: str | None) -> list[str]:
    where = f"--config {config_path}" if config_path else ""
    path = config_path or os.environ.get("HQM_CONFIG")
    if not path:
        return ["proxy", "worker"]
    try:
        sections = load_file(path, where or f"HQM_CONFIG={path}").sections
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None
    return [name for name in COMMANDS if name in sections] or ["proxy", "worker"]
