"""Generated from the options tables: every option of every command, given by flag, by
environment variable and by config file, shows up in ``hqm config check`` with that
source; an invalid value is refused with exit 2 and the option's name.

Runs the real CLI in-process (click's runner: the same code path as ``hqm``, without a
process start per case); the few subprocess tests at the end check exit codes and
stderr as a shell sees them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hqm.cli.main import main
from hqm.config.commands import COMMANDS
from hqm.config.options import Option
from hqm.config.tables import Command
from tests.support import run_hqm

#: Options every run of a command needs, and a value for each.
REQUIRED = {"upstream": "127.0.0.1:8080", "redis": "redis://127.0.0.1:6390/0"}


def _valid(option: Option) -> tuple[str, Any]:
    """A valid non-default value: (text for flag/env, the TOML value)."""
    kind, default = option.kind, option.default
    if option.name == "admin":
        return "off", "off"
    if option.name == "listen":
        return "127.0.0.1:18000", "127.0.0.1:18000"
    if option.name == "upstream":
        return "http://app.local:8081", "http://app.local:8081"
    if option.name == "redis":
        return "redis://:secret@127.0.0.1:6391/2", "redis://:secret@127.0.0.1:6391/2"
    if option.name == "log-level":
        return "debug", "debug"
    if option.name == "access-log":
        return "sampled", "sampled"
    if option.name == "parser":
        return "h11", "h11"
    if option.name == "ambiguous-path":
        return "normalize", "normalize"
    if kind == "ratio":
        return "0.5", 0.5
    if option.name == "mode":
        # hqm proxy's reply mode, hqm iptables's backend
        return ("legacy", "legacy") if option.default == "auto" else ("wait", "wait")
    if option.kind == "ports":
        return "8080,9000-9005", "8080,9000-9005"
    if kind == "target":
        return "/api/process?x=1", "/api/process?x=1"
    if kind == "bool":
        return ("false", False) if default else ("true", True)
    if kind in ("int", "bytes"):
        return str(default + 1), default + 1
    if kind in ("seconds", "req/s"):
        return str(default + 1.5), default + 1.5
    if kind == "name":
        return "other-name", "other-name"
    if kind == "path":  # (a file of 32 bytes or more: the replay key is read at start)
        return __file__, __file__
    if kind == "secret":  # (a replay key: 32 bytes at least)
        return "s3cret-key-of-the-test-32-bytes-long", "s3cret-key-of-the-test-32-bytes-long"
    raise AssertionError(f"no sample for {option.name} ({kind})")


def _invalid(option: Option) -> list[tuple[str, Any]]:
    """Invalid values: (text for flag/env, the TOML value)."""
    if option.kind in ("int", "bytes", "seconds", "req/s"):
        return [("-1", -1), ("abc", "abc")]
    if option.kind == "ratio":
        return [("1.5", 1.5), ("abc", "abc")]
    if option.kind == "bool":
        return [("maybe", "maybe")]
    if option.kind == "choice":
        return [("bogus", "bogus")]
    if option.kind == "address":
        return [("no-port-here", "no-port-here"), ("https://tls.only:443", 443)]
    if option.kind == "url":
        return [("http://127.0.0.1:6379", 6379)]
    if option.kind in ("name", "path", "secret"):
        return [("", 7)]
    if option.kind == "target":
        return [("no-slash", "no-slash"), ("/a b", 7)]
    if option.kind == "ports":
        return [("0", 8080), ("8080,,8081", "9005-9000")]
    raise AssertionError(f"no invalid sample for {option.name}")


def _cases() -> list[tuple[Command, Option]]:
    return [
        (command, option)
        for command in COMMANDS.values()
        for option in command.options
        if option.name != "config"  # the file itself: its own tests below
    ]


CASES = _cases()
IDS = [f"{c.name}-{o.name}" for c, o in CASES]


def _flags(option: Option, text: str) -> list[str]:
    if option.switch:
        if text in ("true", "1"):
            return [option.flag]
        return [f"--no-{option.name}"]
    return [option.flag, text]


def _required(command: Command, option: Option, how: str) -> list[str]:
    """Flags for the required options other than the one under test."""
    out = []
    for opt in command.options:
        if opt.required and opt.name != option.name:
            out += [opt.flag, REQUIRED[opt.name]]
    return out


def _invoke(args: list[str], env: dict[str, str] | None):
    result = CliRunner().invoke(main, ["config", "check", *args], env=env or {})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def check(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = _invoke(args, env)
    return result.exit_code, result.output


def effective(command: str, args: list[str], env=None) -> dict[str, dict]:
    result = _invoke(["--json", command, *args], env)  # (stderr: variables ignored)
    assert result.exit_code == 0, result.output
    return {row["option"]: row for row in json.loads(result.stdout)[command]}


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _expected(option: Option, text: str) -> Any:
    return option.shown(option.parse(text)) if option.display else option.parse(text)


def _json_value(option: Option, value: Any) -> Any:
    if option.display is not None:
        return option.shown(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@pytest.mark.parametrize(("command", "option"), CASES, ids=IDS)
def test_flag_env_and_file_each_show_with_their_source(command, option, tmp_path: Path):
    if option.switch and not option.negatable and option.default is True:
        pytest.skip("a switch that is on by default has no flag to turn it on")
    text, file_value = _valid(option)
    expected = _json_value(option, option.parse(text))
    assert expected != _json_value(
        option, option.parse(option.default) if option.default is not None else None
    )
    base = _required(command, option, "flag")

    by_flag = effective(command.name, [*base, *_flags(option, text)])[option.name]
    assert (by_flag["source"], by_flag["value"]) == ("flag", expected)

    for env_name in command.env_names(option):
        by_env = effective(command.name, base, {env_name: text})[option.name]
        assert (by_env["source"], by_env["origin"], by_env["value"]) == ("env", env_name, expected)

    path = tmp_path / "hqm.toml"
    path.write_text(f"[{command.name}]\n{option.key} = {_toml(file_value)}\n")
    by_file = effective(command.name, [*base, "--config", str(path)])[option.name]
    assert (by_file["source"], by_file["value"]) == ("file", expected)
    assert by_file["origin"] == f"{path} [{command.name}] {option.key}"

    if option.shared:  # top-level keys serve every command
        path.write_text(f"{option.key} = {_toml(file_value)}\n")
        top = effective(command.name, [*base, "--config", str(path)])[option.name]
        assert (top["source"], top["value"]) == ("file", expected)


@pytest.mark.parametrize(("command", "option"), CASES, ids=IDS)
def test_invalid_values_are_refused_naming_the_option(command, option, tmp_path: Path):
    base = _required(command, option, "flag")
    for text, file_value in _invalid(option):
        if not option.switch:
            code, out = check([command.name, *base, option.flag, text])
            assert code == 2, out
            assert f"Error: {option.flag}: " in out and out.count("\n") == 1, out
        env_name = command.env_names(option)[0]
        code, out = check([command.name, *base], {env_name: text})
        assert code == 2, out
        assert f"Error: {env_name} ({option.flag}): " in out, out
        path = tmp_path / "bad.toml"
        path.write_text(f"[{command.name}]\n{option.key} = {_toml(file_value)}\n")
        code, out = check([command.name, *base, "--config", str(path)])
        assert code == 2, out
        assert f"Error: {path} [{command.name}] {option.key}: " in out, out


def test_every_default_parses_and_the_tables_are_consistent():
    for command in COMMANDS.values():
        names = [o.name for o in command.options]
        assert len(names) == len(set(names)), command.name
        for option in command.options:
            if option.default is not None:
                option.parse(option.default)  # a default the parser refuses is a bug
            assert option.help.endswith((".", ")")), option.name
    # a shared option means the same thing everywhere: one object, one default
    for name in ("upstream", "result-ttl", "drain-timeout", "log-level"):
        objects = {id(c.option(name)) for c in COMMANDS.values() if name in _names(c)}
        assert len(objects) == 1, name
    # (--queue: one object, but hqm worker's takes several queues; the same default)
    queues = {c.option("queue") for c in COMMANDS.values() if "queue" in _names(c)}
    assert len({id(o) for o in queues}) == 2 and len({o.default for o in queues}) == 1


def _names(command: Command) -> set[str]:
    return {o.name for o in command.options}


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path):
    path = tmp_path / "hqm.toml"
    path.write_text('queue = "shared-q"\n[proxy]\nmode = "fire"\nmax_body = 1000\n')
    args = ["--upstream", "a:1", "--config", str(path)]
    rows = effective("proxy", [*args, "--mode", "wait"], {"HQM_PROXY_MODE": "async"})
    assert (rows["mode"]["value"], rows["mode"]["source"]) == ("wait", "flag")
    rows = effective("proxy", args, {"HQM_PROXY_MODE": "async", "HQM_MAX_BODY": "7"})
    assert (rows["mode"]["value"], rows["mode"]["source"]) == ("async", "env")
    assert rows["max-body"]["value"] == 1000  # not a shared option: HQM_MAX_BODY is not read
    assert (rows["queue"]["value"], rows["queue"]["source"]) == ("shared-q", "file")
    rows = effective("proxy", args)
    assert (rows["mode"]["value"], rows["mode"]["source"]) == ("fire", "file")
    assert rows["idle-timeout"]["source"] == "default"


def test_command_specific_env_wins_over_shared_env():
    rows = effective(
        "worker",
        ["--upstream", "a:1"],
        {"HQM_REDIS": "redis://shared:1/0", "HQM_WORKER_REDIS": "redis://own:2/0"},
    )
    assert (rows["redis"]["value"], rows["redis"]["origin"]) == (
        "redis://own:2/0",
        "HQM_WORKER_REDIS",
    )


def test_passwords_are_redacted_in_config_check():
    code, out = check(["proxy", "--upstream", "a:1", "--redis", "redis://:hunter2@r:6379/0"])
    assert code == 0 and "hunter2" not in out and "redis://:***@r:6379/0" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[proxy]\nmax_bdy = 5\n", "[proxy] max_bdy: unknown key (did you mean max_body?)"),
        ("[proxy]\nmax_body = '5'\n", "[proxy] max_body: expected an integer"),
        ("[proxxy]\n", "proxxy: unknown key (did you mean proxy?)"),
        ("[proxy]\nmode = 'sync'\n", "[proxy] mode: must be one of async, wait, fire"),
        ("[worker]\nconcurrency = 0\n", "[worker] concurrency: must be >= 1"),
        ("proxy = 3\n", "[proxy] must be a table"),
        ("[proxy\n", "not valid TOML"),
        ("[upstreams]\nreports = 5\n", "[upstreams] reports: expected"),
        ("listen = ':1'\n", "listen: unknown key"),  # not shared: only in [proxy]
    ],
)
def test_config_file_errors_name_the_key_and_the_file(tmp_path: Path, content, message):
    path = tmp_path / "cm.toml"
    path.write_text(content)
    code, out = check(["--config", str(path), "proxy", "--upstream", "a:1"])
    assert code == 2
    assert out.startswith(f"Error: {path}") or out.startswith(f"Error: --config {path}"), out
    assert message in out, out


def test_missing_config_file_and_missing_required_option():
    code, out = check(["proxy", "--upstream", "a:1", "--config", "/nonexistent/hqm.toml"])
    assert code == 2 and "/nonexistent/hqm.toml: cannot read" in out
    code, out = check(["worker", "--upstream", "a:1"])
    assert code == 2
    assert "--redis is required (or HQM_WORKER_REDIS or HQM_REDIS" in out


def test_config_check_without_command_checks_each_section(tmp_path: Path):
    path = tmp_path / "cm.toml"
    path.write_text(
        'upstream = "app:8080"\nredis = "redis://r:6379/0"\n[worker]\nrate = 50\n[dlq]\ncount = 5\n'
    )
    code, out = check(["--config", str(path)])
    assert code == 0, out
    assert "hqm worker" in out and "hqm dlq" in out and "hqm proxy" not in out
    assert f"file {path} [worker] rate" in out and f"file {path} upstream" in out


@pytest.mark.parametrize("flag", ["--rate", "--concurrency", "--max-attempts", "--retry-base"])
def test_proxy_with_redis_refuses_worker_only_options(flag: str):
    args = ["proxy", "--upstream", "a:1", "--redis", "redis://r:1/0", flag, "3"]
    code, out = check(args)
    assert code == 2
    assert out.startswith(f"Error: {flag}: configures only the in-process worker"), out
    code, out = check(args[:-2], {f"HQM_PROXY_{flag[2:].upper().replace('-', '_')}": "3"})
    assert code == 2 and "configures only the in-process worker" in out
    code, out = check(["proxy", "--upstream", "a:1", flag, "3"])  # embedded: its worker's
    assert code == 0, out


@pytest.mark.parametrize("flag", ["--read-timeout", "--connect-timeout", "--trusted-hops"])
def test_proxy_with_redis_takes_the_options_of_its_pass_through_routes(flag: str):
    code, out = check(["proxy", "--upstream", "a:1", "--redis", "redis://r:1/0", flag, "3"])
    assert code == 0, out
    assert f"{flag} " in out and "flag" in out


# --- as a shell sees it --------------------------------------------------------------
hqm = run_hqm


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["proxy", "--upstream", "a:1", "--max-body", "-1"], "--max-body"),
        (["proxy", "--upstream", "a:1", "--header-timeout", "-1"], "--header-timeout"),
        (["proxy", "--upstream", "a:1", "--result-ttl", "0"], "--result-ttl"),
        (["proxy", "--upstream", "a:1", "--log-level", "bogus"], "--log-level"),
        (
            ["worker", "--upstream", "a:1", "--redis", "redis://r:1/0", "--concurrency", "0"],
            "--concurrency",
        ),
        (["dlq", "list", "--redis", "redis://r:1/0", "--count", "-5"], "--count"),
        (["proxy", "--upstream", "a:1", "--redis", "redis://r:1/0", "--rate", "5"], "--rate"),
    ],
)
def test_bad_values_one_line_exit_2_no_traceback(args: list[str], names: str):
    done = hqm(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"Error: {names}: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_env_names_follow_the_flags_in_a_real_process():
    """The first-hour defect: HQM_WORKER_REDIS used to be ignored ("Missing option")."""
    done = hqm(
        "config",
        "check",
        "--json",
        "worker",
        env={"HQM_WORKER_REDIS": "redis://r:1/0", "HQM_UPSTREAM": "a:1"},
    )
    assert done.returncode == 0, done.stderr
    rows = {row["option"]: row for row in json.loads(done.stdout)["worker"]}
    assert rows["redis"]["origin"] == "HQM_WORKER_REDIS"
    assert rows["upstream"]["origin"] == "HQM_UPSTREAM"
