"""The HQM-Replay token: minted by a worker for one request, accepted by a proxy only
when it is whole, made with the shared key for exactly that request (method, target,
body), and fresh. (Spending it once is the proxy's: tests/test_replay_spent.py.)"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from hqm.proto.replay_token import (
    CLOCK_SKEW_S,
    DEFAULT_MAX_AGE_S,
    HEADER,
    MAX_VALUE_BYTES,
    REMEMBER_S,
    ReplayRefused,
    Token,
    parse,
    sign,
)

KEY = b"k" * 32
RID = "5f0c6d3e9a1b4c7d8e2f0a1b2c3d4e5f"
NOW = 1_700_000_000.75
NONCE = bytes(range(16))
REQUEST = {"method": b"DELETE", "target": b"/orders/7?x=1", "body": b"payload"}


def mint(key: bytes = KEY, rid: str = RID, now: float = NOW, **request: bytes) -> bytes:
    return sign(key, rid, now, **{**REQUEST, **request}, nonce=NONCE)


def holds(value: bytes, key: bytes = KEY, now: float = NOW, **request: bytes) -> Token:
    token = parse(value)
    token.check_time(now)
    token.verify(key, **{**REQUEST, **request})
    return token


def test_round_trip_and_the_documented_format() -> None:
    token = mint()
    signed = f"v2.{RID}.1700000000.{NONCE.hex()}".encode()
    mac = hmac.new(KEY, signed, hashlib.sha256)
    for part in (b"DELETE", b"/orders/7?x=1", hashlib.sha256(b"payload").digest()):
        mac.update(struct.pack(">I", len(part)) + part)
    assert token == signed + b"." + mac.hexdigest().encode()
    assert holds(token).request_id == RID
    assert holds(bytearray(token), now=NOW + DEFAULT_MAX_AGE_S - 1).minted == 1_700_000_000
    assert HEADER == b"HQM-Replay"
    assert len(sign(KEY, "x" * 128, NOW, **REQUEST)) <= MAX_VALUE_BYTES
    assert REMEMBER_S >= DEFAULT_MAX_AGE_S + CLOCK_SKEW_S  # spent for as long as valid


def test_every_mint_is_another_token() -> None:
    tokens = {sign(KEY, RID, NOW, **REQUEST) for _ in range(100)}
    assert len(tokens) == 100
    assert len({parse(token).spent_id for token in tokens}) == 100
    assert all(holds(token) for token in tokens)


def test_an_id_with_dots_survives() -> None:
    assert holds(mint(rid="a.b.c")).request_id == "a.b.c"


@pytest.mark.parametrize(
    "other",
    [
        {"method": b"GET"},
        {"method": b"delete"},
        {"target": b"/orders/7"},
        {"target": b"/orders/7?x=2"},
        {"target": b"/ORDERS/7?x=1"},
        {"body": b""},
        {"body": b"payload "},
        # lengths are bound: moving a byte from target to method is another request
        {"method": b"DELETE/", "target": b"orders/7?x=1"},
    ],
)
def test_a_token_holds_for_its_own_request_only(other: dict) -> None:
    with pytest.raises(ReplayRefused, match="not signed for this request"):
        holds(mint(), **other)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t.replace(RID.encode(), b"0" * 32),  # another id
        lambda t: t.replace(b".1700000000.", b".1700000001."),  # another time
        lambda t: t.replace(NONCE.hex().encode(), b"f" * 32),  # another nonce
        lambda t: t[:-1] + (b"0" if t[-1:] != b"0" else b"1"),  # another MAC
    ],
)
def test_tampered_tokens_are_refused(tamper) -> None:
    with pytest.raises(ReplayRefused, match="not signed for this request"):
        holds(tamper(mint()))


def test_wrong_key_is_refused() -> None:
    with pytest.raises(ReplayRefused):
        holds(mint(key=b"other key"))


def test_expired_and_future_tokens_are_refused() -> None:
    token, minted = parse(mint()), int(NOW)
    token.check_time(minted + DEFAULT_MAX_AGE_S)  # the last moment
    token.check_time(minted - CLOCK_SKEW_S)  # our clock behind theirs
    for now, reason in (
        (minted + DEFAULT_MAX_AGE_S + 0.01, "expired"),
        (minted - CLOCK_SKEW_S - 0.01, "future"),
        (float("nan"), "expired"),
    ):
        with pytest.raises(ReplayRefused, match=reason):
            token.check_time(now)
    with pytest.raises(ReplayRefused, match="expired"):
        token.check_time(minted + 10, max_age_s=5)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"v2",
        b"v2.",
        b"v2....",
        b"\xff\xfe\x00",
        b"v2.\xff.1700000000." + b"0" * 32 + b"." + b"0" * 64,
        b"v2. .1700000000." + b"0" * 32 + b"." + b"0" * 64,
        b"v2.id.-5." + b"0" * 32 + b"." + b"0" * 64,
        b"v2.id.17e8." + b"0" * 32 + b"." + b"0" * 64,
        b"v2.id.1700000000." + b"0" * 31 + b"." + b"0" * 64,
        b"v2.id.1700000000." + b"0" * 32 + b"." + b"0" * 64 + b" ",
        b"v2.id.1700000000." + b"0" * 32 + b"." + b"A" * 64,  # a MAC in capitals
        b"v2." + b"x" * 129 + b".1700000000." + b"0" * 32 + b"." + b"0" * 64,
        b"v2.id.1700000000." + b"0" * 5000,
        b"v3.id.1700000000." + b"0" * 32 + b"." + b"0" * 64,
        "v2.not-bytes",
        None,
    ],
)
def test_garbage_is_refused_not_raised(garbage) -> None:
    with pytest.raises(ReplayRefused, match="malformed"):
        parse(garbage)


def test_a_v1_token_is_no_longer_a_pass() -> None:
    v1 = b"v1." + RID.encode() + b".1700000000." + b"0" * 64
    with pytest.raises(ReplayRefused, match="v1 is no longer accepted"):
        parse(v1)


def test_empty_key_and_bad_input_are_refused_when_signing() -> None:
    with pytest.raises(ValueError, match="key"):
        sign(b"", RID, NOW, **REQUEST)
    with pytest.raises(ValueError, match="key"):
        parse(mint()).verify(b"", **REQUEST)
    for bad_id in ("", "has space", "é", "x" * 129):
        with pytest.raises(ValueError, match="request id"):
            sign(KEY, bad_id, NOW, **REQUEST)
    for bad_now in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="epoch"):
            sign(KEY, RID, bad_now, **REQUEST)
    with pytest.raises(ValueError, match="nonce"):
        sign(KEY, RID, NOW, **REQUEST, nonce=b"short")
