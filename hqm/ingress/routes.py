"""Routes: what becomes of a request, decided from its head alone (docs/architecture.md
§4). First match wins; the default route (queue, the proxy's own mode) comes last.

A route matches on methods, a path glob, a host glob and headers (present, equal or
glob); every condition given must hold. Globs are ``fnmatch``-style and case-sensitive
for paths (``*`` crosses ``/``: ``/reports/*`` matches ``/reports/2026/q4``), case-
insensitive for hosts (a pattern without a port ignores the request's port) and header
values. The path is the target without its query string.

``percent`` is the share of matching requests that take the route's action (queue);
the rest pass straight to the app. ``sticky`` keeps one client on one side of that
split: by a header's value, a cookie's value or the client address (hashed with the
route's name, so a client's side differs from route to route but never changes for a
route); without it (or when the header or cookie is missing) each request is split on
its own.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from hqm.ingress.caller import DEFAULT_SCOPE, CallerScope
from hqm.proto.events import RequestHead
from hqm.proto.headers import header_value
from hqm.proto.replay_token import Token

ACTIONS = ("queue", "pass", "reject")
STICKY_KINDS = ("request", "header", "cookie", "client")
#: Split resolution: percent in hundredths (10.25% is possible, 10.255% is not).
_SPLIT_SCALE = 10_000


@dataclass(frozen=True, slots=True)
class HeaderCondition:
    name: bytes  # lower case
    #: None: present (any value); else a value glob (an exact value is a glob too).
    pattern: str | None = None

    def holds(self, head: RequestHead) -> bool:
        value = header_value(head.headers, self.name)
        if value is None:
            return False
        if self.pattern is None:
            return True
        return fnmatch.fnmatch(value.decode("latin-1").lower(), self.pattern.lower())


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

    def matches(self, head: RequestHead, path: bytes) -> bool:
        if self.methods and head.method not in self.methods:
            return False
        if self.path is not None and not fnmatch.fnmatchcase(path.decode("latin-1"), self.path):
            return False
        if self.host is not None and not _host_matches(head, self.host):
            return False
        return all(condition.holds(head) for condition in self.headers)


def _host_matches(head: RequestHead, pattern: str) -> bool:
    host = header_value(head.headers, b"host")
    if host is None:
        return False
    text = host.decode("latin-1").lower()
    if ":" not in pattern and not text.endswith("]"):
        text = text.rsplit(":", 1)[0]
    return fnmatch.fnmatch(text, pattern.lower())


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of one request: the route, and whether it is queued (else passed,
    or rejected when the route says so). ``stream``: the body is passed on as it comes."""

    route: Route
    action: str  # "queue", "pass" or "reject"
    #: Transparent mode: the app of the port the client dialled (None: not known).
    dialled: str | None = None
    #: A reject's reason, when not the route's own.
    error: str = ""
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
_COOKIE_SPLIT = re.compile(rb";\s*")


class RouteTable:
    """The configured routes, then the default route."""

    def __init__(
        self,
        routes: tuple[Route, ...] = (),
        *,
        default: Route = DEFAULT_ROUTE,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.routes = routes
        self.default = default
        self._rand = rand
        self._default_decision = Decision(default, default.action)

    def route(self, head: RequestHead) -> Route:
        if self.routes:
            path = head.target.split(b"?", 1)[0]
            for route in self.routes:
                if route.matches(head, path):
                    return route
        return self.default

    def decide(self, head: RequestHead, client: str) -> Decision:
        if not self.routes:
            return self._default_decision
        route = self.route(head)
        if route.action != "queue" or route.percent >= 100.0:
            return Decision(route, route.action)
        return Decision(route, "queue" if self.in_share(route, head, client) else "pass")

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
