"""``hqm routes test`` says what the proxy does with hqm's own endpoints (issue 20, item
8): /api/v1/ (with --openhqm-api, the default) and /_hqm/ are answered by hqm before any
configured route, and the proxy counts them in hqm_proxy_routed_total{route="api",
action="api"}. The dry run and a real proxy on the same file agree, request by request.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from hqm.cli.main import main
from tests.support import Backend, proxy, request

ROUTES = str(Path(__file__).resolve().parent.parent / "examples" / "routes.toml")
ENV = {"REPORTS_TOKEN": "tok-123-secret"}


def dry_run(*args: str, env: dict[str, str] | None = None) -> dict:
    argv = ["routes", "test", "--config", ROUTES, "--json", *args]
    result = CliRunner().invoke(
        main, argv, env={**ENV, "HQM_PROXY_OPENHQM_API": None, **(env or {})}
    )
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


@pytest.mark.parametrize("target", ["/api/v1/submit", "/api/v1/status/abc", "/_hqm/requests/x"])
def test_hqm_endpoints_are_hqms_not_the_routes_that_match_them(target: str):
    out = dry_run("POST", target)
    assert (out["route"], out["action"], out["position"]) == ("api", "api", None)
    text = CliRunner().invoke(main, ["routes", "test", "--config", ROUTES, "POST", target], env=ENV)
    assert "action    api: answered by hqm itself" in text.output
    assert "api-canary" not in text.output


def test_without_the_openhqm_api_its_paths_take_the_configured_routes():
    assert dry_run("--no-openhqm-api", "POST", "/api/v1/submit")["route"] == "api-canary"
    off = dry_run("POST", "/api/v1/submit", env={"HQM_PROXY_OPENHQM_API": "off"})
    assert off["route"] == "api-canary"
    # /_hqm/ is always hqm's
    assert dry_run("--no-openhqm-api", "GET", "/_hqm/requests/x")["route"] == "api"


#: (method, target) -> what the proxy answers, as each kind of route does.
CASES = [
    ("POST", "/api/v1/submit"),
    ("GET", "/_hqm/requests/0123456789abcdef0123456789abcdef"),
    ("GET", "/healthz"),
    ("GET", "/internal/x"),
    ("POST", "/reports/q4"),
]


@pytest.mark.parametrize("openhqm_api", ["--openhqm-api", "--no-openhqm-api"])
def test_the_proxy_counts_each_request_on_the_route_routes_test_names(openhqm_api: str):
    backend = Backend()
    # (--drain-timeout 1: what the reports app never received is not this test's)
    hqm = proxy(backend.address, "--config", ROUTES, openhqm_api, "--drain-timeout", "1", env=ENV)
    try:
        expected: dict[tuple[str, str], int] = {}
        for method, target in CASES:
            said = dry_run(openhqm_api, method, target)
            action = said["action"]
            if "split" in said:  # (api-canary without the API: decided per request)
                continue
            key = (said["route"], action)
            expected[key] = expected.get(key, 0) + 1
            body = b'{"payload": {}}' if method == "POST" else b""
            request(hqm.port, method.encode(), target.encode(), [(b"X-User-Id", b"7")], body)
        metrics = request(hqm.admin_port, b"GET", b"/metrics").body.decode()
    finally:
        hqm.terminate()
        backend.close()
    counted = {
        (m["route"], m["action"]): int(float(m["n"]))
        for m in re.finditer(
            r'hqm_proxy_routed_total\{action="(?P<action>[^"]+)",route="(?P<route>[^"]+)"\} '
            r"(?P<n>\S+)",
            metrics,
        )
    }
    assert counted == expected
    # /_hqm/ always; /api/v1/ too unless the OpenHQM API is off
    assert counted["api", "api"] == (2 if openhqm_api == "--openhqm-api" else 1)
