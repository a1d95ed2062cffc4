"""The original OpenHQM's environment variables as aliases of hqm's options.

The original read ``OPENHQM_<SECTION>__<FIELD>`` (pydantic settings, ``__`` nesting,
names in any case). ``ALIASES`` maps each of its settings to the hqm option(s) it
means, with the value's conversion, or to none (then it is ignored, and the command
logs it once). ``apply_aliases`` is pure: from an environment, the ``HQM_*`` variables
the aliases stand for, added only where that variable is not set (ours win); so the
precedence is flag > ``HQM_*`` > ``OPENHQM_*`` > config file > default.

When any OPENHQM_ setting is present, the original's defaults that its manifests rely
on apply to options given nowhere else (``DEFAULTS``): Redis on localhost:6379 (the
sidecar manifests give no Redis URL), a placeholder app for the proxy (the original's
API container needs no endpoint; with Redis the proxy never calls the app) and the
original's 300 s request timeout. The README's table is ``markdown()``;
``python -m hqm.config.openhqm_env README.md`` rewrites it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from hqm.config.commands import COMMANDS
from hqm.config.options import ConfigError
from hqm.config.resolve import Effective, Source, resolve
from hqm.config.tables import Command
from hqm.config.unknown_env import unknown, why_unknown

PREFIX = "OPENHQM_"
#: A value is converted knowing every OPENHQM_ setting (``--listen`` is HOST and PORT).
Convert = Callable[[str, Mapping[str, str]], str]
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
log = logging.getLogger("hqm.config")


def _stripped(value: str, given: Mapping[str, str]) -> str:
    return value.strip()


def _listen(value: str, given: Mapping[str, str]) -> str:
    host = given.get("OPENHQM_SERVER__HOST", "0.0.0.0").strip()
    port = given.get("OPENHQM_SERVER__PORT", "8000").strip()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoint(value: str) -> tuple[str, str]:
    """``http://app:8080/api/process`` -> ("http://app:8080", "/api/process")."""
    text = value.strip()
    if "://" not in text:
        if ":" not in text:
            raise ValueError(
                "a named endpoint (OPENHQM_PROXY__ENDPOINTS) has no counterpart: give the "
                "app's URL, http://HOST:PORT[/PATH]"
            )
        return text, "/"
    parts = urlsplit(text)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return f"{parts.scheme}://{parts.netloc}", target


def _endpoint_address(value: str, given: Mapping[str, str]) -> str:
    return _endpoint(value)[0]


def _endpoint_target(value: str, given: Mapping[str, str]) -> str:
    return _endpoint(value)[1]


def _attempts(value: str, given: Mapping[str, str]) -> str:
    return str(int(value.strip()) + 1)  # retries after the first attempt


#: The original: ``getattr(logging, LEVEL.upper(), logging.INFO)``.
_LEVELS = {"warn": "warning", "fatal": "critical", "notset": "debug"}


def _log_level(value: str, given: Mapping[str, str]) -> str:
    level = value.strip().lower()
    level = _LEVELS.get(level, level)
    return level if level in ("debug", "info", "warning", "error", "critical") else "info"


@dataclass(frozen=True, slots=True)
class Target:
    """One hqm option an alias sets: option ``option`` of ``command``, through its
    ``HQM_<KEY>`` variable when shared (proxy and worker both), else ``HQM_<CMD>_<KEY>``."""

    command: str
    option: str
    convert: Convert = _stripped
    #: What the README says of the conversion ("" when the value is taken as it is).
    how: str = ""

    @property
    def var(self) -> str:
        command = COMMANDS[self.command]
        return command.env_names(command.option(self.option))[-1]


@dataclass(frozen=True, slots=True)
class Alias:
    #: A variable, or a family of them ending in ``*``.
    name: str
    #: The original's default, as text ("" for none).
    default: str = ""
    targets: tuple[Target, ...] = ()
    #: Why there is no counterpart (targets empty), or a remark.
    note: str = ""
    #: Values (lower case) asking for what hqm does anyway: neither set nor ignored.
    as_is: frozenset[str] = frozenset()
    #: When set, any other value is refused: requests would go somewhere hqm cannot.
    only: frozenset[str] | None = None

    def matches(self, name: str) -> bool:
        if self.name.endswith("*"):
            return name.startswith(self.name[:-1])
        return name == self.name


def _a(name: str, default: str = "", *targets: Target, **kw) -> Alias:
    return Alias(PREFIX + name, default, targets, **kw)


_ENDPOINT_TARGETS = (
    Target("worker", "upstream", _endpoint_address, "HOST:PORT of the URL (proxy and worker)"),
    Target("proxy", "openhqm-target", _endpoint_target, "the URL's path, `/` if none"),
)
_QUEUES = "hqm queues on Redis only"
_HOST_PORT = "either one: the other is its default"
ALIASES: tuple[Alias, ...] = (
    _a("SERVER__HOST", "0.0.0.0", Target("proxy", "listen", _listen, "HOST:PORT"), note=_HOST_PORT),
    _a("SERVER__PORT", "8000", Target("proxy", "listen", _listen, "HOST:PORT"), note=_HOST_PORT),
    _a("SERVER__WORKERS", "4", note="one proxy process serves all connections"),
    _a("SERVER__RELOAD", "false", note="no auto-reload", as_is=_FALSE),
    _a("QUEUE__TYPE", "redis", note=_QUEUES, as_is=frozenset({"redis"}), only=frozenset({"redis"})),
    _a("QUEUE__REDIS_URL", "redis://localhost:6379", Target("worker", "redis")),
    *(_a(f"QUEUE__{family}_*", note=_QUEUES) for family in ("KAFKA", "SQS", "AZURE_EVENTHUBS")),
    *(_a(f"QUEUE__{family}_*", note=_QUEUES) for family in ("GCP", "MQTT", "CUSTOM")),
    _a("QUEUE__REQUEST_QUEUE_NAME", "openhqm-requests", Target("worker", "queue")),
    _a("QUEUE__RESPONSE_QUEUE_NAME", "openhqm-responses", note="results are kept per request"),
    _a("QUEUE__DLQ_NAME", "openhqm-dlq", note="dead letters are kept per queue (`hqm dlq`)"),
    _a("WORKER__COUNT", "5", Target("worker", "concurrency"), note="requests at once per worker"),
    _a("WORKER__BATCH_SIZE", "10", note="a worker claims what it has room for"),
    _a("WORKER__TIMEOUT_SECONDS", "300", Target("worker", "read-timeout")),
    _a("WORKER__MAX_RETRIES", "3", Target("worker", "max-attempts", _attempts, "retries + 1")),
    _a("WORKER__RETRY_DELAY_BASE", "1.0", Target("worker", "retry-base")),
    _a("WORKER__RETRY_DELAY_MAX", "60.0", Target("worker", "retry-max")),
    _a("PROXY__ENABLED", "false", note="hqm always forwards to the app", as_is=_TRUE),
    _a("PROXY__DEFAULT_ENDPOINT", "", *_ENDPOINT_TARGETS, note="http:// only; no named endpoint"),
    _a("PROXY__ENDPOINTS", note="name apps in `[upstreams]` of the --config file"),
    _a("PROXY__FORWARD_HEADERS", note="every header a submit gives is sent"),
    _a("PROXY__STRIP_HEADERS", note="hop-by-hop headers are always dropped"),
    _a("PROXY__MAX_RESPONSE_SIZE", "10485760", note="hqm's answer limit is --max-response"),
    _a(
        "CACHE__TYPE",
        "redis",
        note="results are kept in the queue's Redis",
        as_is=frozenset({"redis"}),
    ),
    _a("CACHE__REDIS_URL", "redis://localhost:6379", note="results are kept in --redis"),
    _a("CACHE__TTL_SECONDS", "3600", Target("worker", "result-ttl")),
    _a("CACHE__MAX_CONNECTIONS", "10", note="connections are pooled per process"),
    _a("MONITORING__METRICS_ENABLED", "true", note="/metrics is on --admin", as_is=_TRUE),
    _a("MONITORING__LOG_LEVEL", "INFO", Target("worker", "log-level", _log_level, "lower case")),
    _a("MONITORING__LOG_FORMAT", "json", note="logs are JSON", as_is=frozenset({"json"})),
    _a(
        "ROUTING__ENABLED",
        "false",
        note="routes are `[[routes]]` of the --config file",
        as_is=_FALSE,
    ),
    _a("ROUTING__*", note="routes are `[[routes]]` of the --config file"),
    _a("PARTITIONING__ENABLED", "false", note="no partitions or sticky sessions", as_is=_FALSE),
    _a("PARTITIONING__*", note="no partitions or sticky sessions"),
)


@dataclass(frozen=True, slots=True)
class Default:
    command: str
    option: str
    value: str
    why: str

    @property
    def var(self) -> str:
        command = COMMANDS[self.command]
        return command.env_names(command.option(self.option))[0]


_REDIS = "redis://localhost:6379"
DEFAULTS = (
    *(
        Default(c, "redis", _REDIS, "no OPENHQM_QUEUE__REDIS_URL")
        for c in ("proxy", "worker", "dlq")
    ),
    Default(
        "proxy", "upstream", "localhost:8080", "no endpoint; with Redis the proxy never calls it"
    ),
    Default("worker", "read-timeout", "300", "the original's endpoint timeout"),
)


@dataclass(frozen=True, slots=True)
class AliasResult:
    #: The environment with the HQM_* variables the aliases and defaults stand for.
    env: dict[str, str]
    #: OPENHQM_ variables with no counterpart (or a value hqm does not act on).
    ignored: tuple[str, ...]
    #: HQM_* variable set -> the OPENHQM_ name(s) it came from ("A + B").
    used: Mapping[str, str] = field(default_factory=dict)
    #: HQM_* variable set from ``DEFAULTS`` -> that default.
    defaulted: Mapping[str, Default] = field(default_factory=dict)


def _alias_of(name: str) -> Alias | None:
    return next((alias for alias in ALIASES if alias.matches(name)), None)


def apply_aliases(env: Mapping[str, str]) -> AliasResult:
    """The ``HQM_*`` values ``env``'s OPENHQM_ settings mean; ConfigError naming the
    OPENHQM_ variable for a value that cannot be used."""
    given = {k.upper(): v for k, v in env.items() if k.upper().startswith(PREFIX)}
    out, used, ignored = dict(env), {}, []
    known = False
    for name in sorted(given):
        alias, value = _alias_of(name), given[name]
        if alias is None:
            ignored.append(name)
            continue
        known = True
        lowered = value.strip().lower()
        if alias.only is not None and lowered not in alias.only:
            raise ConfigError(f"{name}={value!r}: {alias.note}")
        if lowered in alias.as_is:
            continue
        if not alias.targets:
            ignored.append(name)
        for target in alias.targets:
            var = target.var
            if var in env:
                continue  # ours win
            if var in used:
                used[var] += f" + {name}"
                continue
            out[var] = _converted(name, value, target, given)
            used[var] = name
    defaulted = {}
    for default in DEFAULTS if known else ():
        command = COMMANDS[default.command]
        if not any(var in out for var in command.env_names(command.option(default.option))):
            out[default.var] = default.value
            defaulted[default.var] = default
    return AliasResult(out, tuple(ignored), used, defaulted)


def _converted(name: str, value: str, target: Target, given: Mapping[str, str]) -> str:
    option = COMMANDS[target.command].option(target.option)
    try:
        text = target.convert(value, given)
        option.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r} ({option.flag}): {exc}") from None
    return text


@dataclass(frozen=True, slots=True)
class Resolved:
    effective: Effective
    #: OPENHQM_ variables to log once as ignored, and HQM_ ones that set nothing.
    ignored: tuple[str, ...]


def resolve_aliased(
    command: Command, flags: Mapping[str, object], env: Mapping[str, str]
) -> Resolved:
    """``resolve`` with the OPENHQM_ aliases; an origin names the OPENHQM_ variable.
    A default of the original's gives way to the config file."""
    aliases = apply_aliases(env)
    effective = resolve(command, flags, aliases.env)
    config = effective.config
    beaten = {
        var
        for var, default in aliases.defaulted.items()
        if config is not None
        and default.command == command.name
        and config.lookup(command, command.option(default.option)) is not None
    }
    if beaten:
        effective = resolve(
            command, flags, {k: v for k, v in aliases.env.items() if k not in beaten}
        )
    settings = []
    for setting in effective.settings:
        if setting.source is Source.ENV and setting.origin in aliases.used:
            setting = replace(setting, origin=aliases.used[setting.origin])
        elif setting.source is Source.ENV and setting.origin in aliases.defaulted:
            why = aliases.defaulted[setting.origin].why
            setting = replace(setting, source=Source.DEFAULT, origin=f"OpenHQM default: {why}")
        settings.append(setting)
    ignored = (*aliases.ignored, *unknown(env))
    return Resolved(replace(effective, settings=tuple(settings)), ignored)


def why_ignored(name: str) -> str:
    if not name.upper().startswith(PREFIX):
        return why_unknown(name)
    alias = _alias_of(name)
    return alias.note if alias is not None else "not a setting of the original OpenHQM"


def log_ignored(names: tuple[str, ...]) -> None:
    """Once per process, after logging is set up: each OPENHQM_ setting hqm ignores."""
    for name in names:
        log.warning(
            "%s ignored: %s (%s)",
            "OpenHQM setting" if name.upper().startswith(PREFIX) else "environment variable",
            name,
            why_ignored(name),
            extra={"setting": name},
        )


# --- the README's table ----------------------------------------------------------------
def _values(values: frozenset[str]) -> str:
    shown = {_TRUE: "true", _FALSE: "false"}.get(values) or "/".join(sorted(values))
    return f"`{shown}`"


def _cell(alias: Alias) -> str:
    if alias.only is not None:
        return f"{_values(alias.only)} as hqm does; any other value is refused"
    if not alias.targets:
        kept = f"{_values(alias.as_is)} as hqm does; else " if alias.as_is else ""
        return f"{kept}ignored, logged once"
    parts = []
    for target in alias.targets:
        how = f": {target.how}" if target.how else ""
        parts.append(f"`--{target.option}` (`{target.var}`){how}")
    return "; ".join(parts)


def markdown() -> str:
    rows = ["| OpenHQM variable | its default | hqm | note |", "|---|---|---|---|"]
    for alias in ALIASES:
        default = f"`{alias.default}`" if alias.default else ""
        rows.append(f"| `{alias.name}` | {default} | {_cell(alias)} | {alias.note} |")
    rows.append("")
    rows.append("With any of them set, an option given nowhere else takes the original's default:")
    rows.append("")
    for default in DEFAULTS:
        flag = COMMANDS[default.command].option(default.option).flag
        rows.append(f"- `hqm {default.command} {flag} {default.value}`: {default.why}")
    return "\n".join(rows) + "\n"


_BLOCK = re.compile(r"(<!-- openhqm-env -->\n)(.*?)(<!-- /openhqm-env -->)", re.S)


def rewrite(text: str) -> str:
    return _BLOCK.sub(lambda match: match.group(1) + markdown() + match.group(3), text)


if __name__ == "__main__":  # pragma: no cover
    for readme in sys.argv[1:] or ["README.md"]:
        Path(readme).write_text(rewrite(Path(readme).read_text()))
