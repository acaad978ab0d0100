"""The variance and flag rules of reconciliation, and what repair adopts into the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering_pipeline.billing.ledger import LedgerEntry, plan_push
from metering_pipeline.reconcile.variance import (
    StripeSide,
    adoption,
    compare,
    flagged_summary,
    markdown_table,
    percent,
    totals,
    variance,
)

PERIOD = (datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 12, 5, tzinfo=UTC))
ONE_PERCENT = Decimal("0.01")


def row(item: str, ours: str, stripe: str, threshold: Decimal = ONE_PERCENT):
    return compare(
        subscription_item_id=item,
        price_id="price_1",
        stripe_customer_id=f"cus_{item}",
        meter="api_calls",
        period=PERIOD,
        window=PERIOD,
        ours=Decimal(ours),
        ledger=Decimal(ours),
        stripe=StripeSide(Decimal(stripe)),
        expected_amount=Decimal(8200),
        stripe_amount=Decimal(8360),
        amount_source="preview",
        currency="usd",
        threshold=threshold,
    )


@pytest.mark.parametrize(
    ("ours", "stripe", "expected"),
    [
        ("10000", "10000", "0"),
        ("10000", "10100", "0.01"),
        ("10000", "9900", "0.01"),
        ("10000", "10050", "0.005"),
        ("-200", "-100", "0.5"),  # a refund-heavy period: relative to |ours|
        ("0", "0", "0"),
    ],
)
def test_variance_is_relative_to_our_quantity(ours, stripe, expected):
    assert variance(Decimal(ours), Decimal(stripe)) == Decimal(expected)


def test_usage_at_stripe_that_we_never_measured_is_a_huge_variance_not_a_crash():
    assert variance(Decimal(0), Decimal(1)) == Decimal(1) / Decimal("1e-9")


@pytest.mark.parametrize(
    ("stripe", "flagged"),
    [
        ("10000", False),
        ("10050", False),  # 0.5%
        ("10100", False),  # exactly 1% is not over the threshold
        ("10101", True),
        ("10200", True),  # 2%
        ("9899", True),  # drift downwards counts too
    ],
)
def test_flagged_only_over_the_threshold(stripe, flagged):
    assert row("si_a", "10000", stripe).flagged is flagged


def test_threshold_is_configurable():
    assert row("si_a", "10000", "10050", threshold=Decimal("0.001")).flagged
    assert not row("si_a", "10000", "10200", threshold=Decimal("0.05")).flagged


def test_totals_for_the_ui():
    rows = [row("si_a", "10000", "10200"), row("si_b", "500", "500")]

    summary = totals(rows)

    assert (summary.items, summary.ours, summary.stripe) == (2, Decimal(10500), Decimal(10700))
    assert summary.flagged == 1
    assert summary.max_variance == Decimal("0.02")


def test_totals_of_an_empty_period():
    summary = totals([])
    assert (summary.items, summary.flagged, summary.max_variance) == (0, 0, 0)


def test_markdown_table_lists_flagged_items_first_with_their_figures():
    table = markdown_table([row("si_b", "500", "500"), row("si_a", "10000", "10200")])

    lines = table.splitlines()
    assert lines[0].startswith("| flagged | subscription item |")
    assert lines[2].startswith("| **yes** | si_a | cus_si_a | api_calls | 10000 | 10000 | 10200 ")
    assert "| 2.00% |" in lines[2]
    assert "| 8200 USD | 8360 USD (preview) |" in lines[2]
    assert lines[3].startswith("| no | si_b |")


def test_the_failing_check_names_each_flagged_item_and_what_to_do():
    text = flagged_summary([row("si_a", "10000", "10200"), row("si_b", "500", "500")], ONE_PERCENT)

    assert "1 subscription item(s)" in text
    assert "si_a (customer cus_si_a, meter api_calls: ours 10000, Stripe bills 10200" in text
    assert "si_b" not in text
    assert "repair" in text


def test_the_passing_check_says_so():
    assert "within 1.00%" in flagged_summary([row("si_b", "500", "500")], ONE_PERCENT)


def test_percent_of_a_huge_variance_stays_readable():
    assert percent(Decimal(1) / Decimal("1e-9")) == "> 1,000,000%"
    assert percent(Decimal("0.0234")) == "2.34%"


@pytest.mark.parametrize(
    ("formula", "stripe", "ledger", "adopted"),
    [
        ("sum", "10200", "10000", "200"),  # an event sent behind our back
        ("sum", "9800", "10000", "-200"),  # one of ours cancelled behind our back
        ("sum", "10000", "10000", None),  # the ledger explains Stripe
        ("sum", "300", None, "300"),  # usage on an item we never pushed to
        ("last", "70", "50", "70"),  # last meters: Stripe's current value
        ("last", "50", "50", None),
    ],
)
def test_adoption_records_what_the_ledger_cannot_explain(formula, stripe, ledger, adopted):
    result = adoption(formula, Decimal(stripe), None if ledger is None else Decimal(ledger))
    assert (None if result is None else result.value) == (
        None if adopted is None else Decimal(adopted)
    )


def test_adoption_then_the_push_arithmetic_sends_the_correction():
    """Adopting Stripe's extra usage makes the push's own plan send ours minus Stripe's."""
    sent = [LedgerEntry(1, Decimal(10000), "sent")]
    adopted = adoption("sum", Decimal(10200), Decimal(10000))
    entries = [*sent, LedgerEntry(2, adopted.value, "sent")]

    plan = plan_push("sum", Decimal(10000), entries)

    assert plan.value == Decimal(-200)
    assert plan.sequence == 3


def test_unknown_formula_is_refused():
    with pytest.raises(ValueError, match="count"):
        adoption("count", Decimal(1), Decimal(0))  # type: ignore[arg-type]
