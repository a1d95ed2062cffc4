"""Routes: what becomes of a request, decided from its head alone (docs/architecture.md
§4). First match wins; the default route (queue, the proxy's own mode) comes last.

A route matches on methods, a path glob, a host glob and headers (present, equal or
glob); every condition given must hold. Globs are ``fnmatch``-style and case-sensitive
for paths (``*`` crosses ``/``: ``/reports/*`` matches ``/reports/2026/q4``), case-
insensitive for hosts (a pattern without a port ignores the request's port) and header
values.

Routes match the path the app will act on (``hqm.proto.target``, docs/architecture.md §4): an
absolute-form target is reduced to its path and its authority is the request's host;
percent-encoded unreserved characters are decoded (``/%69nternal`` is ``/internal``).
A path an app may read otherwise (dot segments, an encoded ``/`` or ``\\``, empty
segments, ``;`` parameters...) is matched on every reading; when all of them take the
same route, that route applies and the request goes on exactly as sent; when they
differ, ``ambiguous`` decides: refuse it (400, the default) or forward the normalized
path when that one reads one way only. A header a condition names that is repeated is
read as its first, its last and its joined value, likewise.

``percent`` is the share of matching requests that take the route's action (queue);
the rest pass straight to the app. ``sticky`` keeps one client on one side of that
split: by a header's value, a cookie's value or the client address (hashed with the
route's name, so a client's side differs from route to route but never changes for a
route); without it (or when the header or cookie is missing) each request is split on
its own.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from hqm.ingress.caller import DEFAULT_SCOPE, CallerScope
from hqm.proto.envelope import Headers
from hqm.proto.events import RequestHead
from hqm.proto.headers import header_value
from hqm.proto.replay_token import Token
from hqm.proto.target import Target, TargetError, normalize_host, parse_target, plain_path

ACTIONS = ("queue", "pass", "reject")
#: What becomes of a path whose readings take different routes (--ambiguous-path):
#: refused (400) by default, as a path that means two things to two readers is an
#: attack or a bug far more often than a need; or forwarded normalized.
AMBIGUOUS_POLICIES = ("reject", "normalize")
DEFAULT_AMBIGUOUS = AMBIGUOUS_POLICIES[0]
STICKY_KINDS = ("request", "header", "cookie", "client")
#: Split resolution: percent in hundredths (10.25% is possible, 10.255% is not).
_SPLIT_SCALE = 10_000


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    name: bytes  # lower case
    #: None: present (any value); else a value glob (an exact value is a glob too).
    pattern: str | None = None

    def holds(self, view: View) -> bool:
        value = view.header(self.name)
        if value is None:
            return False
        if self.pattern is None:
            return True
        return fnmatch.fnmatch(value.decode("latin-1").lower(), self.pattern.lower())


@dataclass(frozen=True, slots=True)
class View:
    """One reading of a request, as routes match it."""

    method: bytes
    #: The path (latin-1 text, for the globs).
    path: str
    #: The host it is for, ``normalize_host``-ed (None: none given).
    host: bytes | None
    headers: Headers
    #: Which value of a repeated header a condition reads: "first", "last" or "joined".
    pick: str = "first"

    def header(self, name: bytes) -> bytes | None:
        if self.pick == "first":
            return header_value(self.headers, name)
        values = [value for key, value in self.headers if key.lower() == name]
        if not values:
            return None
        return values[-1] if self.pick == "last" else b", ".join(values)


@dataclass(frozen=True, slots=True)
class Sticky:
    kind: str = "request"  # one of STICKY_KINDS
    #: The header or cookie name ("" for request and client).
    name: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    action: str = "queue"
    #: Match conditions; empty ones match everything.
    methods: frozenset[bytes] = frozenset()
    path: str | None = None
    host: str | None = None
    headers: tuple[HeaderCondition, ...] = ()
    #: reject: the status answered.
    status: int = 403
    queue: str = "default"
    #: None: the proxy's own --mode / --wait.
    mode: str | None = None
    wait_s: float | None = None
    percent: float = 100.0
    sticky: Sticky = Sticky()
    upstream: str = "default"
    timeout_s: float = 0.0
    max_attempts: int = 0
    #: Added to the request on its way to the app (already ${ENV}-expanded). Secret:
    #: shown only as "<redacted>".
    inject_headers: tuple[tuple[bytes, bytes], ...] = ()
    #: Who the caller is (hqm.ingress.caller): an Idempotency-Key is that caller's.
    caller: CallerScope = DEFAULT_SCOPE
    #: "id": the id reads the result; "caller": only with the submitter's credentials.
    result_access: str = "id"

    def matches(self, view: View) -> bool:
        if self.methods and view.method not in self.methods:
            return False
        if self.path is not None and not _glob_matches(self.path, view.path):
            return False
        if self.host is not None and not _host_matches(view.host, self.host):
            return False
        return all(condition.holds(view) for condition in self.headers)


def _glob_matches(pattern: str, path: str) -> bool:
    return _path_matcher(pattern)(path)


@functools.cache
def _path_matcher(pattern: str) -> Callable[[str], bool]:
    """A path glob as a test, made once per pattern: the common ``/prefix/*`` is a
    ``startswith``, the rest fnmatch's regex."""
    if pattern.endswith("*") and not any(c in pattern[:-1] for c in "*?["):
        prefix = pattern[:-1]
        return lambda path: path.startswith(prefix)
    return re.compile(fnmatch.translate(pattern), re.DOTALL).match


def _host_matches(host: bytes | None, pattern: str) -> bool:
    if host is None:
        return False
    text = host.decode("latin-1")
    if ":" not in pattern and not text.endswith("]"):
        text = text.rsplit(":", 1)[0]
    return fnmatch.fnmatch(text, pattern.lower())


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of one request: the route, and whether it is queued (else passed,
    or rejected when the route says so). ``stream``: the body is passed on as it comes."""

    route: Route
    action: str  # "queue", "pass", "reject", or "api" (hqm's own endpoints)
    #: Transparent mode: the app of the port the client dialled (None: not known).
    dialled: str | None = None
    #: A reject's reason, when not the route's own.
    error: str = ""
    #: The request-target to act on when not the one sent: the normalized one
    #: (--ambiguous-path normalize), or for hqm's own API the canonical origin form.
    target: bytes | None = None
    #: A worker's replay (HQM-Replay, its time checked): passed once its MAC holds for
    #: the whole request, body included, and it was not spent before.
    replay: Token | None = None

    @property
    def stream(self) -> bool:
        return self.action == "pass"

    @property
    def upstream(self) -> str:
        """The app it goes to: the route's own, unless the route leaves it at "default"
        and the client dialled a configured app's port."""
        if self.dialled is None or self.route.upstream != "default":
            return self.route.upstream
        return self.dialled


DEFAULT_ROUTE = Route(name="default")
#: Requests hqm refuses to route: a target that is not a path or an http(s) URI, and a
#: path whose readings take different routes (``ambiguous = "reject"``).
BAD_TARGET = Route(name="bad-target", action="reject", status=400)
AMBIGUOUS = Route(name="ambiguous-path", action="reject", status=400)


@dataclass(frozen=True, slots=True)
class Match:
    """The route of a request's first reading, and the other routes its other readings
    take (empty: every reading agrees)."""

    route: Route
    target: Target
    others: tuple[Route, ...] = ()

    @property
    def reason(self) -> str:
        features = ", ".join(self.target.features) or "host"
        return (
            f"ambiguous request path ({features}): apps read it as paths that take "
            "different routes; send the path the app should act on"
        )


_COOKIE_SPLIT = re.compile(rb";\s*")


class RouteTable:
    """The configured routes, then the default route; ``reserved`` routes (hqm's own
    API) come before the configured ones."""

    def __init__(
        self,
        routes: tuple[Route, ...] = (),
        *,
        default: Route = DEFAULT_ROUTE,
        rand: Callable[[], float] = random.random,
        ambiguous: str = DEFAULT_AMBIGUOUS,
        reserved: tuple[Route, ...] = (),
    ) -> None:
        if ambiguous not in AMBIGUOUS_POLICIES:
            raise ValueError(f"ambiguous must be one of {AMBIGUOUS_POLICIES}, got {ambiguous!r}")
        self.routes = routes
        self.default = default
        self.ambiguous = ambiguous
        self.reserved = reserved
        self._rand = rand
        self._all = reserved + routes
        #: Conditions that make host readings and repeated headers worth looking at.
        self._hosts = any(route.host is not None for route in self._all)
        self._header_names = frozenset(c.name for route in self._all for c in route.headers)
        self._paths_only = not self._hosts and not self._header_names
        #: The decision of each route taken whole and as sent (most requests'), made once.
        self._whole = {id(route): Decision(route, route.action) for route in (*self._all, default)}

    def with_reserved(self, reserved: tuple[Route, ...]) -> RouteTable:
        """This table with ``reserved`` routes first (the proxy's own endpoints)."""
        return RouteTable(
            self.routes,
            default=self.default,
            rand=self._rand,
            ambiguous=self.ambiguous,
            reserved=reserved,
        )

    def route(self, head: RequestHead) -> Route:
        """The route of the request's first reading (TargetError for an unroutable target)."""
        return self.match(head).route

    def match(self, head: RequestHead, target: Target | None = None) -> Match:
        """The routes of every reading of ``head`` (TargetError: not routable)."""
        if target is None:
            target = parse_target(head.target)
        if not self._all:
            return Match(self.default, target)
        if len(target.readings) == 1 and self._paths_only:
            return Match(self._first_on_path(head.method, target.path), target)
        views = self._views(head, target)
        first = self._first(next(views))
        others = {id(route): route for route in map(self._first, views) if route is not first}
        return Match(first, target, tuple(others.values()))

    def _first_on_path(self, method: bytes, path: bytes) -> Route:
        """``_first`` for a table whose routes look at methods and paths alone."""
        text = path.decode("latin-1")
        for route in self._all:
            if (not route.methods or method in route.methods) and (
                route.path is None or _path_matcher(route.path)(text)
            ):
                return route
        return self.default

    def _first(self, view: View) -> Route:
        for route in self._all:
            if route.matches(view):
                return route
        return self.default

    def _views(self, head: RequestHead, target: Target):
        if self._hosts:
            hosts = [normalize_host(v) for k, v in head.headers if k.lower() == b"host"]
            if target.authority is not None:
                hosts.insert(0, target.authority)
            hosts = list(dict.fromkeys(hosts)) or [None]
        else:
            hosts = [None]
        picks = ["first"]
        if self._header_names:
            names = [name.lower() for name, _ in head.headers]
            if any(names.count(name) > 1 for name in self._header_names):
                picks = ["first", "last", "joined"]
        for path in target.readings:
            text = path.decode("latin-1")
            for host in hosts:
                for pick in picks:
                    yield View(head.method, text, host, head.headers, pick)

    def decide(self, head: RequestHead, client: str) -> Decision:
        path = plain_path(head.target) if self._paths_only else None
        if path is not None:  # most requests: one reading, the path as sent
            route = self._first_on_path(head.method, path)
            if route.action != "api" and (route.action != "queue" or route.percent >= 100.0):
                return self._whole[id(route)]
        try:
            match = self.match(head)
        except TargetError as exc:
            return Decision(BAD_TARGET, "reject", error=exc.reason)
        target = None
        if match.others:
            if self.ambiguous == "reject":
                return Decision(AMBIGUOUS, "reject", error=match.reason)
            target = match.target.normalized
            try:
                normalized = self.match(head, parse_target(target))
            except TargetError as exc:
                return Decision(BAD_TARGET, "reject", error=exc.reason)
            if normalized.others:  # even its normalized form reads several ways
                return Decision(AMBIGUOUS, "reject", error=normalized.reason)
            match = normalized
        route = match.route
        if route.action == "api":
            target = match.target.path + match.target.query
        if route.action != "queue" or route.percent >= 100.0:
            if target is None:
                return self._whole[id(route)]
            return Decision(route, route.action, target=target)
        action = "queue" if self.in_share(route, head, client) else "pass"
        return Decision(route, action, target=target)

    def in_share(self, route: Route, head: RequestHead, client: str) -> bool:
        """Whether this request falls in the route's ``percent`` share."""
        if route.percent <= 0.0:
            return False
        key = sticky_key(route.sticky, head, client)
        if key is None:
            point = self._rand() * 100.0
        else:
            digest = hashlib.blake2b(route.name.encode() + b"\0" + key, digest_size=8).digest()
            point = int.from_bytes(digest, "big") % _SPLIT_SCALE * 100.0 / _SPLIT_SCALE
        return point < route.percent


def sticky_key(sticky: Sticky, head: RequestHead, client: str) -> bytes | None:
    """The value that keeps a client on one side of the split (None: none here)."""
    if sticky.kind == "client":
        return client.encode() or None
    if sticky.kind == "header":
        return header_value(head.headers, sticky.name.lower().encode())
    if sticky.kind == "cookie":
        wanted = sticky.name.encode()
        for name, value in head.headers:
            if name.lower() != b"cookie":
                continue
            for pair in _COOKIE_SPLIT.split(value):
                key, sep, cookie = pair.partition(b"=")
                if sep and key.strip() == wanted:
                    return cookie.strip()
    return None
