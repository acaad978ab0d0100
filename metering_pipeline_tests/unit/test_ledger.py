"""The push reconciler's deltas: what a run sends for one (subscription item, period) key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering_pipeline.billing.ledger import (
    LedgerEntry,
    PushPlan,
    event_timestamp,
    meter_value,
    plan_push,
)

D = Decimal


def entry(sequence: int, value: int, status: str = "sent") -> LedgerEntry:
    return LedgerEntry(sequence, D(value), status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("desired", "entries", "expected"),
    [
        # nothing sent yet: the whole total
        (100, [], PushPlan((), D(100), 1, D(0))),
        # nothing to send when Stripe already counts it, and nothing for zero usage
        (100, [entry(1, 60), entry(2, 40)], PushPlan((), None, 3, D(100))),
        (0, [], PushPlan((), None, 1, D(0))),
        # late rows raise the total: only the difference
        (130, [entry(1, 100)], PushPlan((), D(30), 2, D(100))),
        # a refund lowers it: a negative delta, even below zero
        (70, [entry(1, 100)], PushPlan((), D(-30), 2, D(100))),
        (-5, [entry(1, 100)], PushPlan((), D(-105), 2, D(100))),
        # a pending entry may already count: re-send it, and send only the rest
        (
            150,
            [entry(1, 100), entry(2, 30, "pending")],
            PushPlan((entry(2, 30, "pending"),), D(20), 3, D(130)),
        ),
        (
            130,
            [entry(1, 100), entry(2, 30, "pending")],
            PushPlan((entry(2, 30, "pending"),), None, 3, D(130)),
        ),
        # a failed entry was never recorded by Stripe: it does not count, but keeps its sequence
        (130, [entry(1, 100), entry(2, 30, "failed")], PushPlan((), D(30), 3, D(100))),
    ],
)
def test_sum_meters_get_the_difference(desired, entries, expected) -> None:
    assert plan_push("sum", D(desired), entries) == expected


@pytest.mark.parametrize(
    ("desired", "entries", "expected"),
    [
        (7, [], PushPlan((), D(7), 1, None)),
        (0, [], PushPlan((), None, 1, None)),
        # the value itself, never a difference: after 7, wanting 9 sends 9
        (9, [entry(1, 7)], PushPlan((), D(9), 2, D(7))),
        (7, [entry(1, 9), entry(2, 7)], PushPlan((), None, 3, D(7))),
        # lower values and zero are sent too (the peak was corrected by a refund)
        (3, [entry(1, 9)], PushPlan((), D(3), 2, D(9))),
        (0, [entry(1, 9)], PushPlan((), D(0), 2, D(9))),
        # the latest by sequence wins, whatever the order the rows came back in
        (9, [entry(2, 9), entry(1, 4)], PushPlan((), None, 3, D(9))),
        # pending counts as latest; failed does not
        (
            5,
            [entry(1, 4), entry(2, 5, "pending")],
            PushPlan((entry(2, 5, "pending"),), None, 3, D(5)),
        ),
        (5, [entry(1, 5), entry(2, 8, "failed")], PushPlan((), None, 3, D(5))),
    ],
)
def test_last_meters_get_the_value(desired, entries, expected) -> None:
    assert plan_push("last", D(desired), entries) == expected


def test_replaying_a_plan_after_delivery_sends_nothing() -> None:
    """A second run after the first one's event was recorded finds nothing to do."""
    entries: list[LedgerEntry] = []
    for desired in (D(100), D(100)):
        plan = plan_push("sum", desired, entries)
        if plan.value is not None:
            entries.append(LedgerEntry(plan.sequence, plan.value, "sent"))
    assert [e.value for e in entries] == [D(100)]


def test_count_formula_is_refused() -> None:
    with pytest.raises(ValueError, match="use sum or last"):
        plan_push("count", D(1), [])  # type: ignore[arg-type]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


START, END = utc(2026, 11, 5), utc(2026, 12, 5)


@pytest.mark.parametrize(
    ("now", "after", "expected"),
    [
        # open window: stamped now (to the second)
        (datetime(2026, 11, 20, 10, 0, 0, 700000, tzinfo=UTC), None, utc(2026, 11, 20, 10)),
        (utc(2026, 11, 20, 10), utc(2026, 11, 20, 9), utc(2026, 11, 20, 10)),
        # a last meter whose previous event is not older than now: one second after it
        (utc(2026, 11, 20, 10), utc(2026, 11, 20, 10), utc(2026, 11, 20, 10, 0, 1)),
        # closed window (grace period): the last second, or one after the previous event
        (utc(2026, 12, 5, 0, 30), None, utc(2026, 12, 4, 23, 59, 59)),
        (utc(2026, 12, 5, 0, 30), utc(2026, 12, 4, 22), utc(2026, 12, 4, 22, 0, 1)),
        (utc(2026, 12, 5, 0, 30), utc(2026, 12, 4, 23, 59, 59), None),
        # window not started yet (the clock is behind): nothing Stripe would take
        (utc(2026, 11, 4, 23, 50), None, None),
        # window start is accepted, window end is not
        (START, None, START),
        # more than 35 days (less the safety hour) after the window closed: too late
        (END + timedelta(days=35), None, None),
        (END + timedelta(days=34, hours=22), None, utc(2026, 12, 4, 23, 59, 59)),
    ],
)
def test_event_timestamp(now, after, expected) -> None:
    assert event_timestamp(START, END, now, after) == expected


def test_event_timestamp_for_a_window_older_than_35_days_uses_its_recent_part() -> None:
    # an item window of 60 days: the part older than 35 days is out of reach, but now is fine
    now = utc(2026, 12, 30)
    assert event_timestamp(utc(2026, 11, 1), utc(2027, 1, 1), now) == now


def test_event_timestamp_needs_aware_times() -> None:
    with pytest.raises(ValueError, match="now=.*no time zone"):
        event_timestamp(START, END, datetime(2026, 11, 20))


@pytest.mark.parametrize(
    ("value", "text"),
    [(D(0), "0"), (D("42.000"), "42"), (D(-17), "-17"), (D("999999999999999"), "999999999999999")],
)
def test_meter_value(value: Decimal, text: str) -> None:
    assert meter_value(value) == text


@pytest.mark.parametrize(
    ("value", "message"),
    [(D("1.5"), "not a whole number"), (D("1000000000000000"), "16 digits"), (D("NaN"), "whole")],
)
def test_meter_value_refuses_what_stripe_would_round(value: Decimal, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        meter_value(value)
