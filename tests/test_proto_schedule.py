"""HQM-Delay and HQM-Not-Before (hqm.proto.schedule): values as bytes, a chosen now."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hqm.ingress.admission import admit
from hqm.ingress.caller import DEFAULT_SCOPE
from hqm.proto.events import RequestHead
from hqm.proto.schedule import (
    ScheduleError,
    not_before,
    parse_delay,
    parse_not_before,
)

NOW = 1_796_000_000.0
MONTH = 30 * 24 * 3600.0


def _epoch(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(b"0", 0.0), (b"90", 90.0), (b"2.5", 2.5), (b"0.000000001", 1e-9), (b"007", 7.0)],
)
def test_delay_seconds(raw: bytes, seconds: float) -> None:
    assert parse_delay(raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw", [b"", b"-1", b"+5", b"1e3", b"1.", b".5", b"5 s", b"0x10", b"nan", b"inf", b"1" * 13]
)
def test_delay_refuses_what_is_not_a_plain_decimal(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_delay(raw)


@pytest.mark.parametrize(
    ("raw", "epoch"),
    [
        (b"2026-12-01T10:00:00Z", _epoch(2026, 12, 1, 10)),
        (b"2026-12-01t10:00:00z", _epoch(2026, 12, 1, 10)),
        (b"2026-12-01T11:00:00+01:00", _epoch(2026, 12, 1, 10)),
        (b"2026-12-01T04:30:00-05:30", _epoch(2026, 12, 1, 10)),
        (b"2026-12-01T10:00:00.25Z", _epoch(2026, 12, 1, 10) + 0.25),
        (b"2016-12-31T23:59:60Z", _epoch(2017, 1, 1)),  # a leap second
        (b"1796162400", 1796162400.0),
        (b"1796162400.5", 1796162400.5),
    ],
)
def test_not_before_rfc3339_or_epoch_seconds(raw: bytes, epoch: float) -> None:
    assert parse_not_before(raw) == pytest.approx(epoch)


@pytest.mark.parametrize(
    "raw",
    [
        b"2026-12-01T10:00:00",  # no offset: whose local time?
        b"2026-12-01",
        b"2026-12-01 10:00:00Z",
        b"2026-02-30T10:00:00Z",
        b"2026-12-01T25:00:00Z",
        b"2026-12-01T10:00:00+24:00",
        b"Tue, 01 Dec 2026 10:00:00 GMT",  # an HTTP-date is not what the header takes
        b"-5",
        b"soon",
    ],
)
def test_not_before_refuses_other_forms(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_not_before(raw)


def test_no_header_no_schedule() -> None:
    assert not_before(((b"Host", b"x"),), now=NOW, max_delay_s=MONTH) == 0.0


def test_delay_is_counted_from_now_and_names_are_case_insensitive() -> None:
    headers = ((b"hqm-DELAY", b"60"),)
    assert not_before(headers, now=NOW, max_delay_s=MONTH) == NOW + 60


def test_not_before_in_the_past_is_accepted_as_is() -> None:
    headers = ((b"HQM-Not-Before", b"1000"),)
    assert not_before(headers, now=NOW, max_delay_s=MONTH) == 1000.0


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (((b"HQM-Delay", b"soon"),), "HQM-Delay"),
        (((b"HQM-Not-Before", b"tomorrow"),), "HQM-Not-Before"),
        (((b"HQM-Delay", b"2592001"),), "HQM-Delay"),  # a month and a second
        (((b"HQM-Not-Before", b"%d" % (NOW + MONTH + 1)),), "HQM-Not-Before"),
        (((b"HQM-Delay", b"1"), (b"HQM-Delay", b"2")), "HQM-Delay"),
        (((b"HQM-Delay", b"1"), (b"HQM-Not-Before", b"1")), "HQM-Delay"),
    ],
)
def test_refusals_name_the_header(headers: tuple, named: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        not_before(headers, now=NOW, max_delay_s=MONTH)
    assert caught.value.header == named
    assert str(caught.value).startswith(named + ": ")


def test_the_bound_itself_is_allowed() -> None:
    assert not_before(((b"HQM-Delay", b"2592000"),), now=NOW, max_delay_s=MONTH) == NOW + MONTH


ADMIT: dict = {
    "route": "", "caller": DEFAULT_SCOPE, "client": "", "idempotency_ttl_s": 1.0, "max_delay_s": MONTH
}  # fmt: skip


def test_the_headers_for_hqm_are_removed_and_nothing_else() -> None:
    def stored(*headers: tuple[bytes, bytes]) -> tuple:
        head = RequestHead(b"POST", b"/", headers, b"1.1")
        return admit(head, b"", now=NOW, **ADMIT).headers

    kept = ((b"Host", b"x"), (b"X-Keep", b"1"), (b"HQM-Request-Id", b"kept: dropped at replay"))
    for schedule in ((b"hqm-delay", b"5"), (b"HQM-Not-Before", b"%d" % (NOW + 5))):
        headers = (kept[0], schedule, kept[1], (b"HQM-Replay", b"v1.forged"), kept[2])
        assert stored(*headers) == kept
    plain = RequestHead(b"GET", b"/", kept, b"1.1")
    admitted = admit(plain, b"", now=NOW, **ADMIT)
    assert admitted.headers is kept  # nothing to remove: no copy
