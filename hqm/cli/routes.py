"""``hqm routes test --config FILE METHOD URL [-H 'Name: value' ...]``: which route a
request would take and what would become of it, injected values redacted; the
command-line answer to the original OpenHQM's route simulator.

The file and environment are read as ``hqm proxy`` reads them (its ``[proxy]`` mode,
wait and queue are the default route's); nothing is sent anywhere.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import click
import orjson

from hqm.cli.common import UsageFailure, help_text
from hqm.config.build import route_table
from hqm.config.options import ConfigError
from hqm.config.resolve import resolve
from hqm.config.tables import PROXY
from hqm.ingress.reserved import reserved_routes
from hqm.ingress.routes import AMBIGUOUS, BAD_TARGET, Route, RouteTable, sticky_key
from hqm.proto.events import RequestHead

REDACTED = "<redacted>"
#: Stands in for --upstream, which a dry run does not need.
_NO_UPSTREAM = "127.0.0.1:1"


@click.group()
def routes() -> None:
    """Routes of the --config file."""


def _head(method: str, url: str, header_lines: tuple[str, ...]) -> RequestHead:
    parts = urlsplit(url if "://" in url or url.startswith("/") else f"http://{url}")
    if parts.scheme not in ("", "http", "https"):
        raise UsageFailure(f"URL: give /PATH or http://HOST/PATH, got {url!r}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers: list[tuple[bytes, bytes]] = []
    if parts.netloc:
        headers.append((b"Host", parts.netloc.encode()))
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise UsageFailure(f"-H: expected 'Name: value', got {line!r}")
        if name.strip().lower() == "host":
            headers = [h for h in headers if h[0].lower() != b"host"]
        headers.append((name.strip().encode(), value.strip().encode("latin-1")))
    return RequestHead(method.upper().encode(), target.encode(), tuple(headers), b"1.1")


def _conditions(route: Route) -> list[str]:
    out = []
    if route.methods:
        out.append("methods " + ",".join(sorted(m.decode() for m in route.methods)))
    if route.path is not None:
        out.append(f"path {route.path}")
    if route.host is not None:
        out.append(f"host {route.host}")
    for condition in route.headers:
        name = condition.name.decode()
        out.append(f"header {name}" + (f" ~ {condition.pattern}" if condition.pattern else ""))
    return out or ["everything"]


def explain(table: RouteTable, head: RequestHead, client: str, proxy: dict[str, Any]) -> dict:
    """What the proxy would do with ``head``: the route, its action and parameters."""
    decision = table.decide(head, client)
    route = decision.route
    index = table.routes.index(route) + 1 if route in table.routes else None
    mode = route.mode or proxy["mode"]
    if route is AMBIGUOUS or route is BAD_TARGET:
        matches = [decision.error]
    else:
        matches = _conditions(route) if index else ["no route matched: the default route"]
    if route.action == "api":  # hqm's own endpoints, before every configured route
        matches = [f"path {route.path}: hqm's own API, before the configured routes"]
        return {"route": route.name, "position": None, "matches": matches, "action": "api"}
    out: dict[str, Any] = {"route": route.name, "position": index, "matches": matches}
    if decision.target is not None:
        out["normalized_target"] = decision.target.decode("latin-1")
    out["action"] = route.action
    if route.action == "reject":
        out["status"] = route.status
        return out
    if route.action == "queue":
        out.update(queue=route.queue, mode=mode)
        out.update(caller=str(route.caller), result_access=route.result_access)
        if mode == "wait":
            out["wait"] = route.wait_s if route.wait_s is not None else proxy["wait"]
        if route.percent < 100.0:
            key = sticky_key(route.sticky, head, client)
            split: dict[str, Any] = {
                "queued_percent": route.percent,
                "passed_percent": round(100.0 - route.percent, 6),
                "sticky": str(route.sticky),
            }
            if key is None:
                split["this_request"] = f"decided per request ({route.percent:g}% queue)"
            else:
                side = "queue" if table.in_share(route, head, client) else "pass"
                split["this_request"] = side
            out["split"] = split
    out["upstream"] = route.upstream
    if route.timeout_s:
        out["timeout"] = route.timeout_s
    if route.max_attempts:
        out["max_attempts"] = route.max_attempts
    out["inject_headers"] = {name.decode(): REDACTED for name, _ in route.inject_headers}
    return out


def _text(result: dict) -> str:
    where = f" (#{result['position']})" if result["position"] else ""
    lines = [f"route     {result['route']}{where}", f"matches   {'; '.join(result['matches'])}"]
    if "normalized_target" in result:
        lines.append(f"forwards  {result['normalized_target']} (normalized)")
    action = result["action"]
    if action == "reject":
        lines.append(f"action    reject with {result['status']}")
        return "\n".join(lines)
    if action == "api":
        lines.append("action    api: answered by hqm itself, never queued nor sent to the app")
        return "\n".join(lines)
    split = result.get("split")
    if split:
        lines.append(
            f"action    queue {split['queued_percent']:g}% / pass {split['passed_percent']:g}%"
            f" (sticky: {split['sticky']}; this request: {split['this_request']})"
        )
    else:
        lines.append(f"action    {action}")
    if "queue" in result:
        wait = f", wait {result['wait']:g} s" if "wait" in result else ""
        lines.append(f"queue     {result['queue']} (mode {result['mode']}{wait})")
        reader = "its caller only" if result["result_access"] == "caller" else "anyone with the id"
        lines.append(f"caller    {result['caller']} (keys are its own; result: {reader})")
    lines.append(f"upstream  {result['upstream']}")
    if "timeout" in result or "max_attempts" in result:
        limits = [f"timeout {result['timeout']:g} s"] if "timeout" in result else []
        limits += [f"max attempts {result['max_attempts']}"] if "max_attempts" in result else []
        lines.append(f"limits    {', '.join(limits)}")
    for name, value in result["inject_headers"].items():
        lines.append(f"inject    {name}: {value}")
    return "\n".join(lines)


@routes.command("test")
@click.option("--config", "config_path", required=True, help="The TOML file with [[routes]].")
@click.option("-H", "--header", "header_lines", multiple=True, help="A request header.")
@click.option("--client", default="127.0.0.1", show_default=True, help="Client address.")
@click.option("--json", "as_json", is_flag=True, help="JSON for machines.")
@click.option(
    "--openhqm-api/--no-openhqm-api",
    "openhqm_api",
    default=None,
    help=help_text(PROXY, PROXY.option("openhqm-api")),
)
@click.argument("method")
@click.argument("url")
def test(
    config_path: str,
    header_lines: tuple[str, ...],
    client: str,
    as_json: bool,
    openhqm_api: bool | None,
    method: str,
    url: str,
) -> None:
    """Show the route METHOD URL takes and what would happen to it."""
    head = _head(method, url, header_lines)
    env = dict(os.environ)
    env.setdefault("HQM_PROXY_UPSTREAM", _NO_UPSTREAM)
    try:
        values = resolve(PROXY, {"config": config_path, "openhqm_api": openhqm_api}, env)
        table = route_table(values, ambiguous=values["ambiguous-path"])
        # (as the proxy's table: hqm's own endpoints first)
        table = table.with_reserved(reserved_routes(values["openhqm-api"]))
    except ConfigError as exc:
        raise UsageFailure(str(exc)) from None
    result = explain(table, head, client, {"mode": values["mode"], "wait": values["wait"]})
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_text(result))
