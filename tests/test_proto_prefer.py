"""RFC 7240 Prefer: respond-async and wait=N, junk ignored."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hqm.proto.prefer import Preference, parse_prefer


def prefer(*values: bytes, name: bytes = b"Prefer") -> Preference:
    return parse_prefer(tuple((name, v) for v in values))


def test_no_prefer_header():
    assert parse_prefer(((b"Host", b"a"),)) == Preference(respond_async=False, wait_s=None)
    assert parse_prefer(()) == Preference()


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"respond-async"], Preference(True, None)),
        ([b"RESPOND-ASYNC"], Preference(True, None)),
        ([b"wait=5"], Preference(False, 5.0)),
        ([b"wait=0"], Preference(False, 0.0)),
        ([b"wait=2.5"], Preference(False, 2.5)),
        ([b'wait="7"'], Preference(False, 7.0)),
        ([b"wait = 5"], Preference(False, 5.0)),
        ([b"wait=5, respond-async"], Preference(True, 5.0)),
        ([b"respond-async, wait=5"], Preference(True, 5.0)),
        ([b"respond-async,wait=5"], Preference(True, 5.0)),
        ([b"  respond-async ;  foo=bar , wait=10;x"], Preference(True, 10.0)),
        ([b"return=minimal, wait=3, handling=lenient"], Preference(False, 3.0)),
        ([b"respond-async", b"wait=5"], Preference(True, 5.0)),
        ([b"wait=5", b"respond-async"], Preference(True, 5.0)),
        ([b"return=representation", b"respond-async"], Preference(True, None)),
    ],
)
def test_prefer_values(values, expected):
    assert prefer(*values) == expected


@pytest.mark.parametrize("name", [b"prefer", b"PREFER", b"pReFeR"])
def test_header_name_any_case(name):
    assert prefer(b"respond-async, wait=1", name=name) == Preference(True, 1.0)


def test_other_headers_ignored():
    assert parse_prefer(((b"X-Prefer", b"respond-async"), (b"Preference", b"wait=3"))) == (
        Preference()
    )


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b",,,",
        b"respond-asynchronously",
        b"respond_async",
        b"async",
        b"wait",
        b"wait=",
        b"wait=abc",
        b"wait=5s",
        b"wait=0x10",
        b"waiting=5",
        b"await=5",
        b"wait:5",
        b"wait=-1",
        b"wait=-0.5",
        b"wait=nan",
        b"wait=NaN",
        b"wait=inf",
        b"wait=-inf",
        b"wait=Infinity",
        b"wait=1e999",
        b"\xff\xfe",
        b"wait=\xff",
        b"=5",
        b";wait=5",
    ],
)
def test_junk_ignored(value):
    assert prefer(value) == Preference()
    # junk next to valid preferences does not hide them
    assert prefer(value + b", respond-async, wait=4") == Preference(True, 4.0)
    assert prefer(b"wait=4", value) == Preference(False, 4.0)


@pytest.mark.parametrize("values", [[b"wait=5, wait=10"], [b"wait=5", b"wait=10"]])
def test_first_wait_wins(values):
    assert prefer(*values).wait_s == 5.0


@settings(deadline=None, max_examples=200)
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_never_raises_and_wait_is_sane(values):
    result = prefer(*values)
    assert isinstance(result.respond_async, bool)
    if result.wait_s is not None:
        assert 0 <= result.wait_s < float("inf")
