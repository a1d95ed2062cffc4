"""``[[routes]]`` of the config file, checked whole into a ``RouteTable``: every
problem is one ConfigError naming the file, the route and the key.

``inject_headers`` values may use ``${ENV_VAR}``: expanded here from the environment
(a missing variable is an error naming it, never its neighbours' values); the values
are secrets and are shown only as ``<redacted>``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from hqm.config.options import ConfigError
from hqm.config.tables import MAX_SECONDS, REPLY_MODES
from hqm.ingress.caller import RESULT_ACCESS, CallerScope
from hqm.ingress.routes import (
    ACTIONS,
    DEFAULT_AMBIGUOUS,
    HeaderCondition,
    Route,
    RouteTable,
    Sticky,
)

KEYS = (
    "name",
    "action",
    "status",
    "methods",
    "path",
    "host",
    "headers",
    "queue",
    "mode",
    "wait",
    "percent",
    "sticky",
    "upstream",
    "timeout",
    "max_attempts",
    "inject_headers",
    "caller",
    "result_access",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_QUEUE = re.compile(r"[^{}\s]{1,100}")


def build_routes(
    path: str,
    raw_routes: tuple[Mapping[str, Any], ...],
    *,
    upstreams: Mapping[str, Any],
    env: Mapping[str, str],
    default_queue: str,
    ambiguous: str = DEFAULT_AMBIGUOUS,
) -> RouteTable:
    routes = []
    names: set[str] = set()
    for index, raw in enumerate(raw_routes, 1):
        route = _route(f"{path} [[routes]] #{index}", raw, upstreams, env, default_queue)
        if route.name in names:
            raise ConfigError(f"{path} [[routes]] #{index}: name {route.name!r} is used twice")
        names.add(route.name)
        routes.append(route)
    default = Route(name="default", queue=default_queue)
    return RouteTable(tuple(routes), default=default, ambiguous=ambiguous)


def _route(
    where: str,
    raw: Mapping[str, Any],
    upstreams: Mapping[str, Any],
    env: Mapping[str, str],
    default_queue: str,
) -> Route:
    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where} {key}: unknown key{hint}")
    name = _get(raw, "name", str, where) or where.rsplit("#", 1)[1]
    if raw.get("name") is not None and not _NAME.fullmatch(name):
        raise ConfigError(f"{where} name: letters, digits, '_', '.', '-' (a metric label)")
    where = f"{where} ({name})" if "name" in raw else where
    action = _get(raw, "action", str, where) or "queue"
    if action not in ACTIONS:
        raise ConfigError(f"{where} action: must be one of {', '.join(ACTIONS)}, got {action!r}")
    fields: dict[str, Any] = {"name": name, "action": action}
    status = _get(raw, "status", int, where)
    if status is not None:
        if action != "reject" or not 400 <= status <= 599:
            raise ConfigError(f'{where} status: a 4xx or 5xx, for action = "reject" only')
        fields["status"] = status
    methods = raw.get("methods")
    if methods is not None:
        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, list) or not all(
            isinstance(m, str) and _TOKEN.fullmatch(m) for m in methods
        ):
            raise ConfigError(f'{where} methods: a list of methods, e.g. ["GET", "HEAD"]')
        fields["methods"] = frozenset(m.upper().encode() for m in methods)
    for key in ("path", "host"):
        value = _get(raw, key, str, where)
        if value is not None:
            fields[key] = value
    if "headers" in raw:
        fields["headers"] = _conditions(where, raw["headers"])
    queue = _get(raw, "queue", str, where)
    if queue is not None and not _QUEUE.fullmatch(queue):
        raise ConfigError(f"{where} queue: 1-100 characters, no spaces or braces")
    fields["queue"] = queue or default_queue
    mode = _get(raw, "mode", str, where)
    if mode is not None:
        if mode not in REPLY_MODES:
            raise ConfigError(f"{where} mode: must be one of {', '.join(REPLY_MODES)}")
        fields["mode"] = mode
    wait = _number(raw, "wait", where, low=0.0, high=MAX_SECONDS)
    if wait is not None:
        fields["wait_s"] = wait
    percent = _number(raw, "percent", where, low=0.0, high=100.0)
    if percent is not None:
        if action != "queue":
            raise ConfigError(f'{where} percent: the share queued, for action = "queue" only')
        fields["percent"] = percent
    if "sticky" in raw:
        fields["sticky"] = _sticky(where, raw["sticky"])
    upstream = _get(raw, "upstream", str, where)
    if upstream is not None:
        if upstream != "default" and upstream not in upstreams:
            known = ", ".join(["default", *upstreams])
            raise ConfigError(f"{where} upstream: {upstream!r} is not in [upstreams] ({known})")
        fields["upstream"] = upstream
    timeout = _number(raw, "timeout", where, low=0.0, high=MAX_SECONDS, low_open=True)
    if timeout is not None:
        fields["timeout_s"] = timeout
    attempts = _get(raw, "max_attempts", int, where)
    if attempts is not None:
        if not 1 <= attempts <= 1000:
            raise ConfigError(f"{where} max_attempts: must be 1-1000, got {attempts}")
        fields["max_attempts"] = attempts
    if "inject_headers" in raw:
        fields["inject_headers"] = _inject(where, raw["inject_headers"], env)
    caller = _get(raw, "caller", str, where)
    if caller is not None:
        try:
            fields["caller"] = CallerScope.parse(caller)
        except ValueError as exc:
            raise ConfigError(f"{where} caller: {exc}") from None
    access = _get(raw, "result_access", str, where)
    if access is not None:
        if access not in RESULT_ACCESS or (access != "id" and action != "queue"):
            raise ConfigError(
                f'{where} result_access: "id" or "caller" (for action = "queue"), got {access!r}'
            )
        fields["result_access"] = access
    return Route(**fields)


def _get(raw: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} {key}: expected {kind.__name__}, got {value!r}")
    return value


def _number(
    raw: Mapping[str, Any], key: str, where: str, *, low: float, high: float, low_open=False
) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{where} {key}: expected a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ConfigError(f"{where} {key}: must be {bound} and <= {high:g}, got {value}")
    return float(value)


def _conditions(where: str, raw: Any) -> tuple[HeaderCondition, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where} headers: a table, e.g. {{ X-Canary = true, X-Tenant = "a*" }}')
    out = []
    for name, value in raw.items():
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"{where} headers: {name!r} is not a header name")
        if value is True:
            out.append(HeaderCondition(name.lower().encode()))
        elif isinstance(value, str):
            out.append(HeaderCondition(name.lower().encode(), value))
        else:
            raise ConfigError(f"{where} headers {name}: true (present) or a value glob")
    return tuple(out)


def _sticky(where: str, raw: Any) -> Sticky:
    if not isinstance(raw, str):
        raise ConfigError(f'{where} sticky: "header:NAME", "cookie:NAME" or "client"')
    kind, _, name = raw.partition(":")
    if kind in ("header", "cookie") and name and _TOKEN.fullmatch(name):
        return Sticky(kind, name)
    if kind in ("client", "request") and not name:
        return Sticky(kind)
    raise ConfigError(
        f'{where} sticky: "header:NAME", "cookie:NAME", "client" or "request", got {raw!r}'
    )


def _inject(where: str, raw: Any, env: Mapping[str, str]) -> tuple[tuple[bytes, bytes], ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where} inject_headers: a table of NAME = "value"')
    out = []
    for name, value in raw.items():
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"{where} inject_headers: {name!r} is not a header name")
        if not isinstance(value, str):
            raise ConfigError(f"{where} inject_headers {name}: expected a string")

        def expand(match: re.Match[str], name: str = name) -> str:
            var = match.group(1)
            if var not in env:
                raise ConfigError(
                    f"{where} inject_headers {name}: environment variable {var} is not set"
                )
            return env[var]

        expanded = _ENV_REF.sub(expand, value)
        if "\r" in expanded or "\n" in expanded or "\0" in expanded:
            raise ConfigError(f"{where} inject_headers {name}: a value without CR, LF or NUL")
        out.append((name.encode(), expanded.encode("latin-1", "replace")))
    return tuple(out)
