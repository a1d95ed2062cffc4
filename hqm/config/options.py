"""What an option is: name, type, default, allowed values, help; and how a raw value
(a flag's or environment variable's text, or a TOML value) becomes a checked one.

The tables of options per command are in :mod:`hqm.config.tables`; everything else
(click options, environment variable names, TOML keys, ``--help``, the README's tables,
``hqm config check``) is derived from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hqm.io.address import parse_listen, parse_upstream
from hqm.worker.queues import MAX_NAME_LEN, QueueSet, check_queue_name, parse_queue_set


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the option, where it came from
    and why. The command line shows it as one line and exits 2."""


#: Parses a raw value (str from a flag or the environment; a TOML value from a file)
#: into the checked value; raises ValueError with a message that completes
#: "invalid value ...: ".
Parse = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # the flag without its dashes: "max-body"
    kind: str  # shown in --help and the README: "int", "seconds", "address", ...
    default: Any
    help: str
    parse: Parse
    #: Given as a bare switch (``--burst``), or as ``--x/--no-x`` when negatable.
    switch: bool = False
    #: The flag may be repeated (its values reach ``parse`` as a tuple), and the file
    #: value may be a list.
    multiple: bool = False
    negatable: bool = False
    required: bool = False
    #: Also read from ``HQM_<FLAG>`` and top-level file keys (proxy and worker share it).
    shared: bool = False
    #: On ``hqm proxy``: configures the in-process worker of the embedded queue only.
    embedded_worker: bool = False
    #: False only for ``--config`` itself.
    in_file: bool = True
    #: How the default is shown when it is not the value itself (e.g. "HOST-PID").
    default_text: str | None = None
    #: How a value is shown by ``hqm config check`` (hides passwords).
    display: Callable[[Any], str] | None = None

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def key(self) -> str:
        """Its key in the TOML file."""
        return self.name.replace("-", "_")

    @property
    def dest(self) -> str:
        """Its name as a Python identifier (click's parameter name)."""
        return self.key

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return show(self.default)

    def parse_file(self, raw: Any) -> Any:
        """A TOML value: its type must be the option's own (``max_body = "5"`` is an
        error, though ``--max-body 5`` is text like every flag)."""
        types = _FILE_TYPES.get(self.kind, (str,))
        if self.multiple:
            types = (*types, list)
        if not isinstance(raw, types) or (bool not in types and isinstance(raw, bool)):
            names = " or ".join(_TOML_NAMES[t] for t in types)
            raise ValueError(f"expected {names}, got {type(raw).__name__} {raw!r}")
        return self.parse(raw)

    def shown(self, value: Any) -> str:
        return self.display(value) if self.display is not None and value else show(value)


_FILE_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "bytes": (int,),
    "seconds": (int, float),
    "req/s": (int, float),
    "ratio": (int, float),
    "bool": (bool,),
}
_TOML_NAMES = {
    int: "an integer",
    float: "a float",
    bool: "true or false",
    str: "a string",
    list: "a list",
}


def show(value: Any) -> str:
    """A value as a user writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- parsers -----------------------------------------------------------------------
def _bound_text(low: float | None, high: float | None, low_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"> {show(low)}" if low_open else f">= {show(low)}")
    if high is not None:
        parts.append(f"<= {show(high)}")
    return " and ".join(parts)


def integer(*, low: int | None = None, high: int | None = None) -> Parse:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        if isinstance(raw, str):
            text = raw.strip()
            if not text.lstrip("+-").isdigit():
                raise ValueError(f"expected an integer, got {raw!r}")
            raw = int(text)
        if not isinstance(raw, int):
            raise ValueError(f"expected an integer, got {raw!r}")
        if (low is not None and raw < low) or (high is not None and raw > high):
            raise ValueError(f"must be {_bound_text(low, high, False)}, got {raw}")
        return raw

    return parse


def number(*, low: float | None = 0.0, high: float | None = None, low_open: bool = False) -> Parse:
    """A float (seconds, rates); ``low_open`` excludes ``low`` itself."""

    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        if isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {raw!r}") from None
        if not isinstance(raw, int | float) or not math.isfinite(raw):
            raise ValueError(f"expected a finite number, got {raw!r}")
        value = float(raw)
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            raise ValueError(f"must be {_bound_text(low, high, low_open)}, got {show(value)}")
        return value

    return parse


def choice(*choices: str) -> Parse:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or raw.strip().lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {raw!r}")
        return raw.strip().lower()

    return parse


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {raw!r}")


def text(*, empty_ok: bool = False, max_len: int = 200) -> Parse:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {raw!r}")
        if not raw.strip() and not empty_ok:
            raise ValueError("must not be empty")
        if len(raw) > max_len or any(ord(c) < 32 for c in raw):
            raise ValueError(f"must be printable and at most {max_len} characters")
        return raw

    return parse


def queue_name(raw: Any) -> str:
    """One queue name (no ',' or '=': those are ``hqm worker``'s several queues)."""
    return check_queue_name(text(max_len=MAX_NAME_LEN)(raw))


def queue_set(raw: Any) -> QueueSet:
    """``hqm worker --queue``: one queue, or several (``hqm.worker.queues``)."""
    return parse_queue_set(raw)


def _string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw.strip()


def listen_address(*, off: bool = False) -> Parse:
    """HOST:PORT or :PORT; with ``off``, the word "off" turns the listener off (None)."""

    def parse(raw: Any) -> Any:
        value = _string(raw)
        if off and value.lower() == "off":
            return None
        return parse_listen(value)

    return parse


def upstream_address(raw: Any) -> Any:
    return parse_upstream(_string(raw))


#: URL schemes the Redis backend connects to (hqm.queue.redis_conn).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")


def redis_url(*, none_ok: bool) -> Parse:
    """A Redis URL; with ``none_ok``, an empty value means "no Redis" (None)."""

    def parse(raw: Any) -> str | None:
        value = _string(raw)
        if not value and none_ok:
            return None
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"expected redis://[:PASSWORD@]HOST:PORT/DB (or {', '.join(REDIS_SCHEMES[1:])})"
                f", got {value!r}"
            )
        return value

    return parse


def path(raw: Any) -> str:
    value = _string(raw)
    if not value:
        raise ValueError("must not be empty")
    return value


def redact_url(value: Any) -> str:
    """A URL with its password replaced by ``***``."""
    scheme, sep, rest = str(value).partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return str(value)
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"


#: Largest value accepted for a duration: a year. Beyond it a typo, not a wish.
MAX_SECONDS = 365 * 24 * 3600.0


def seconds(*, zero_ok: bool) -> Parse:
    """A duration: 0 allowed only where it means something ("none", "at once")."""
    return number(low=0.0, high=MAX_SECONDS, low_open=not zero_ok)
