"""The request-target as apps read it (hqm.proto.target), and route decisions made on
every reading (hqm.ingress.routes): bytes in, decisions out, no sockets."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hqm.ingress.routes import AMBIGUOUS, BAD_TARGET, HeaderCondition, Route, RouteTable
from hqm.proto.events import RequestHead
from hqm.proto.target import (
    MAX_AMBIGUOUS_PATH_BYTES,
    TargetError,
    normalize_host,
    parse_target,
    remove_dot_segments,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # RFC 3986 §5.2.4 and §5.4's examples, as absolute paths
        (b"/a/b/c/./../../g", b"/a/g"),
        (b"/mid/content=5/../6", b"/mid/6"),
        (b"/a/b/..", b"/a/"),
        (b"/a/b/.", b"/a/b/"),
        (b"/..", b"/"),
        (b"/../../x", b"/x"),
        (b"/a/./b/./", b"/a/b/"),
        (b"/.hidden/..x/x..", b"/.hidden/..x/x.."),  # dots inside names are names
    ],
)
def test_remove_dot_segments(path, expected):
    assert remove_dot_segments(path) == expected


def test_absolute_form_is_its_path_and_its_authority_the_host():
    target = parse_target(b"HTTP://User:pw@Shop.Example.:8080/a/b?x=1")
    assert (target.path, target.query, target.authority) == (b"/a/b", b"?x=1", b"shop.example:8080")
    assert parse_target(b"http://h").path == b"/"
    assert parse_target(b"http://h?q").query == b"?q"
    assert parse_target(b"http://[::1]:80/x").authority == b"[::1]:80"


@pytest.mark.parametrize(
    "raw", [b"x/y", b"internal", b"ftp://h/x", b"http:///x", b"http:/h/x", b"//", b"shop:80"]
)
def test_targets_that_are_neither_a_path_nor_an_http_uri_are_refused(raw):
    if raw == b"//":  # (an origin-form path with an empty segment: routable)
        assert parse_target(raw).readings == (b"//", b"/")
        return
    with pytest.raises(TargetError) as caught:
        parse_target(raw)
    assert caught.value.status == 400


def test_unreserved_escapes_are_decoded_and_others_upper_cased():
    target = parse_target(b"/%69nternal/%7euser/a%2fb%3a")
    assert target.path == b"/internal/~user/a%2Fb%3A"


@pytest.mark.parametrize(
    ("raw", "readings"),
    [
        (b"/reports/../admin", {b"/reports/../admin", b"/admin"}),
        (b"/reports/%2e%2E/admin", {b"/reports/../admin", b"/admin"}),
        (b"/internal%2fx", {b"/internal%2Fx", b"/internal/x"}),
        (b"/internal%5Cx", {b"/internal%5Cx", b"/internal\\x", b"/internal/x"}),
        (b"//internal/x", {b"//internal/x", b"/internal/x"}),
        (b"/internal;v=1/x", {b"/internal;v=1/x", b"/internal/x"}),
        (b"/a/..;/internal", {b"/a/..;/internal", b"/a/../internal", b"/internal"}),
        (b"/%2569nternal", {b"/%2569nternal", b"/%69nternal", b"/internal"}),
        (b"/public#/../internal", {b"/public#/../internal", b"/public", b"/internal"}),
        (b"/internal%00/x", {b"/internal%00/x", b"/internal\x00/x", b"/internal"}),
    ],
)
def test_readings_hold_what_each_kind_of_app_acts_on(raw, readings):
    assert readings <= set(parse_target(raw).readings)


_PLAIN = st.text(string.ascii_letters + string.digits + "-_~!$&'()*+,=:@", max_size=12)


@given(st.lists(_PLAIN, min_size=1, max_size=6))
def test_a_plain_path_has_one_reading_itself(segments):
    path = ("/" + "/".join(s or "x" for s in segments)).encode()
    target = parse_target(path + b"?q=1")
    assert target.readings == (path,) and target.path == path and target.features == ()


@given(st.binary(max_size=60).map(lambda b: b"/" + b.replace(b"?", b"")))
def test_every_path_parses_without_surprise(path):
    target = parse_target(path)
    assert target.readings[0] == target.path
    assert len(set(target.readings)) == len(target.readings)


def test_a_long_path_that_reads_several_ways_is_refused_not_worked_out():
    with pytest.raises(TargetError):
        parse_target(b"/a" * MAX_AMBIGUOUS_PATH_BYTES + b"/../x")
    assert parse_target(b"/a" * MAX_AMBIGUOUS_PATH_BYTES).features == ()


def test_normalize_host():
    assert normalize_host(b" Shop.Example.:80 ") == b"shop.example:80"
    assert normalize_host(b"[::1]") == b"[::1]"


# --- route decisions on every reading ---------------------------------------------
INTERNAL = Route("internal", action="reject", path="/internal/*", status=404)
REPORTS = Route("reports", action="pass", path="/reports/*", inject_headers=((b"A", b"t"),))
TABLE = (INTERNAL, REPORTS)


def head(target: bytes, *headers: tuple[bytes, bytes], method=b"GET") -> RequestHead:
    return RequestHead(method, target, ((b"Host", b"shop"), *headers), b"1.1")


@pytest.mark.parametrize(
    ("raw", "route"),
    [
        (b"/internal/x", INTERNAL),
        (b"/%69nternal/x", INTERNAL),  # one reading: the decoded one
        (b"http://shop/internal/x", INTERNAL),
        (b"/internal//x", INTERNAL),  # every reading takes the route
        (b"/internal/a/../b", INTERNAL),
        (b"/reports/a%2Fb", REPORTS),  # "%2F" in an id: forwarded as sent
        (b"/internal%2fx", AMBIGUOUS),
        (b"//internal/x", AMBIGUOUS),
        (b"/reports/../admin/x", AMBIGUOUS),  # the credential would reach /admin/
        (b"/reports/%2e%2e/admin/x", AMBIGUOUS),
        (b"/x;/../internal/y", AMBIGUOUS),
        (b"no-slash", BAD_TARGET),
    ],
)
def test_a_route_holds_on_every_reading_or_the_request_is_refused(raw, route):
    decision = RouteTable(TABLE).decide(head(raw), "10.0.0.1")
    assert decision.route is route
    assert decision.target is None  # what is accepted goes on as sent
    if route is AMBIGUOUS:
        assert decision.action == "reject" and decision.route.status == 400
        assert "ambiguous request path" in decision.error


@pytest.mark.parametrize(
    ("raw", "route", "normalized"),
    [
        (b"/internal%2fx", INTERNAL, b"/internal/x"),
        (b"/reports/../admin/x?q", RouteTable().default, b"/admin/x?q"),
        (b"//reports/x", REPORTS, b"/reports/x"),
        (b"http://shop/a/../reports/x", REPORTS, b"http://shop/reports/x"),
        (b"/%2569nternal/x", AMBIGUOUS, None),  # normalized, it still reads two ways
    ],
)
def test_normalize_forwards_the_normalized_path_when_it_reads_one_way(raw, route, normalized):
    decision = RouteTable(TABLE, ambiguous="normalize").decide(head(raw), "10.0.0.1")
    assert decision.route is route
    if route is not AMBIGUOUS and route.action != "reject":
        assert decision.target == normalized


def test_host_readings_absolute_authority_and_host_header():
    admin = Route("admin-host", action="reject", host="admin.shop")
    table = RouteTable((admin,))
    assert table.decide(head(b"/x", (b"X", b"1")), "c").route is table.default
    # The authority names the admin host, the Host header another: two readings.
    assert table.decide(head(b"http://admin.shop/x"), "c").route is AMBIGUOUS
    assert (
        table.decide(RequestHead(b"GET", b"/x", ((b"Host", b"Admin.Shop."),), b"1.1"), "c").route
        is admin
    )
    two_hosts = RequestHead(b"GET", b"/x", ((b"Host", b"shop"), (b"Host", b"admin.shop")), b"1.1")
    assert table.decide(two_hosts, "c").route is AMBIGUOUS


def test_a_repeated_header_a_condition_reads_is_read_first_last_and_joined():
    canary = Route("canary", action="reject", headers=(HeaderCondition(b"x-role", "admin"),))
    table = RouteTable((canary,))
    assert table.decide(head(b"/x", (b"X-Role", b"admin")), "c").route is canary
    repeated = head(b"/x", (b"X-Role", b"user"), (b"X-Role", b"admin"))
    assert table.decide(repeated, "c").route is AMBIGUOUS
    same = head(b"/x", (b"X-Role", b"user"), (b"X-Role", b"user"))
    assert table.decide(same, "c").route is table.default


def test_reserved_routes_come_first_on_every_reading():
    api = Route("api", action="api", path="/_hqm/*")
    table = RouteTable((Route("all", action="reject", path="/*"),)).with_reserved((api,))
    decision = table.decide(head(b"http://h/%5fhqm/requests/ab?x"), "c")
    assert decision.route is api and decision.target == b"/_hqm/requests/ab?x"
    assert table.decide(head(b"/x/../_hqm/requests/ab"), "c").route is AMBIGUOUS
    assert table.decide(head(b"/_hqm/../x"), "c").route is AMBIGUOUS
