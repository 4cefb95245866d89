"""ISO-8601 in, epoch ms inside, ISO-8601 UTC with milliseconds and Z out."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.timeutil import (
    _HOUR_PREFIXES_MAX,
    TimestampError,
    _hour_prefixes,
    iso_ms,
    iso_or_none,
    parse_iso_ms,
)

from .rtk_factory import ISO_MS_Z

MAY_1 = 1_714_557_600_000  # 2024-05-01T10:00:00.000Z
LAST_MS_OF_9999 = 253_402_300_799_999


def test_z_suffix() -> None:
    assert parse_iso_ms("2024-05-01T10:00:00Z") == MAY_1


def test_z_and_plus_zero_offset_are_the_same_instant() -> None:
    assert parse_iso_ms("2024-05-01T10:00:00+00:00") == parse_iso_ms("2024-05-01T10:00:00Z")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00+02:00", MAY_1),
        ("2024-05-01T03:00:00-07:00", MAY_1),
        ("2024-05-01T15:30:00+05:30", MAY_1),
        ("2024-04-30T23:00:00-11:00", MAY_1),
    ],
)
def test_other_offsets_are_converted_to_utc(text: str, expected: int) -> None:
    assert parse_iso_ms(text) == expected


def test_no_offset_is_taken_as_utc() -> None:
    assert parse_iso_ms("2024-05-01T10:00:00") == MAY_1
    assert parse_iso_ms("2024-05-01T10:00:00.250") == MAY_1 + 250


def test_milliseconds_are_kept() -> None:
    assert parse_iso_ms("2024-05-01T10:00:00.123Z") == MAY_1 + 123
    assert parse_iso_ms("2024-05-01T10:00:00.5Z") == MAY_1 + 500


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2024-05-01T10:00:00.123456Z", 123),
        ("2024-05-01T10:00:00.999999Z", 999),  # truncated, never rounded up to the next second
        ("2024-05-01T10:00:00.000999Z", 0),
        ("2024-05-01T10:00:00.1234567Z", 123),
    ],
)
def test_microseconds_are_truncated_to_milliseconds(text: str, ms: int) -> None:
    assert parse_iso_ms(text) == MAY_1 + ms


def test_iso_ms_has_milliseconds_and_z() -> None:
    assert iso_ms(MAY_1) == "2024-05-01T10:00:00.000Z"
    assert iso_ms(MAY_1 + 7) == "2024-05-01T10:00:00.007Z"
    assert iso_ms(MAY_1 + 59_999) == "2024-05-01T10:00:59.999Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"


def test_iso_or_none() -> None:
    assert iso_or_none(None) is None
    assert iso_or_none(MAY_1) == "2024-05-01T10:00:00.000Z"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-05-01T25:00:00Z",
        "2024-05-01T10:00:00+25:00",
        "10:00:00",
        "2024-05-01T10:00:00ZZ",
        "1714557600000",
    ],
)
def test_garbage_raises_timestamp_error(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_iso_ms(text)


@pytest.mark.parametrize("value", [None, 1_714_557_600_000, 1.5, b"2024-05-01T10:00:00Z"])
def test_non_strings_raise_timestamp_error(value: object) -> None:
    with pytest.raises(TimestampError):
        parse_iso_ms(value)  # type: ignore[arg-type]


def test_timestamp_error_is_a_value_error() -> None:
    assert issubclass(TimestampError, ValueError)


@given(st.integers(min_value=0, max_value=LAST_MS_OF_9999))
def test_iso_ms_round_trips(ms: int) -> None:
    text = iso_ms(ms)
    assert ISO_MS_Z.match(text), text
    assert parse_iso_ms(text) == ms


@given(st.integers(min_value=0, max_value=LAST_MS_OF_9999))
def test_plus_zero_offset_round_trips(ms: int) -> None:
    assert parse_iso_ms(iso_ms(ms).replace("Z", "+00:00")) == ms


_offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@settings(max_examples=200)
@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31)),
    _offsets,
)
def test_parse_matches_an_independent_oracle(local: datetime, tz: timezone) -> None:
    dt = local.replace(tzinfo=tz)
    # Oracle: calendar.timegm on the UTC time tuple, plus truncated milliseconds.
    expected = calendar.timegm(dt.astimezone(UTC).utctimetuple()) * 1000 + dt.microsecond // 1000
    assert parse_iso_ms(dt.isoformat()) == expected
    assert parse_iso_ms(dt.isoformat(timespec="milliseconds")) == expected


def test_iso_ms_hour_cache_stays_bounded() -> None:
    for hour in range(_HOUR_PREFIXES_MAX + 5):
        expected = datetime(1970, 1, 1) + timedelta(hours=hour, milliseconds=1)
        assert iso_ms(hour * 3_600_000 + 1) == expected.isoformat(timespec="milliseconds") + "Z"
    assert len(_hour_prefixes) <= _HOUR_PREFIXES_MAX
