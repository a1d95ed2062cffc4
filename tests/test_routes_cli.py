"""``hqm routes test`` on the example config, and ``hqm config check`` on every example."""

from __future__ import annotations

import shlex
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from hqm.cli.main import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROUTES = str(EXAMPLES / "routes.toml")
ENV = {"REPORTS_TOKEN": "tok-123-secret"}


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={**ENV, **(env or {})})


def routes_test(*args: str) -> dict:
    result = run("routes", "test", "--config", ROUTES, "--json", *args)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


def test_health_checks_pass_straight_through():
    out = routes_test("GET", "http://shop.example/healthz")
    assert (out["route"], out["position"], out["action"]) == ("health", 1, "pass")
    assert routes_test("POST", "/healthz")["route"] == "default"  # only GET and HEAD match


def test_reports_are_queued_on_their_queue_with_a_redacted_token():
    out = routes_test("POST", "/reports/q4")
    assert (out["action"], out["queue"], out["upstream"]) == ("queue", "reports", "reports")
    assert (out["timeout"], out["max_attempts"]) == (120.0, 3)
    assert out["inject_headers"] == {"Authorization": "<redacted>"}
    text = run("routes", "test", "--config", ROUTES, "POST", "/reports/q4")
    assert "inject    Authorization: <redacted>" in text.output
    assert "tok-123" not in text.output


def test_the_canary_split_and_its_sticky_side():
    out = routes_test("GET", "/api/orders", "-H", "X-User-Id: 42")
    split = out["split"]
    assert (split["queued_percent"], split["passed_percent"]) == (10.0, 90.0)
    assert split["sticky"] == "header:X-User-Id" and split["this_request"] in ("queue", "pass")
    again = routes_test("GET", "/api/other", "-H", "X-User-Id: 42")["split"]["this_request"]
    assert again == split["this_request"]
    per_request = routes_test("GET", "/api/orders")["split"]["this_request"]
    assert per_request.startswith("decided per request")


def test_wait_reject_and_the_default_route():
    assert routes_test("GET", "/checkout")["mode"] == "wait"
    assert routes_test("GET", "/checkout")["wait"] == 10.0
    assert routes_test("GET", "/internal/x") == {
        "route": "internal",
        "position": 5,
        "matches": ["path /internal/*"],
        "action": "reject",
        "status": 404,
    }
    default = routes_test("DELETE", "/anything")
    assert (default["route"], default["position"], default["mode"]) == ("default", None, "async")


def test_spellings_of_a_path_are_shown_as_the_proxy_decides_them():
    assert routes_test("GET", "/%69nternal/x")["route"] == "internal"
    ambiguous = routes_test("POST", "/reports/../admin/x")
    assert (ambiguous["route"], ambiguous["action"], ambiguous["status"]) == (
        "ambiguous-path",
        "reject",
        400,
    )
    assert "dot segment" in ambiguous["matches"][0]
    result = run(
        "routes", "test", "--config", ROUTES, "POST", "/reports/%2e%2e/q4",
        env={"HQM_PROXY_AMBIGUOUS_PATH": "normalize"},
    )  # fmt: skip
    assert "forwards  /q4 (normalized)" in result.output and result.exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("GET", "ftp://x/y"), "URL: give /PATH"),
        (("GET", "/", "-H", "NoColon"), "-H: expected 'Name: value'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run("routes", "test", "--config", ROUTES, *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_a_missing_secret_is_named_not_shown():
    result = CliRunner().invoke(
        main, ["routes", "test", "--config", ROUTES, "GET", "/"], env={"REPORTS_TOKEN": None}
    )
    assert result.exit_code == 2
    assert "environment variable REPORTS_TOKEN is not set" in result.output


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_config_check_accepts_every_example(example):
    result = run("config", "check", "--config", str(example))
    assert result.exit_code == 0, result.output
    assert "tok-123" not in result.output


def test_the_readme_routes_test_example_is_real_output():
    readme = (EXAMPLES.parent / "README.md").read_text()
    marker = "$ REPORTS_TOKEN=... hqm routes test --config examples/routes.toml "
    start = readme.index(marker)
    block = readme[start : readme.index("```", start)].splitlines()
    args = block[0][len(marker) :]
    result = run("routes", "test", "--config", ROUTES, *shlex.split(args))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == block[1:]


def test_the_replay_key_is_redacted_and_its_errors_are_one_line(tmp_path):
    shown = run(
        "config",
        "check",
        "proxy",
        "--upstream",
        "a:1",
        env={"HQM_REPLAY_KEY": "k-s3cret-of-the-test-32-bytes-long"},
    )
    assert shown.exit_code == 0, shown.output
    assert "--replay-key" in shown.output and "<redacted>" in shown.output
    assert "k-s3cret" not in shown.output
    missing = run(
        "config",
        "check",
        "worker",
        "--upstream",
        "a:1",
        "--redis",
        "redis://r:1/0",
        "--replay-key-file",
        str(tmp_path / "nope"),
    )
    assert missing.exit_code == 2 and "--replay-key-file" in missing.output
    assert "cannot read" in missing.output and "Traceback" not in missing.output
    (tmp_path / "empty").write_text("\n")
    empty = run(
        "config",
        "check",
        "proxy",
        "--upstream",
        "a:1",
        "--replay-key-file",
        str(tmp_path / "empty"),
    )
    assert empty.exit_code == 2 and "the file is empty" in empty.output
    both = run(
        "config",
        "check",
        "proxy",
        "--upstream",
        "a:1",
        "--replay-key",
        "x",
        "--replay-key-file",
        "/etc/hostname",
    )
    assert both.exit_code == 2 and "give one of them" in both.output
