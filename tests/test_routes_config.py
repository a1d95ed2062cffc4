"""``[[routes]]`` and ``[upstreams]`` in the config file: checked whole, one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from hqm.config.build import proxy_from
from hqm.config.options import ConfigError
from hqm.ingress.routes import HeaderCondition, Sticky


def settings(tmp_path: Path, text: str, env: dict | None = None):
    config = tmp_path / "hqm.toml"
    config.write_text(text)
    return proxy_from({"upstream": "127.0.0.1:9", "config": str(config)}, env or {})


def test_a_full_route_is_read(tmp_path):
    table = settings(
        tmp_path,
        """
[upstreams]
reports = "http://127.0.0.1:8081"

[[routes]]
name = "reports"
methods = ["post", "PUT"]
path = "/reports/*"
host = "api.*"
headers = { X-Tenant = "acme-*", X-Canary = true }
queue = "reports"
mode = "wait"
wait = 5
percent = 10
sticky = "header:X-User"
upstream = "reports"
timeout = 120
max_attempts = 3
inject_headers = { Authorization = "Bearer ${TOKEN}", X-Api-Key = "k-${KEY}-x" }
""",
        {"TOKEN": "t0k", "KEY": "42"},
    ).routes
    (route,) = table.routes
    assert route.methods == frozenset({b"POST", b"PUT"})
    assert (route.path, route.host, route.queue, route.mode) == (
        "/reports/*",
        "api.*",
        "reports",
        "wait",
    )
    assert route.headers == (HeaderCondition(b"x-tenant", "acme-*"), HeaderCondition(b"x-canary"))
    assert (route.wait_s, route.percent, route.timeout_s, route.max_attempts) == (
        5.0,
        10.0,
        120.0,
        3,
    )
    assert route.sticky == Sticky("header", "X-User")
    assert route.upstream == "reports"
    assert route.inject_headers == ((b"Authorization", b"Bearer t0k"), (b"X-Api-Key", b"k-42-x"))
    assert table.default.queue == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[routes]]\npaht = '/x'\n", "[[routes]] #1 paht: unknown key (did you mean path?)"),
        ("[[routes]]\naction = 'drop'\n", "action: must be one of queue, pass, reject"),
        ("[[routes]]\npercent = 101\n", "percent: must be >= 0 and <= 100"),
        ("[[routes]]\naction = 'pass'\npercent = 5\n", "percent: the share queued"),
        ("[[routes]]\nstatus = 200\naction = 'reject'\n", "status: a 4xx or 5xx"),
        ("[[routes]]\nmode = 'sync'\n", "mode: must be one of async, wait, fire"),
        ("[[routes]]\nupstream = 'nope'\n", "upstream: 'nope' is not in [upstreams]"),
        ("[[routes]]\nsticky = 'ip'\n", 'sticky: "header:NAME"'),
        ("[[routes]]\nheaders = { X-A = 3 }\n", "headers X-A: true (present) or a value glob"),
        ("[[routes]]\ntimeout = 0\n", "timeout: must be > 0"),
        ("[[routes]]\nmethods = 'GET POST'\n", "methods: a list of methods"),
        ("[[routes]]\nname = 'a'\n[[routes]]\nname = 'a'\n", "name 'a' is used twice"),
        (
            "[[routes]]\ninject_headers = { Authorization = 'Bearer ${NOT_SET_ANYWHERE}' }\n",
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        ("[routes]\npath = '/x'\n", "routes must be [[routes]] tables"),
        ("[upstreams]\ndefault = '127.0.0.1:1'\n", "'default' is --upstream itself"),
        ("[upstreams]\nx = 'ftp://h:1'\n", "only http:// upstreams"),
    ],
)
def test_route_errors_name_the_file_route_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        settings(tmp_path, text)
    assert message in str(error.value)
    assert str(tmp_path / "hqm.toml") in str(error.value)


def test_an_injected_secret_is_not_in_the_error_about_another_key(tmp_path):
    with pytest.raises(ConfigError) as error:
        settings(
            tmp_path,
            "[[routes]]\ninject_headers = { A = '${SECRET}', B = '${MISSING}' }\n",
            {"SECRET": "hunter2"},
        )
    assert "MISSING" in str(error.value) and "hunter2" not in str(error.value)
