"""What every command shares: click options made from an options table, one-line
errors with exit 2, and running a coroutine on uvloop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import click

from hqm.assembly import ListenError, StartError
from hqm.config.openhqm_env import Resolved, resolve_aliased
from hqm.config.options import ConfigError
from hqm.config.resolve import Effective
from hqm.config.tables import Command

#: -h as well as --help, on every command: the group's context passes it down; a command
#: parsed on its own (``hqm config check proxy -h``) is given it.
HELP_OPTIONS = ["-h", "--help"]


class UsageFailure(click.ClickException):
    """A setting that cannot be used: one line on stderr, exit 2."""

    exit_code = 2


def help_text(command: Command, option: Any) -> str:
    parts = [f"default: {option.shown_default()}" if not option.required else "required"]
    parts.append("env: " + ", ".join(command.env_names(option)))
    if option.in_file:
        parts.append(f"file: {option.key}")
    return f"{option.help} [{'; '.join(parts)}]"


def table_options(
    command: Command, *, without: tuple[str, ...] = ()
) -> Callable[[Callable], Callable]:
    """Click options for the options of ``command`` (but ``without``). Click only parses
    the command line (every default is None); values, environment and file come from
    the table."""

    def decorate(func: Callable) -> Callable:
        for option in reversed(command.options):
            if option.name in without:
                continue
            help_ = help_text(command, option)
            if option.negatable:
                decl = click.option(
                    f"{option.flag}/--no-{option.name}", option.dest, default=None, help=help_
                )
            elif option.switch:
                decl = click.option(
                    option.flag,
                    option.dest,
                    is_flag=True,
                    flag_value=True,
                    default=None,
                    help=help_,
                )
            else:
                decl = click.option(
                    option.flag,
                    option.dest,
                    default=None,
                    metavar=option.kind.upper(),
                    help=help_,
                    multiple=option.multiple,
                    # (repeatable: () when not given, which is "not given": None)
                    callback=(lambda ctx, param, value: value or None) if option.multiple else None,
                )
            func = decl(func)
        return func

    return decorate


def settings_or_exit(command: Command, flags: dict[str, Any]) -> Effective:
    return resolved_or_exit(command, flags).effective


def resolved_or_exit(command: Command, flags: dict[str, Any]) -> Resolved:
    """The settings, the original OpenHQM's OPENHQM_* variables included (with the
    ones hqm ignores, for the command to log once its logging is set up)."""
    try:
        return resolve_aliased(command, flags, os.environ)
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None


def build_or_exit(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except (ConfigError, ValueError) as exc:
        raise UsageFailure(str(exc)) from None


def run(coro: Any) -> Any:
    """Run ``coro`` on uvloop; its result."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(coro)
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None
    except StartError as exc:  # found while starting, e.g. a --redis URL redis-py refuses
        raise UsageFailure(str(exc)) from None
