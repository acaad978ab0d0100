"""A whole billing period, end to end: the demo's flow on Stripe test clocks,
from seeded source rows with the hostile cases to finalized invoices.

The amount each invoice must show is computed here, independently of the pipeline: straight from
the source table's raw rows (our own reading of the validation rules and the dedupe rule), the
customers' subscription windows and the price tiers (our own tier maths). Every finalized invoice
must equal it to the cent, and reconciliation must flag nothing.

One engine is enough here: this path costs minutes of Dagster bookkeeping per run, and every
stage it crosses runs on PostgreSQL too in its own tests (extract, validation, dbt models, push,
reconciliation, catalog sync, each parametrized over both warehouses).
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from metering_pipeline.demo import CUSTOMERS, PLAN_CHANGE_AT, PLANS, DemoResult, run_demo
from metering_pipeline.stripe_setup.spec import TierSpec

E2E_EVENTS = 20_000
# A billing period is ~800 hourly partitions through every stage, three times, and each run's
# per-partition events go to a real SQLite instance: minutes, not the suite's default limit.
pytestmark = pytest.mark.timeout(1500)
QUANTITY_BOUND = Decimal(1_000_000_000)  # the default METERING_QUANTITY_MIN/MAX
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def run(tmp_path: Path, monkeypatch, capfd, warehouse_url: str) -> tuple[DemoResult, str]:
    """The demo as a user runs it; returns everything it printed to the console."""
    monkeypatch.setenv("METERING_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("METERING_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    capfd.readouterr()
    result = run_demo(events=E2E_EVENTS)
    out, err = capfd.readouterr()
    return result, out + err


def test_finalized_invoices_equal_the_source_rows_priced_independently(
    tmp_path, monkeypatch, capfd, duckdb_url
):
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    result, output = run(tmp_path, monkeypatch, capfd, duckdb_url)
    assert_billed_exactly(result)
    assert "sk_test_" not in output  # the sandbox key never reaches the output
    assert f"DAGSTER_HOME={tmp_path / 'dagster'}" in output
    # The console tells the story in a line per step: no dbt listing, no warnings.
    assert len(output.splitlines()) <= 60, output
    assert output.count("✓") == len(result.customers) and "✗" not in output
    # The runs are in the persistent instance `dagster dev` opens, and they all succeeded.
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        runs = [instance.get_run_by_id(run_id) for run_id in result.run_ids]
    assert len(runs) >= 10
    assert all(run is not None and run.is_success for run in runs)
    # ... and they are the code location's own jobs, not an ad-hoc asset selection.
    jobs = {run.job_name for run in runs if run is not None}
    assert jobs == {"stripe_catalog_sync", "hourly_usage", "period_reconciliation"}


@pytest.mark.real_stripe
def test_the_same_billing_period_against_a_stripe_test_mode_account(tmp_path, monkeypatch, capfd):
    key = os.environ.get("STRIPE_TEST_API_KEY")
    if not key:
        pytest.skip("STRIPE_TEST_API_KEY is not set; set a Stripe test-mode key to run this")
    monkeypatch.setenv("STRIPE_API_KEY", key)
    monkeypatch.delenv("STRIPE_API_BASE", raising=False)
    monkeypatch.delenv("STRIPE_METER_EVENTS_BASE", raising=False)
    result, output = run(tmp_path, monkeypatch, capfd, f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    assert_billed_exactly(result)
    assert key not in output


def assert_billed_exactly(result: DemoResult) -> None:
    expected = expected_invoice_amounts(result.source_url, result.meters)
    billed = {outcome.customer.app_id: outcome.invoice_amount_due for outcome in result.customers}
    assert billed == expected
    assert {outcome.invoice_status for outcome in result.customers} <= {"open", "paid"}
    assert all(expected.values())  # every customer really had something to bill
    assert result.flagged == 0
    for outcome in result.customers:
        assert all(item.ours == item.stripe for item in outcome.items), outcome


def expected_invoice_amounts(source_url: str, meters: dict[str, str]) -> dict[str, int]:
    """Minor units per customer for its demo billing period, from the raw source rows."""
    usage = accepted_usage(source_url, {event_name: meter for meter, event_name in meters.items()})
    amounts = {}
    for customer in CUSTOMERS:
        start, end = customer.period
        total = 0
        for meter, plan in customer.plans.items():
            windows = [(start, end, plan)]
            if customer.plan_change and customer.plan_change[0] == meter:
                new_plan = customer.plan_change[1]
                windows = [(start, PLAN_CHANGE_AT, plan), (PLAN_CHANGE_AT, end, new_plan)]
            for window_start, window_end, window_plan in windows:
                quantity = sum(
                    (
                        value
                        for at, value in usage[(customer.app_id, meter)]
                        if window_start <= at < window_end
                    ),
                    Decimal(0),
                )
                total += tier_amount(*PLANS[window_plan], quantity)
        amounts[customer.app_id] = total
    return amounts


def accepted_usage(
    source_url: str, meter_of: dict[str, str]
) -> dict[tuple[str, str], list[tuple[datetime, Decimal]]]:
    """(customer, meter) -> [(occurred_at, quantity)] of the rows a careful reader of the contract
    accepts: every required field present, a known customer and meter (``meter_of`` maps Stripe
    event names to ours), a quantity within bounds, negative only with a reason; of one
    event_id, the first received."""
    path = source_url.removeprefix("duckdb:///")
    with duckdb.connect(path, read_only=True) as conn:
        rows = conn.execute(
            "select event_id, customer_id, meter, cast(quantity as varchar), "
            "epoch_us(occurred_at), epoch_us(received_at), reason from usage_events"
        ).fetchall()
    customers = {customer.app_id for customer in CUSTOMERS}
    first: dict[str, tuple] = {}
    for event_id, customer, meter, quantity, occurred, received, reason in rows:
        if None in (event_id, customer, meter, quantity, occurred, received):
            continue
        if customer not in customers or meter not in meter_of:
            continue
        value = Decimal(quantity)
        if not -QUANTITY_BOUND <= value <= QUANTITY_BOUND or (value < 0 and not reason):
            continue
        if event_id not in first or received < first[event_id][3]:
            first[event_id] = (customer, meter_of[meter], value, received, occurred)
    usage: dict[tuple[str, str], list] = defaultdict(list)
    for customer, meter, value, _, occurred in first.values():
        usage[(customer, meter)].append((EPOCH + timedelta(microseconds=occurred), value))
    return usage


def tier_amount(mode: str, tiers: tuple[TierSpec, ...], quantity: Decimal) -> int:
    """Stripe's tier rules, written out: graduated prices each unit in its tier and adds the flat
    fee of every tier reached; volume prices all units at the tier the total falls in; a negative
    total bills as zero; the line is rounded once, half up, to a minor unit."""
    quantity = max(quantity, Decimal(0))
    exact = Decimal(0)
    lower = 0
    for index, tier in enumerate(tiers):
        upper = tier.up_to
        if mode == "volume":
            if upper is None or quantity <= upper:
                exact = quantity * Decimal(tier.unit_amount_decimal) + tier.flat_amount
                break
            continue
        if quantity > lower or index == 0:
            in_tier = min(quantity, upper if upper is not None else quantity) - lower
            exact += max(in_tier, 0) * Decimal(tier.unit_amount_decimal) + tier.flat_amount
        lower = upper or lower
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
