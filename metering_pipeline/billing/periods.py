"""Billing periods as Stripe computes them from a billing cycle anchor.

Period ``k`` starts at ``anchor + k * interval_count * interval``, always counted from the anchor
itself, never from the previous period's end. That is what makes month-end anchors behave as in
Stripe: an anchor on Jan 31 gives Feb 28 (or 29), Mar 31, Apr 30, May 31, ... The day clamps to
the end of a shorter month and returns to the anchor's day afterwards. Year intervals clamp Feb 29
to Feb 28. The time of day is the anchor's, in UTC. Periods are half-open: ``[start, end)``, so a
moment exactly at a period end belongs to the next period.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import Literal

from metering_pipeline.billing.moments import as_utc

Interval = Literal["day", "week", "month", "year"]
Period = tuple[datetime, datetime]

_FIXED = {"day": timedelta(days=1), "week": timedelta(weeks=1)}
_MONTHS = {"month": 1, "year": 12}


def period_start(anchor: datetime, interval: Interval, interval_count: int, index: int) -> datetime:
    """Start of the ``index``-th period from the anchor (0 is the period starting at the anchor)."""
    anchor = as_utc(anchor, "anchor")
    _check(interval, interval_count)
    steps = index * interval_count
    if interval in _FIXED:
        return anchor + steps * _FIXED[interval]
    return _add_months(anchor, steps * _MONTHS[interval])


def period_containing(
    anchor: datetime, interval: Interval, interval_count: int, moment: datetime
) -> Period:
    """The period ``[start, end)`` that holds ``moment``; before the anchor counts backwards."""
    anchor, moment = as_utc(anchor, "anchor"), as_utc(moment, "moment")
    _check(interval, interval_count)
    index = _estimate_index(anchor, interval, interval_count, moment)
    while period_start(anchor, interval, interval_count, index) > moment:
        index -= 1
    while period_start(anchor, interval, interval_count, index + 1) <= moment:
        index += 1
    return (
        period_start(anchor, interval, interval_count, index),
        period_start(anchor, interval, interval_count, index + 1),
    )


def periods_overlapping(
    anchor: datetime,
    interval: Interval,
    interval_count: int,
    window_start: datetime,
    window_end: datetime,
) -> list[Period]:
    """Every period sharing at least an instant with ``[window_start, window_end)``, in order."""
    window_start, window_end = (
        as_utc(window_start, "window_start"),
        as_utc(window_end, "window_end"),
    )
    if window_end <= window_start:
        return []
    periods = [period_containing(anchor, interval, interval_count, window_start)]
    while periods[-1][1] < window_end:
        start = periods[-1][1]
        periods.append(period_containing(anchor, interval, interval_count, start))
    return periods


def _estimate_index(
    anchor: datetime, interval: Interval, interval_count: int, moment: datetime
) -> int:
    """A guess within one or two of the true index, so long histories need no long walk."""
    if interval in _FIXED:
        return int((moment - anchor) / (_FIXED[interval] * interval_count))
    months = (moment.year - anchor.year) * 12 + moment.month - anchor.month
    return months // (_MONTHS[interval] * interval_count)


def _add_months(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def _check(interval: str, interval_count: int) -> None:
    if interval not in _FIXED and interval not in _MONTHS:
        raise ValueError(f"billing interval {interval!r} is not one of day, week, month, year")
    if interval_count < 1:
        raise ValueError(f"billing interval_count must be at least 1, got {interval_count}")
