"""What a user reads first: ``-h`` is ``--help`` on every command, every option says what
it does, and the start-up line says "off" for a listener that is off (issue 20, item 11).
"""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from hqm.cli.main import main
from tests.support import HqmProcess


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


COMMAND_PATHS = _commands(main)


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(("hqm", *p)))
def test_dash_h_is_help_on_every_command(path: tuple[str, ...]):
    short = CliRunner().invoke(main, [*path, "-h"], prog_name="hqm")
    long = CliRunner().invoke(main, [*path, "--help"], prog_name="hqm")
    assert short.exit_code == 0, short.output
    assert short.output == long.output and "Usage: hqm" in short.output


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(("hqm", *p)))
def test_every_option_has_help_text(path: tuple[str, ...]):
    silent = [
        param.opts[0]
        for param in _command(path).params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert silent == []


def test_dash_h_after_the_command_config_check_reads():
    done = CliRunner().invoke(main, ["config", "check", "proxy", "-h"])
    assert done.exit_code == 0 and "Usage: hqm proxy" in done.output, done.output


def test_an_admin_listener_that_is_off_is_logged_as_off():
    hqm = HqmProcess(
        "proxy", "--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin", "off"
    )
    try:
        hqm.wait_ready()
        assert hqm.info["admin"] == "off", hqm.info
    finally:
        hqm.terminate()
    (started,) = [json.loads(line) for line in hqm.lines if '"msg":"listening"' in line]
    assert started["admin"] == "off"
