"""Route matching and the percent split, from heads alone (pure)."""

from __future__ import annotations

import itertools

import pytest

from hqm.ingress.routes import DEFAULT_ROUTE, HeaderCondition, Route, RouteTable, Sticky
from hqm.proto.events import RequestHead


def head(method=b"GET", target=b"/", host=b"api.example.com", **headers) -> RequestHead:
    fields = [(b"Host", host)] if host is not None else []
    fields += [(k.replace("_", "-").encode(), v) for k, v in headers.items()]
    return RequestHead(method, target, tuple(fields), b"1.1")


CASES = [
    # (route, request head, matches)
    (Route("m", methods=frozenset({b"POST"})), head(b"POST"), True),
    (Route("m", methods=frozenset({b"POST"})), head(b"GET"), False),
    (Route("p", path="/reports/*"), head(target=b"/reports/2026/q4?x=1"), True),
    (Route("p", path="/reports/*"), head(target=b"/report"), False),
    (Route("p", path="/healthz"), head(target=b"/healthz?probe=1"), True),
    (Route("p", path="/healthz"), head(target=b"/healthz/deep"), False),
    (Route("p", path="/Health"), head(target=b"/health"), False),  # paths: case counts
    (Route("h", host="*.example.com"), head(host=b"API.example.com:8080"), True),
    (Route("h", host="*.example.com"), head(host=b"example.org"), False),
    (Route("h", host="a.example.com:8080"), head(host=b"a.example.com:9090"), False),
    (Route("h", host="a.example.com"), head(host=None), False),
    (Route("hp", headers=(HeaderCondition(b"x-canary"),)), head(x_canary=b""), True),
    (Route("hp", headers=(HeaderCondition(b"x-canary"),)), head(), False),
    (Route("he", headers=(HeaderCondition(b"x-tenant", "acme"),)), head(x_tenant=b"ACME"), True),
    (Route("he", headers=(HeaderCondition(b"x-tenant", "acme"),)), head(x_tenant=b"acme2"), False),
    (
        Route("hg", headers=(HeaderCondition(b"x-tenant", "acme-*"),)),
        head(x_tenant=b"acme-eu"),
        True,
    ),
    (Route("hg", headers=(HeaderCondition(b"x-tenant", "acme-*"),)), head(x_tenant=b"beta"), False),
]


@pytest.mark.parametrize(("route", "request_head", "expected"), CASES)
def test_each_condition_alone(route, request_head, expected):
    assert (RouteTable((route,)).route(request_head) is route) is expected


def test_all_given_conditions_must_hold():
    route = Route(
        "all",
        methods=frozenset({b"POST"}),
        path="/reports/*",
        host="api.*",
        headers=(HeaderCondition(b"x-tenant", "acme*"),),
    )
    full = dict(method=b"POST", target=b"/reports/1", host=b"api.x", x_tenant=b"acme")
    table = RouteTable((route,))
    assert table.route(head(**full)) is route
    for key, wrong in [
        ("method", b"GET"),
        ("target", b"/other"),
        ("host", b"www.x"),
        ("x_tenant", b"beta"),
    ]:
        case = {**full, key: wrong}
        assert table.route(head(**case)) is not route, key


def test_first_match_wins_and_the_default_route_comes_last():
    first = Route("first", path="/a/*", action="pass")
    second = Route("second", path="/a/b", action="reject")
    table = RouteTable((first, second))
    assert table.route(head(target=b"/a/b")) is first
    assert table.route(head(target=b"/zzz")) is DEFAULT_ROUTE
    decision = table.decide(head(target=b"/zzz"), "10.0.0.1")
    assert (decision.route, decision.action, decision.stream) == (DEFAULT_ROUTE, "queue", False)
    assert table.decide(head(target=b"/a/x"), "").stream


def _share(table: RouteTable, heads) -> float:
    decisions = [table.decide(h, "") for h in heads]
    return sum(d.action == "queue" for d in decisions) / len(decisions)


def test_percent_per_request_share_of_10000():
    table = RouteTable((Route("canary", percent=10.0),))
    share = _share(table, itertools.repeat(head(), 10_000))
    assert 0.085 <= share <= 0.115


def test_percent_sticky_by_header_share_and_no_client_changes_side():
    route = Route("canary", percent=10.0, sticky=Sticky("header", "X-User"))
    table = RouteTable((route,))
    users = [f"user-{i}".encode() for i in range(10_000)]
    share = _share(table, (head(x_user=u) for u in users))
    assert 0.085 <= share <= 0.115
    for user in users[:500]:
        sides = {table.decide(head(x_user=user, target=b"/" + t), "").action for t in (b"a", b"b")}
        assert len(sides) == 1, user


def test_percent_sticky_by_cookie_and_by_client_address():
    by_cookie = RouteTable((Route("c", percent=50.0, sticky=Sticky("cookie", "sid")),))
    sides = {
        by_cookie.decide(head(cookie=b"theme=dark; sid=abc123; x=1"), "").action for _ in range(50)
    }
    assert len(sides) == 1
    by_client = RouteTable((Route("c", percent=50.0, sticky=Sticky("client")),))
    for address in ("10.0.0.1", "10.0.0.2", "fd00::7"):
        assert len({by_client.decide(head(), address).action for _ in range(50)}) == 1
    clients = [f"10.0.{i // 256}.{i % 256}" for i in range(4000)]
    share = sum(by_client.decide(head(), c).action == "queue" for c in clients) / len(clients)
    assert 0.45 <= share <= 0.55


def test_percent_zero_passes_everything_and_hundred_queues_everything():
    none = RouteTable((Route("r", percent=0.0),))
    every = RouteTable((Route("r", percent=100.0),))
    assert {none.decide(head(), "").action for _ in range(200)} == {"pass"}
    assert {every.decide(head(), "").action for _ in range(200)} == {"queue"}


def test_a_missing_sticky_header_falls_back_to_a_split_per_request():
    table = RouteTable((Route("r", percent=50.0, sticky=Sticky("header", "X-User")),))
    assert {table.decide(head(), "").action for _ in range(200)} == {"queue", "pass"}
