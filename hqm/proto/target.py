"""The request-target as the app may act on it: the path route decisions are made on.

Sans-IO: bytes in, a ``Target`` out.

Forms (RFC 9112 §3.2): origin (``/path?query``), absolute (``http://host/path?query``:
its authority is the request's host, §3.2.2), asterisk (``*``, for ``OPTIONS``). Any
other target (authority form outside ``CONNECT``, a bare ``path``) is a ``TargetError``
(400).

The canonical path is RFC 3986 §6.2.2's: percent-encoded unreserved characters decoded
(``%69`` is ``i``), the hex of every other escape upper-cased (``%2f`` is ``%2F``). A
path that holds nothing an app could read otherwise (no dot segment, encoded ``/``,
``\\`` or ``%``, backslash, empty segment, ``;`` parameter, control character or ``#``)
has that one reading. Otherwise ``readings`` lists every path an app may act on: the
frameworks people run decode ``%2F`` to ``/`` before routing (werkzeug, Starlette) or
not (aiohttp), merge slashes (werkzeug) or not, remove dot segments (yarl, Go, nginx)
or not, strip ``;`` parameters (Java servlet containers), treat ``\\`` as ``/`` (IIS,
some Node routers), decode twice, stop at a NUL (C) or at ``#``. The readings are
every combination of those steps; the route decision must hold on each of them
(``hqm.ingress.routes``), or the request is ambiguous. ``normalized`` is Envoy's
``normalize_path`` + ``merge_slashes`` + unescaped slashes: what is forwarded when the
proxy is told to normalize an ambiguous path instead of refusing it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

#: RFC 3986 §2.3 unreserved characters: their percent-encoding means the same path.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
#: RFC 3986 §3.1 scheme, then "//" and the authority (up to the path, query or fragment).
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
#: Characters no path needs raw and some app reads otherwise (a quick test before the
#: precise one): escapes, dot segments, backslash, empty segments, parameters, fragment.
_SUSPECT = re.compile(rb"[%\\;#]|/\.|//")
#: Longest path whose readings are worked out; a longer one with anything to read
#: otherwise is refused (400) unread. Working out the readings costs in proportion to
#: the path's length times its distinct readings (a few dozen at worst): at 2 KiB the
#: worst path costs under 2 ms of CPU (bench/routes.py, "worst"), some 20 requests' worth,
#: where 8 KiB cost 7 ms. Browsers and clients keep URLs under 2 KiB (the practical
#: limit of old browsers); paths that need decoding to be read are shorter still.
MAX_AMBIGUOUS_PATH_BYTES = 2 * 1024


class TargetError(ValueError):
    """A request-target hqm cannot route: the client gets ``status`` with ``reason``."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    #: The canonical path (unreserved decoded, hex upper case); ``*`` for asterisk form.
    path: bytes
    #: Absolute form: its authority's host[:port], lower case, userinfo removed.
    authority: bytes | None
    #: The query, ``?`` included (b"" without one).
    query: bytes
    #: Every distinct path an app may act on, ``path`` first.
    readings: tuple[bytes, ...]
    #: What makes the path readable otherwise, for the client's error ("dot segment"...).
    features: tuple[str, ...]
    #: The target with its path normalized (dot segments removed, ``%2F`` / ``%5C`` /
    #: ``\\`` as ``/``, slashes merged, fragment dropped), in the form it came in: what
    #: is forwarded when an ambiguous path is normalized rather than refused.
    normalized: bytes


def _decode_unreserved(match: re.Match[bytes]) -> bytes:
    byte = int(match.group(1), 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + match.group(1).upper()


def _decode_all(path: bytes) -> bytes:
    return unquote_to_bytes(path) if b"%" in path else path


def remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 §5.2.4 for an absolute path: ``/a/b/../c/./d`` is ``/a/c/d``; a ``..``
    above the root stays at the root; a trailing ``.`` or ``..`` leaves a trailing ``/``."""
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for segment in segments:
        if segment == b".":
            continue
        if segment == b"..":
            if out:
                out.pop()
            continue
        out.append(segment)
    if segments and segments[-1] in (b".", b".."):
        out.append(b"")
    return b"/" + b"/".join(out)


def _merge_slashes(path: bytes) -> bytes:
    while b"//" in path:
        path = path.replace(b"//", b"/")
    return path


def _strip_parameters(path: bytes) -> bytes:
    return b"/".join(segment.split(b";", 1)[0] for segment in path.split(b"/"))


def _has_dot_segment(path: bytes) -> bool:
    return any(segment in (b".", b"..") for segment in path.split(b"/"))


def _features(canonical: bytes) -> tuple[str, ...]:
    upper = canonical.upper()
    found = []
    if b"#" in canonical:
        found.append("fragment")
    if _has_dot_segment(canonical):
        found.append("dot segment")
    if b"%2F" in upper or b"%5C" in upper:
        found.append("encoded slash")
    if b"\\" in canonical:
        found.append("backslash")
    if b"//" in canonical:
        found.append("empty segment")
    if b";" in canonical or b"%3B" in upper:
        found.append("path parameter")
    if b"%25" in upper:
        found.append("encoded percent")
    if re.search(rb"%[01][0-9A-F]|%7F", upper):
        found.append("encoded control character")
    return tuple(found)


def _readings(canonical: bytes) -> tuple[bytes, ...]:
    """Every path an app may act on: each combination of the steps some app takes, in
    the order they take them (only the steps that can change this path are tried).
    Worked out step by step over the distinct paths so far, not combination by
    combination: the cost follows the number of distinct readings."""
    deep = _decode_twice(canonical)  # what the most eager app reads
    steps: list[tuple[Callable[[bytes], bytes], ...]] = []
    if b"#" in canonical:
        steps.append((_cut_fragment,))
    if b"%" in canonical:
        steps.append(
            (_decode_all, _decode_twice) if b"%25" in canonical.upper() else (_decode_all,)
        )
    if b"\\" in deep:
        steps.append((_backslashes,))
    if b"\x00" in deep:
        steps.append((_cut_nul,))
    if b";" in deep:
        steps.append((_strip_parameters,))
    # Slashes merged before or after dot segments are removed (or neither), when an
    # empty segment is there or a step above may leave one behind.
    merge = b"//" in deep or b"\\" in deep or b";" in deep
    if merge:
        steps.append((_merge_slashes,))
    if b"." in deep:
        steps.append((remove_dot_segments,))
    if merge:
        steps.append((_merge_slashes,))
    paths: dict[bytes, None] = {canonical: None}
    for alternatives in steps:
        for path in list(paths):
            for step in alternatives:
                paths.setdefault(step(path) or b"/", None)
    return tuple(paths)


def _cut_fragment(path: bytes) -> bytes:
    return path.split(b"#", 1)[0]


def _cut_nul(path: bytes) -> bytes:
    return path.split(b"\x00", 1)[0]


def _backslashes(path: bytes) -> bytes:
    return path.replace(b"\\", b"/")


def _decode_twice(path: bytes) -> bytes:
    return _decode_all(_decode_all(path))


def _normalized(canonical: bytes) -> bytes:
    path = canonical.split(b"#", 1)[0]
    path = re.sub(rb"%2F|%5C", b"/", path, flags=re.IGNORECASE).replace(b"\\", b"/")
    return _merge_slashes(remove_dot_segments(_merge_slashes(path)))


def _host_of(authority: bytes) -> bytes:
    host = authority.rpartition(b"@")[2].lower()
    name, colon, port = host.rpartition(b":") if not host.endswith(b"]") else (host, b"", b"")
    if not colon or not port.isdigit():
        name, colon, port = host, b"", b""
    return name.rstrip(b".") + colon + port


def normalize_host(value: bytes) -> bytes:
    """A Host value as routes compare it: lower case, no trailing dot on the name."""
    return _host_of(value.strip())


def plain_path(raw: bytes) -> bytes | None:
    """The path of an origin-form target that holds nothing to read otherwise (most
    requests: their one reading is the path as sent), else None: ``parse_target`` it."""
    if raw[:1] != b"/":
        return None
    path = raw.partition(b"?")[0]
    return path if _SUSPECT.search(path) is None else None


def parse_target(raw: bytes) -> Target:
    """The target's path, host and readings; TargetError for a form hqm cannot route."""
    authority, prefix = None, b""
    if raw[:1] == b"/":
        rest = raw
    elif raw == b"*":
        return Target(b"*", None, b"", (b"*",), (), b"*")
    else:
        match = _ABSOLUTE.fullmatch(raw)
        if match is None:
            raise TargetError("the request-target is neither a path nor an absolute URI")
        if match.group(1).lower() not in (b"http", b"https"):
            raise TargetError("an absolute request-target must be an http or https URI")
        authority = _host_of(match.group(2))
        if not authority:
            raise TargetError("an absolute request-target needs a host")
        rest = match.group(3)
        prefix = raw[: len(raw) - len(rest)]
        if rest[:1] != b"/":  # "http://h", "http://h?q": the path is "/"
            rest = b"/" + rest
    path, question, query = rest.partition(b"?")
    query = question + query
    if _SUSPECT.search(path) is None:
        return Target(path, authority, query, (path,), (), prefix + path + query)
    canonical = _ESCAPE.sub(_decode_unreserved, path)
    features = _features(canonical)
    if not features:
        return Target(canonical, authority, query, (canonical,), (), prefix + canonical + query)
    if len(canonical) > MAX_AMBIGUOUS_PATH_BYTES:
        raise TargetError(f"a path with {features[0]}s is longer than hqm reads such paths")
    normalized = prefix + _normalized(canonical) + query
    return Target(canonical, authority, query, _readings(canonical), features, normalized)
