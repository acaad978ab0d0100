"""Billing-period arithmetic as Stripe does it: periods step from the billing cycle anchor, and a
monthly anchor on the 31st lands on the last day of shorter months (without drifting)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _add_months(anchor: datetime, months: int) -> datetime:
    month_index = anchor.month - 1 + months
    year, month = anchor.year + month_index // 12, month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def step(anchor: int, interval: str, count: int, n: int) -> int:
    """The n-th period boundary from `anchor` (n may be negative)."""
    start = _dt(anchor)
    if interval == "day":
        moved = start + timedelta(days=count * n)
    elif interval == "week":
        moved = start + timedelta(weeks=count * n)
    elif interval == "month":
        moved = _add_months(start, count * n)
    else:
        moved = _add_months(start, 12 * count * n)
    return int(moved.timestamp())


def period_containing(anchor: int, interval: str, count: int, at: int) -> tuple[int, int]:
    """The [start, end) period, stepped from `anchor`, that contains the instant `at`."""
    n = 0
    while step(anchor, interval, count, n) > at:
        n -= 1
    while step(anchor, interval, count, n + 1) <= at:
        n += 1
    return step(anchor, interval, count, n), step(anchor, interval, count, n + 1)


def anchor_from_config(start: int, config: dict, interval: str) -> int:
    """The first instant at or after `start` matching `billing_cycle_anchor_config`.

    Unset hour/minute/second default to the start's time of day; a day past the month's end
    means the month's last day.
    """
    begin = _dt(start)
    hour = int(config.get("hour", begin.hour))
    minute = int(config.get("minute", begin.minute))
    second = int(config.get("second", begin.second))
    day = int(config["day_of_month"])
    month = config.get("month")
    for months_ahead in range(0, 25):
        shifted = _add_months(begin.replace(day=1), months_ahead)
        if month is not None and interval == "year" and shifted.month != int(month):
            continue
        last = calendar.monthrange(shifted.year, shifted.month)[1]
        candidate = shifted.replace(day=min(day, last), hour=hour, minute=minute, second=second)
        if candidate >= begin:
            return int(candidate.timestamp())
    raise ValueError("billing_cycle_anchor_config matches no date in the next two years")
