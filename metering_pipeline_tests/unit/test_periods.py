"""Billing periods from an anchor, as Stripe lays them out, including month-end clamping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from metering_pipeline.billing.periods import (
    period_containing,
    period_start,
    periods_overlapping,
)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


JAN31 = utc(2026, 1, 31, 9, 30)


@pytest.mark.parametrize(
    ("index", "start"),
    [
        (0, utc(2026, 1, 31, 9, 30)),
        (1, utc(2026, 2, 28, 9, 30)),  # clamps to the end of February
        (2, utc(2026, 3, 31, 9, 30)),  # and goes back to the anchor's day
        (3, utc(2026, 4, 30, 9, 30)),
        (12, utc(2027, 1, 31, 9, 30)),
        (25, utc(2028, 2, 29, 9, 30)),  # a leap year keeps Feb 29
        (-1, utc(2025, 12, 31, 9, 30)),
        (-2, utc(2025, 11, 30, 9, 30)),
    ],
)
def test_month_end_anchor_clamps_then_returns(index: int, start: datetime) -> None:
    assert period_start(JAN31, "month", 1, index) == start


@pytest.mark.parametrize(
    ("anchor", "interval", "count", "moment", "expected"),
    [
        # exactly at a start belongs to that period; one microsecond before, to the previous one
        (
            JAN31,
            "month",
            1,
            utc(2026, 2, 28, 9, 30),
            (utc(2026, 2, 28, 9, 30), utc(2026, 3, 31, 9, 30)),
        ),
        (
            JAN31,
            "month",
            1,
            utc(2026, 2, 28, 9, 29, 59, 999999),
            (utc(2026, 1, 31, 9, 30), utc(2026, 2, 28, 9, 30)),
        ),
        (JAN31, "month", 1, JAN31, (JAN31, utc(2026, 2, 28, 9, 30))),
        # before the anchor counts backwards
        (JAN31, "month", 1, utc(2026, 1, 1), (utc(2025, 12, 31, 9, 30), JAN31)),
        # quarterly
        (
            utc(2026, 11, 30),
            "month",
            3,
            utc(2027, 3, 1),
            (utc(2027, 2, 28), utc(2027, 5, 30)),
        ),
        # days and weeks
        (
            utc(2026, 11, 5, 12),
            "day",
            1,
            utc(2026, 11, 20, 11, 59),
            (utc(2026, 11, 19, 12), utc(2026, 11, 20, 12)),
        ),
        (utc(2026, 11, 5), "week", 2, utc(2026, 11, 19), (utc(2026, 11, 19), utc(2026, 12, 3))),
        (utc(2026, 11, 5), "week", 1, utc(2026, 11, 4, 23), (utc(2026, 10, 29), utc(2026, 11, 5))),
        # years, from Feb 29
        (utc(2028, 2, 29), "year", 1, utc(2029, 6, 1), (utc(2029, 2, 28), utc(2030, 2, 28))),
        (utc(2028, 2, 29), "year", 1, utc(2032, 2, 29), (utc(2032, 2, 29), utc(2033, 2, 28))),
    ],
)
def test_period_containing(anchor, interval, count, moment, expected) -> None:
    start, end = period_containing(anchor, interval, count, moment)
    assert (start, end) == expected
    assert start <= moment < end


def test_far_from_anchor_matches_walking_period_by_period() -> None:
    anchor = utc(2020, 5, 31, 23, 59, 59)
    start = anchor
    for index in range(1, 130):
        following = period_start(anchor, "month", 1, index)
        assert period_containing(anchor, "month", 1, following - timedelta(seconds=1)) == (
            start,
            following,
        )
        start = following


def test_moment_in_another_time_zone_is_compared_in_utc() -> None:
    plus_two = datetime(2026, 2, 28, 11, 30, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=2))
    )
    assert period_containing(JAN31, "month", 1, plus_two)[0] == utc(2026, 2, 28, 9, 30)


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # a window inside one period
        ((utc(2026, 2, 1), utc(2026, 2, 2)), [(utc(2026, 1, 31, 9, 30), utc(2026, 2, 28, 9, 30))]),
        # a window ending exactly at a period start does not reach that period
        (
            (utc(2026, 2, 1), utc(2026, 2, 28, 9, 30)),
            [(utc(2026, 1, 31, 9, 30), utc(2026, 2, 28, 9, 30))],
        ),
        # one second more does
        (
            (utc(2026, 2, 1), utc(2026, 2, 28, 9, 30, 1)),
            [
                (utc(2026, 1, 31, 9, 30), utc(2026, 2, 28, 9, 30)),
                (utc(2026, 2, 28, 9, 30), utc(2026, 3, 31, 9, 30)),
            ],
        ),
        # three months
        (
            (utc(2026, 1, 31, 9, 30), utc(2026, 4, 30, 9, 30)),
            [
                (utc(2026, 1, 31, 9, 30), utc(2026, 2, 28, 9, 30)),
                (utc(2026, 2, 28, 9, 30), utc(2026, 3, 31, 9, 30)),
                (utc(2026, 3, 31, 9, 30), utc(2026, 4, 30, 9, 30)),
            ],
        ),
        # an empty or reversed window overlaps nothing
        ((utc(2026, 2, 1), utc(2026, 2, 1)), []),
        ((utc(2026, 2, 2), utc(2026, 2, 1)), []),
    ],
)
def test_periods_overlapping(window, expected) -> None:
    assert periods_overlapping(JAN31, "month", 1, *window) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((datetime(2026, 1, 1), "month", 1, utc(2026, 1, 1)), "anchor=.*no time zone"),
        ((JAN31, "month", 1, datetime(2026, 1, 1)), "moment=.*no time zone"),
        ((JAN31, "fortnight", 1, utc(2026, 1, 1)), "interval 'fortnight'"),
        ((JAN31, "month", 0, utc(2026, 1, 1)), "at least 1"),
    ],
)
def test_bad_arguments_say_what_to_pass(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        period_containing(*args)
