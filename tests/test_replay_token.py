"""The HQM-Replay token: minted by a worker, accepted by a proxy only when it is whole,
made with the shared key, and fresh."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from hqm.proto.replay_token import (
    CLOCK_SKEW_S,
    DEFAULT_MAX_AGE_S,
    HEADER,
    sign,
    verify,
)

KEY = b"k" * 32
RID = "5f0c6d3e9a1b4c7d8e2f0a1b2c3d4e5f"
NOW = 1_700_000_000.75


def test_round_trip_and_the_documented_format():
    token = sign(KEY, RID, NOW)
    message = f"v1.{RID}.1700000000".encode()
    mac = hmac.new(KEY, message, hashlib.sha256).hexdigest().encode()
    assert token == message + b"." + mac
    assert verify(KEY, token, NOW) == RID
    assert verify(KEY, bytearray(token), NOW + DEFAULT_MAX_AGE_S - 1) == RID
    assert HEADER == b"HQM-Replay"


def test_an_id_with_dots_survives():
    assert verify(KEY, sign(KEY, "a.b.c", NOW), NOW) == "a.b.c"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t.replace(RID.encode(), b"0" * 32),  # another id
        lambda t: t.replace(b".1700000000.", b".1700000001."),  # another time
        lambda t: t[:-1] + (b"0" if t[-1:] != b"0" else b"1"),  # another MAC
        lambda t: t.replace(b"v1.", b"v2.", 1),  # another version
        lambda t: t[:-64] + t[-64:].upper(),  # MAC in capitals: not what we mint
        lambda t: t + b" ",
        lambda t: t[:-2],
    ],
)
def test_tampered_tokens_are_refused(tamper):
    token = sign(KEY, RID, NOW)
    assert verify(KEY, tamper(token), NOW) is None


def test_wrong_key_is_refused():
    assert verify(b"other key", sign(KEY, RID, NOW), NOW) is None


def test_expired_and_future_tokens_are_refused():
    token = sign(KEY, RID, NOW)
    minted = int(NOW)
    assert verify(KEY, token, minted + DEFAULT_MAX_AGE_S) == RID  # the last moment
    assert verify(KEY, token, minted + DEFAULT_MAX_AGE_S + 0.01) is None
    assert verify(KEY, token, minted + 10, max_age_s=5) is None
    assert verify(KEY, token, minted - CLOCK_SKEW_S) == RID  # our clock behind theirs
    assert verify(KEY, token, minted - CLOCK_SKEW_S - 0.01) is None
    assert verify(KEY, token, float("nan")) is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"v1",
        b"v1.",
        b"v1...",
        b"\xff\xfe\x00",
        b"v1.\xff.1700000000." + b"0" * 64,
        b"v1. .1700000000." + b"0" * 64,
        b"v1.id.-5." + b"0" * 64,
        b"v1.id.17e8." + b"0" * 64,
        b"v1." + b"x" * 129 + b".1700000000." + b"0" * 64,
        b"v1.id.1700000000." + b"0" * 5000,
        "v1.not-bytes",
        None,
    ],
)
def test_garbage_is_refused_not_raised(garbage):
    assert verify(KEY, garbage, NOW) is None


def test_empty_key_and_bad_input_are_refused_when_signing():
    with pytest.raises(ValueError, match="key"):
        sign(b"", RID, NOW)
    with pytest.raises(ValueError, match="key"):
        verify(b"", sign(KEY, RID, NOW), NOW)
    for bad_id in ("", "has space", "é", "x" * 129):
        with pytest.raises(ValueError, match="request id"):
            sign(KEY, bad_id, NOW)
    for bad_now in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epoch"):
            sign(KEY, RID, bad_now)
