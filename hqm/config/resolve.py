"""Where each setting comes from: flag > environment > config file > default.

``resolve`` turns one command's raw flags, the environment and the ``--config`` file
into checked values, each with its source; the TOML file is read with ``tomllib`` and
checked whole (unknown sections or keys and wrong types are errors naming the key and
the file).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hqm.config.commands import COMMANDS
from hqm.config.options import ConfigError, Option
from hqm.config.tables import Command
from hqm.io.address import Address, parse_upstream
from hqm.proto.limits import MAX_CONFIG_BYTES

#: Upstream names are metric labels and route references: short and plain.
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class Source(StrEnum):
    FLAG = "flag"
    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Setting:
    option: Option
    value: Any
    source: Source
    #: Exactly where: "--mode", "HQM_PROXY_MODE", "hqm.toml [proxy] mode", "default".
    origin: str


@dataclass(frozen=True, slots=True)
class ConfigFile:
    path: str
    #: Checked values per section ("" = top level), by option key.
    sections: Mapping[str, Mapping[str, Any]]
    #: ``[upstreams]``: the apps this configuration names besides ``--upstream``
    #: ("default"), by name.
    upstreams: Mapping[str, Address] = field(default_factory=dict)
    #: ``[[routes]]`` as read (tables, in order); checked by ``hqm.config.routes_file``.
    routes: tuple[Mapping[str, Any], ...] = ()

    def lookup(self, command: Command, option: Option) -> tuple[Any, str] | None:
        section = self.sections.get(command.name, {})
        if option.key in section:
            return section[option.key], f"{self.path} [{command.name}] {option.key}"
        if option.shared and option.key in self.sections.get("", {}):
            return self.sections[""][option.key], f"{self.path} {option.key}"
        return None


@dataclass(frozen=True, slots=True)
class Effective:
    """One command's settings, in table order."""

    command: Command
    settings: tuple[Setting, ...]
    #: The --config file read (None: none given).
    config: ConfigFile | None = None
    #: The environment it was resolved in (``${ENV}`` in injected route headers).
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def upstreams(self) -> Mapping[str, Address]:
        return self.config.upstreams if self.config is not None else {}

    def __getitem__(self, name: str) -> Any:
        for setting in self.settings:
            if setting.option.name == name:
                return setting.value
        raise KeyError(name)

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings)


def _parse(option: Option, raw: Any, where: str, *, from_file: bool = False) -> Any:
    try:
        return option.parse_file(raw) if from_file else option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _unknown(where: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{where} {key}: unknown key{hint}")


def _shared_keys() -> dict[str, Option]:
    return {o.key: o for c in COMMANDS.values() for o in c.options if o.shared and o.in_file}


#: A UTF-8 byte order mark. TOML allows none, but Windows editors (Notepad, older
#: PowerShell's ``Out-File``) write one, and it is no content: it is skipped, as
#: Python's ``utf-8-sig`` codec does, rather than refused as "Invalid statement".
_BOM = b"\xef\xbb\xbf"


def _decoded(raw: bytes, where: str) -> str:
    """The file's text: UTF-8 (TOML's only encoding), a leading BOM skipped."""
    start = len(_BOM) if raw.startswith(_BOM) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = raw.count(b"\n", 0, offset) + 1
        raise ConfigError(
            f"{where}: not UTF-8: byte 0x{raw[offset]:02x} at offset {offset} "
            f"(line {line}); TOML files are UTF-8"
        ) from None


def load_file(path: str, where: str = "") -> ConfigFile:
    """Read and check a config file; every problem is a ConfigError naming it (and
    ``where`` it was given: "--config PATH" unless said, e.g. "HQM_CONFIG=PATH")."""
    where = where or f"--config {path}"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: longer than {MAX_CONFIG_BYTES} bytes (a ConfigMap's most)")
    try:
        data = tomllib.loads(_decoded(raw, where))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    shared = _shared_keys()
    sections: dict[str, dict[str, Any]] = {"": {}}
    upstreams: dict[str, Address] = {}
    routes: tuple[Mapping[str, Any], ...] = ()
    for name, value in data.items():
        if name in COMMANDS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{name}] must be a table, got {value!r}")
            sections[name] = _check_section(path, COMMANDS[name], value)
        elif name == "upstreams":
            upstreams = _upstreams(path, value)
        elif name == "routes":
            if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
                raise ConfigError(f"{path}: routes must be [[routes]] tables")
            routes = tuple(value)
        elif name in shared:
            sections[""][name] = _parse(shared[name], value, f"{path} {name}", from_file=True)
        else:
            known = [*COMMANDS, *shared, "upstreams", "routes"]
            raise _unknown(f"{path}:", name, known)
    return ConfigFile(path, sections, upstreams, routes)


def _upstreams(path: str, value: Any) -> dict[str, Address]:
    """``[upstreams]``: ``name = "HOST:PORT"`` (or ``http://HOST:PORT``) per app."""
    if not isinstance(value, dict):
        raise ConfigError(f'{path}: [upstreams] must be a table of name = "HOST:PORT"')
    out = {}
    for name, address in value.items():
        where = f"{path} [upstreams] {name}"
        if not _UPSTREAM_NAME.fullmatch(name) or name == "default":
            raise ConfigError(
                f"{where}: a name is letters, digits, '_', '.', '-' (and 'default' is "
                "--upstream itself)"
            )
        if not isinstance(address, str):
            raise ConfigError(f'{where}: expected "HOST:PORT", got {address!r}')
        try:
            out[name] = parse_upstream(address)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return out


def _check_section(path: str, command: Command, values: dict[str, Any]) -> dict[str, Any]:
    options = {o.key: o for o in command.options if o.in_file}
    out = {}
    for key, raw in values.items():
        option = options.get(key)
        if option is None:
            raise _unknown(f"{path} [{command.name}]", key, list(options))
        out[key] = _parse(option, raw, f"{path} [{command.name}] {key}", from_file=True)
    return out


def resolve(command: Command, flags: Mapping[str, Any], env: Mapping[str, str]) -> Effective:
    """Every option of ``command``: flag > environment > file > default.

    ``flags`` maps option dests to what click parsed (None: not given).
    """
    config_path, where = _config_path(command, flags, env)
    config = load_file(config_path, where) if config_path else None
    settings = []
    for option in command.options:
        setting = _one(command, option, flags, env, config)
        if option.required and setting.value is None:
            names = " or ".join(command.env_names(option))
            raise ConfigError(
                f"{option.flag} is required (or {names}, or {option.key} in [{command.name}] "
                "of the --config file)"
            )
        settings.append(setting)
    effective = Effective(command, tuple(settings), config, env)
    _check_embedded_only(effective)
    return effective


def _config_path(
    command: Command, flags: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[str, str]:
    """The --config file's path, and where it was given ("" for none)."""
    option = command.option("config")
    if flags.get(option.dest) is not None:
        path = _parse(option, flags[option.dest], option.flag)
        return path, f"{option.flag} {path}"
    for name in command.env_names(option):
        if name in env:
            path = _parse(option, env[name], f"{name} ({option.flag})")
            return path, f"{name}={path}"
    return "", ""


def _one(
    command: Command,
    option: Option,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    config: ConfigFile | None,
) -> Setting:
    raw = flags.get(option.dest)
    if raw is not None:
        return Setting(option, _parse(option, raw, option.flag), Source.FLAG, option.flag)
    for name in command.env_names(option):
        if name in env:
            value = _parse(option, env[name], f"{name} ({option.flag})")
            return Setting(option, value, Source.ENV, name)
    found = config.lookup(command, option) if config is not None and option.in_file else None
    if found is not None:
        return Setting(option, found[0], Source.FILE, found[1])
    default = None if option.default is None else option.parse(option.default)
    return Setting(option, default, Source.DEFAULT, "default")


def _check_embedded_only(effective: Effective) -> None:
    """With Redis the proxy runs no worker: its worker options would be ignored."""
    if effective.command.name != "proxy" or effective["redis"] is None:
        return
    for setting in effective:
        if setting.option.embedded_worker and setting.source is not Source.DEFAULT:
            raise ConfigError(
                f"{setting.origin}: configures only the in-process worker of the embedded "
                f"queue; with --redis the proxy runs no worker: give {setting.option.flag} "
                "to `hqm worker`"
            )
