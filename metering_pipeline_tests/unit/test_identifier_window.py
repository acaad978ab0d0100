"""When a pending entry may be re-sent with its identifier, and what Stripe's summary proves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from metering_pipeline.billing.ledger import (
    HeldEvent,
    LedgerEntry,
    PushPlan,
    plan_push,
    recheck,
    verify_expired,
)

H = timedelta(hours=1)
M = timedelta(minutes=1)
T0 = datetime(2026, 11, 20, tzinfo=UTC)


def event(value: int, minute: int = 0) -> HeldEvent:
    return HeldEvent(Decimal(value), T0 + minute * M)


@pytest.mark.parametrize(
    ("age", "since_attempt", "expected"),
    [
        (10 * M, 10 * M, "resend"),  # just crashed: Stripe dedupes the identifier
        (23 * H, 23 * H, "resend"),  # still inside Stripe's 24 h
        (23 * H + 29 * M, M, "resend"),
        (23 * H + 30 * M, 23 * H, "verify"),  # the margin: treat it as forgotten already
        (25 * H, 25 * H, "verify"),
        (7 * 24 * H, 2 * H, "verify"),
        (25 * H, 5 * M, "wait"),  # we tried minutes ago: Stripe's summaries may lag
        (25 * H, 14 * M, "wait"),
        (25 * H, 15 * M, "verify"),
    ],
)
def test_an_entry_is_resent_blind_only_inside_the_identifier_window(age, since_attempt, expected):
    assert recheck(age, since_attempt) == expected


@pytest.mark.parametrize(
    ("formula", "acknowledged", "uncertain", "held", "expected"),
    [
        # sum: Stripe holds the acknowledged ones plus, or not, the uncertain ones
        ("sum", [event(100)], [event(30, 1)], 130, "delivered"),
        ("sum", [event(100)], [event(30, 1)], 100, "lost"),
        ("sum", [], [event(30), event(20, 1)], 50, "delivered"),
        ("sum", [], [event(30), event(20, 1)], 0, "lost"),
        ("sum", [], [event(30), event(20, 1)], 30, "mismatch"),  # only one of two: unclear
        ("sum", [event(100)], [event(30, 1)], 207, "mismatch"),  # usage from elsewhere
        ("sum", [event(100)], [event(-30, 1)], 70, "delivered"),  # a refund delta
        # last: the latest event by timestamp wins
        ("last", [event(7)], [event(9, 1)], 9, "delivered"),
        ("last", [event(7)], [event(9, 1)], 7, "lost"),
        ("last", [], [event(9)], 0, "lost"),
        ("last", [event(7)], [event(9, 1)], 8, "mismatch"),
    ],
)
def test_stripe_summary_says_whether_uncertain_entries_arrived(
    formula, acknowledged, uncertain, held, expected
):
    assert verify_expired(formula, acknowledged, uncertain, Decimal(held)) == expected


@pytest.mark.parametrize(
    ("formula", "desired", "expected"),
    [("sum", 130, PushPlan((), Decimal(30), 3, Decimal(100))),
     ("last", 130, PushPlan((), Decimal(130), 3, Decimal(100)))],
)  # fmt: skip
def test_an_expired_entry_never_counts_and_the_rest_goes_under_the_next_sequence(
    formula, desired, expected
):
    entries = [
        LedgerEntry(1, Decimal(100), "sent"),
        LedgerEntry(2, Decimal(30), "expired"),
    ]
    assert plan_push(formula, Decimal(desired), entries) == expected
