"""Header rewriting: hop-by-hop removal, X-Forwarded-*, Content-Length, HQM-Request-Id."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqm.proto.headers import (
    HOP_BY_HOP,
    REQUEST_ID,
    ForwardedInfo,
    ForwardingPolicy,
    client_response_headers,
    header_value,
    strip_hop_by_hop,
    upstream_request_headers,
)
from tests.http_strategies import header_names, header_values

FWD = ForwardedInfo(client="10.0.0.7", proto="https", policy=ForwardingPolicy(True, 0))
TRUSTING = ForwardedInfo(client="10.0.0.7", proto="https", policy=ForwardingPolicy(True, 1))
NO_FWD = ForwardedInfo(client="10.0.0.7", proto="http", policy=ForwardingPolicy(False, 0))

HOP_NAMES = [
    b"Connection",
    b"Keep-Alive",
    b"Proxy-Connection",
    b"TE",
    b"Trailer",
    b"Transfer-Encoding",
    b"Upgrade",
]


def case_variants(name: bytes) -> list[bytes]:
    return [name, name.lower(), name.upper(), name.swapcase()]


def test_hop_by_hop_table_matches_rfc_9110():
    assert {n.lower() for n in HOP_NAMES} == HOP_BY_HOP


@pytest.mark.parametrize("name", [variant for name in HOP_NAMES for variant in case_variants(name)])
def test_each_hop_by_hop_header_removed_in_any_case(name):
    headers = [(b"A", b"1"), (name, b"x"), (b"B", b"2")]
    assert strip_hop_by_hop(headers) == [(b"A", b"1"), (b"B", b"2")]


def test_headers_named_in_connection_removed():
    headers = [
        (b"Host", b"a"),
        (b"Connection", b"keep-alive, X-Secret ,x-other"),
        (b"x-secret", b"1"),
        (b"X-Keep", b"2"),
        (b"X-OTHER", b"3"),
        (b"connection", b"Also-This"),
        (b"also-this", b"4"),
        (b"Keep-Alive", b"timeout=5"),
    ]
    assert strip_hop_by_hop(headers) == [(b"Host", b"a"), (b"X-Keep", b"2")]


def test_connection_naming_only_unknown_or_empty_tokens():
    headers = [(b"Connection", b", ,close"), (b"A", b"1")]
    assert strip_hop_by_hop(headers) == [(b"A", b"1")]


@pytest.mark.parametrize("name", case_variants(b"HQM-Request-Id"))
def test_peer_request_id_removed(name):
    assert strip_hop_by_hop([(name, b"spoofed"), (b"A", b"1")]) == [(b"A", b"1")]


def test_order_case_and_repeats_of_the_rest_kept():
    headers = [
        (b"x-b", b"1"),
        (b"Host", b"h"),
        (b"X-A", b"2"),
        (b"Set-Cookie", b"a=1"),
        (b"TE", b"trailers"),
        (b"set-cookie", b"b=2"),
        (b"X-B", b"3"),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"x-b", b"1"),
        (b"Host", b"h"),
        (b"X-A", b"2"),
        (b"Set-Cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"X-B", b"3"),
    ]


def test_strip_accepts_any_iterable():
    gen = ((n, v) for n, v in [(b"A", b"1"), (b"Upgrade", b"h2c")])
    assert strip_hop_by_hop(gen) == [(b"A", b"1")]


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(header_names(), header_values()), max_size=10))
def test_strip_keeps_ordinary_headers_exactly(headers):
    assert strip_hop_by_hop(headers) == headers


def test_header_value():
    headers = [(b"Host", b"a"), (b"X-A", b"1"), (b"x-a", b"2")]
    assert header_value(headers, b"x-a") == b"1"
    assert header_value(headers, b"host") == b"a"
    assert header_value(headers, b"missing") is None


# --- upstream request headers ---------------------------------------------------------


def test_upstream_headers_full_example():
    headers = [
        (b"Host", b"api.example.com"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"gone"),
        (b"content-length", b"5"),
        (b"Accept", b"*/*"),
        (b"HQM-Request-Id", b"spoofed"),
    ]
    out = upstream_request_headers(headers, body_length=5, request_id="r-1", forwarded=FWD)
    assert out == [
        (b"Host", b"api.example.com"),
        (b"content-length", b"5"),
        (b"Accept", b"*/*"),
        (b"X-Forwarded-For", b"10.0.0.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"api.example.com"),
        (REQUEST_ID, b"r-1"),
    ]


def test_xff_appended_to_existing_value_in_place():
    headers = [
        (b"Host", b"h"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
        (b"Accept", b"*/*"),
    ]
    out = upstream_request_headers(headers, body_length=0, request_id="r", forwarded=FWD)
    assert out[1] == (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.0.0.7")
    assert [n for n, _ in out].count(b"x-forwarded-for") == 1
    assert header_value(out, b"x-forwarded-for") == b"1.1.1.1, 2.2.2.2, 10.0.0.7"


def test_xff_appended_to_the_last_of_several_lines():
    headers = [
        (b"Host", b"h"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"X-Forwarded-For", b"2.2.2.2"),
    ]
    out = upstream_request_headers(headers, body_length=0, request_id="r", forwarded=FWD)
    assert out[1:3] == [
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"X-Forwarded-For", b"2.2.2.2, 10.0.0.7"),
    ]


def test_client_forwarded_proto_and_host_replaced_when_nothing_is_trusted():
    """Default trust rule: a client cannot claim to have come over https or for
    another host; XFF keeps its entries and gets the real peer appended."""
    headers = [
        (b"Host", b"inner"),
        (b"X-Forwarded-Proto", b"http"),
        (b"x-forwarded-host", b"outer.example"),
        (b"X-Forwarded-For", b"6.6.6.6"),
    ]
    out = upstream_request_headers(headers, body_length=0, request_id="r", forwarded=FWD)
    assert out == [
        (b"Host", b"inner"),
        (b"X-Forwarded-For", b"6.6.6.6, 10.0.0.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"inner"),
        (REQUEST_ID, b"r"),
    ]


def test_existing_forwarded_proto_and_host_kept_behind_trusted_hops():
    headers = [
        (b"Host", b"inner"),
        (b"X-Forwarded-Proto", b"http"),
        (b"x-forwarded-host", b"outer.example"),
    ]
    out = upstream_request_headers(headers, body_length=0, request_id="r", forwarded=TRUSTING)
    assert out == [
        (b"Host", b"inner"),
        (b"X-Forwarded-Proto", b"http"),
        (b"x-forwarded-host", b"outer.example"),
        (b"X-Forwarded-For", b"10.0.0.7"),
        (REQUEST_ID, b"r"),
    ]


def test_forwarded_host_from_first_host_and_absent_without_host():
    out = upstream_request_headers(
        [(b"host", b"first")], body_length=0, request_id="r", forwarded=FWD
    )
    assert header_value(out, b"x-forwarded-host") == b"first"
    out = upstream_request_headers([], body_length=0, request_id="r", forwarded=FWD)
    assert header_value(out, b"x-forwarded-host") is None
    assert header_value(out, b"x-forwarded-for") == b"10.0.0.7"
    assert header_value(out, b"x-forwarded-proto") == b"https"


def test_forwarded_disabled_adds_nothing_but_request_id():
    headers = [(b"Host", b"h"), (b"X-Forwarded-For", b"1.1.1.1"), (b"A", b"1")]
    out = upstream_request_headers(headers, body_length=0, request_id="r-9", forwarded=NO_FWD)
    assert out == [*headers, (REQUEST_ID, b"r-9")]


def test_content_length_replaced_in_place():
    headers = [(b"Host", b"h"), (b"Content-Length", b"999"), (b"A", b"1")]
    out = upstream_request_headers(headers, body_length=3, request_id="r", forwarded=NO_FWD)
    assert out == [(b"Host", b"h"), (b"Content-Length", b"3"), (b"A", b"1"), (REQUEST_ID, b"r")]


def test_content_length_appended_for_dechunked_body():
    headers = [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked"), (b"A", b"1")]
    out = upstream_request_headers(headers, body_length=11, request_id="r", forwarded=NO_FWD)
    assert out == [
        (b"Host", b"h"),
        (b"A", b"1"),
        (b"Content-Length", b"11"),
        (REQUEST_ID, b"r"),
    ]
    assert header_value(out, b"transfer-encoding") is None


def test_no_content_length_added_for_empty_body_without_one():
    headers = [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    out = upstream_request_headers(headers, body_length=0, request_id="r", forwarded=NO_FWD)
    assert out == [(b"Host", b"h"), (REQUEST_ID, b"r")]


def test_zero_content_length_kept():
    headers = [(b"Host", b"h"), (b"content-length", b"0")]
    out = upstream_request_headers(headers, body_length=0, request_id="r", forwarded=NO_FWD)
    assert out == [(b"Host", b"h"), (b"content-length", b"0"), (REQUEST_ID, b"r")]


def test_request_id_is_last_and_spoofed_one_dropped():
    headers = [(b"hqm-request-id", b"evil"), (b"Host", b"h")]
    out = upstream_request_headers(headers, body_length=0, request_id="good", forwarded=FWD)
    assert out[-1] == (REQUEST_ID, b"good")
    assert [v for n, v in out if n.lower() == b"hqm-request-id"] == [b"good"]


def test_upstream_headers_do_not_mutate_input():
    headers = [(b"Host", b"h"), (b"Content-Length", b"9"), (b"X-Forwarded-For", b"1.1.1.1")]
    before = list(headers)
    upstream_request_headers(headers, body_length=1, request_id="r", forwarded=FWD)
    assert headers == before


# --- client response headers ----------------------------------------------------------


def test_client_response_headers():
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"X-Internal", b"secret"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"a=1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"set-cookie", b"b=2"),
        (b"Content-Length", b"1234"),
        (b"Upgrade", b"h2c"),
        (b"HQM-Request-Id", b"from-app"),
        (b"Trailer", b"X-Checksum"),
    ]
    assert client_response_headers(headers, request_id="r-2") == [
        (b"Content-Type", b"text/plain"),
        (b"Set-Cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"Content-Length", b"1234"),
        (REQUEST_ID, b"r-2"),
    ]
