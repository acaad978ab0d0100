"""Drift is caught and repaired: a meter event sent to Stripe behind the
pipeline's back moves one item; reconciliation's blocking check names it when the move exceeds 1%
and stays green at 0.5%; the repair job shows the delta (dry run changes nothing), then sends it
through the ledger, after which the check passes and the push has nothing left to send.

Everything runs for real: the catalog sync and the dbt models through Dagster, the Stripe sandbox
through the official SDK, the warehouse on DuckDB and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg
import pytest

from metering_pipeline.defs.push.assets import stripe_meter_events
from metering_pipeline.defs.reconcile.assets import (
    AGREEMENT_CHECK,
    billing_period_reconciliation,
    repair,
)
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.defs.stripe_catalog.assets import stripe_catalog
from metering_pipeline.stripe_io import StripeGateway
from metering_pipeline_tests.integration.usage_world import insert_events, query, run_models
from metering_pipeline_tests.sandbox.support import (
    GRADUATED,
    advance,
    meter,
    metered_price,
    subscribe,
    ts,
    usage,
)

PERIOD_KEY = "2026-11-05T00:00:00Z/2026-12-05T00:00:00Z"
PERIOD = (datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 12, 5, tzinfo=UTC))
NOW = ts(2026, 11, 12)
FIRST_HOUR, LAST_HOUR = "2026-11-06-00:00", "2026-11-08-23:00"


@dataclass
class World:
    url: str
    sandbox: object
    client: object
    instance: dg.DagsterInstance
    drifted_customer: str
    drifted_item: str
    steady_item: str

    @property
    def resources(self) -> dict:
        return {
            "stripe": StripeResource(api_base=self.sandbox.url),
            "warehouse": WarehouseResource(url=self.url),
        }

    def gateway(self) -> StripeGateway:
        return StripeResource(api_base=self.sandbox.url).gateway()

    def push(self) -> int:
        """One run of the push asset over the usage hours; returns the meter events it sent."""
        before = self.meter_event_calls()
        result = dg.materialize(
            [stripe_meter_events],
            instance=self.instance,
            resources=self.resources,
            tags={
                "dagster/asset_partition_range_start": FIRST_HOUR,
                "dagster/asset_partition_range_end": LAST_HOUR,
            },
        )
        assert result.success
        return self.meter_event_calls() - before

    def reconcile(self) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [billing_period_reconciliation],
            instance=self.instance,
            resources=self.resources,
            partition_key=PERIOD_KEY,
            raise_on_error=False,
        )

    def repair(self, dry_run: bool) -> dg.ExecuteInProcessResult:
        # The sandbox's summaries are consistent at once; real Stripe's need the default wait.
        config = {"dry_run": dry_run, "settle_minutes": 0}
        return repair.execute_in_process(
            run_config={"ops": {"repair_billing_period": {"config": config}}},
            instance=self.instance,
            resources=self.resources,
            partition_key=PERIOD_KEY,
        )

    def stripe_usage(self, item_customer: str) -> Decimal:
        meters = self.client.v1.billing.meters.list().data
        return self.gateway().meter_event_summaries(
            meters[0].id, item_customer, PERIOD[0], datetime.fromtimestamp(NOW + 60, tz=UTC)
        )

    def meter_event_calls(self) -> int:
        counts = self.sandbox.control.stats()["by_path"].get("POST /v1/billing/meter_events", {})
        return sum(counts.values())


@pytest.fixture
def world(warehouse_url, stripe_sandbox, stripe_client) -> Iterator[World]:
    """Two customers on one test clock, 10,000 api calls each in November, pushed to Stripe."""
    api_calls = meter(stripe_client, "api_calls")
    price = metered_price(
        stripe_client,
        api_calls.id,
        billing_scheme="tiered",
        tiers_mode="graduated",
        tiers=GRADUATED,
    )
    clock = stripe_client.v1.test_helpers.test_clocks.create({"frozen_time": ts(2026, 11, 5)})
    items = []
    customers = []
    for name in ("drifted", "steady"):
        customer = stripe_client.v1.customers.create(
            {"test_clock": clock.id, "metadata": {"metering_customer_id": name}}
        )
        subscription = subscribe(stripe_client, customer.id, price.id)
        customers.append(customer.id)
        items.append(subscription["items"]["data"][0].id)
    advance(stripe_client, clock.id, NOW)

    with dg.DagsterInstance.ephemeral() as instance:
        world = World(
            warehouse_url, stripe_sandbox, stripe_client, instance, customers[0], items[0], items[1]
        )
        assert dg.materialize(
            [stripe_catalog], instance=instance, resources=world.resources
        ).success
        insert_events(
            warehouse_url,
            [
                (
                    f"{customer}-{day}-{n}",
                    customer,
                    "api_calls",
                    1000,
                    datetime(2026, 11, day, n, 30, tzinfo=UTC),
                )
                for customer in customers
                for day in (6, 8)
                for n in range(5)
            ],
        )
        assert run_models(warehouse_url, FIRST_HOUR, LAST_HOUR, instance).success
        assert world.push() == 2
        yield world


def check_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == AGREEMENT_CHECK
    ]
    return evaluation


def repair_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [
        event
        for event in result.events_for_node("repair_billing_period")
        if event.is_successful_output
    ]
    return event.step_output_data.metadata


def results(url: str) -> dict[str, tuple]:
    rows = query(
        url,
        "select subscription_item_id, ours, ledger, stripe, flagged, expected_amount, "
        "stripe_amount, amount_source from metering.reconciliation_results",
    )
    return {row[0]: row[1:] for row in rows}


def test_drift_is_flagged_over_one_percent_and_repair_brings_stripe_back(world: World):
    """One period's life, in the order an operator meets it (one world per engine: each phase
    starts from what the one before left)."""
    # A pushed period reconciles clean, with amounts: 10 events of 1000 each on graduated tiers,
    # 1000 x 1c + 9000 x 0.8c = 8200 cents.
    result = world.reconcile()
    assert result.success and check_of(result).passed
    rows = results(world.url)
    for item in (world.drifted_item, world.steady_item):
        ours, ledger, stripe, flagged, expected, stripe_amount, source = rows[item]
        assert (Decimal(ours), Decimal(ledger), Decimal(stripe)) == (10000, 10000, 10000)
        assert not flagged
        assert Decimal(expected) == Decimal(stripe_amount) == 8200
        assert source == "preview"
    metadata = result.asset_materializations_for_node("billing_period_reconciliation")[0].metadata
    assert metadata["flagged_count"].value == 0
    assert metadata["ours_total"].value == metadata["stripe_total"].value == 20000

    # Drift of half a percent, sent behind the pipeline's back, passes.
    usage(world.client, world.drifted_customer, 50, NOW - 60, identifier="behind-the-back-1")
    result = world.reconcile()
    assert result.success and check_of(result).passed
    ours, _, stripe, flagged, *_ = results(world.url)[world.drifted_item]
    assert (Decimal(ours), Decimal(stripe), flagged) == (10000, 10050, False)

    # At 2% the blocking check fails, naming that item and only that one.
    usage(world.client, world.drifted_customer, 150, NOW - 60, identifier="behind-the-back-2")
    result = world.reconcile()
    assert not result.success  # a failed blocking check stops the run and what follows it
    evaluation = check_of(result)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["flagged_items"].value == [world.drifted_item]
    assert world.drifted_item in evaluation.description
    assert world.steady_item not in evaluation.description
    rows = results(world.url)
    assert rows[world.drifted_item][2:4] == (Decimal(10200), True)
    assert rows[world.steady_item][3] is False
    metadata = result.asset_materializations_for_node("billing_period_reconciliation")[0].metadata
    assert metadata["flagged_count"].value == 1
    assert metadata["max_variance"].value == pytest.approx(0.02)
    assert world.drifted_item in metadata["reconciliation"].value

    # Right after a push, real Stripe's summaries may lag; adopting that gap would send the
    # usage twice, so repair (default settle time) leaves the item alone and says when to return.
    calls_before = world.meter_event_calls()
    waited = repair.execute_in_process(
        run_config={"ops": {"repair_billing_period": {"config": {"dry_run": False}}}},
        instance=world.instance,
        resources=world.resources,
        partition_key=PERIOD_KEY,
    )
    assert waited.output_for_node("repair_billing_period") == 0
    shown = repair_metadata(waited)
    assert shown["items_skipped"].value == 1
    assert "run repair again in a few minutes" in shown["deltas"].value
    assert world.meter_event_calls() == calls_before
    assert world.stripe_usage(world.drifted_customer) == 10200

    # A dry run shows the delta and changes nothing ...
    ledger_before = query(world.url, "select * from metering.meter_event_ledger order by 1")
    dry = world.repair(dry_run=True)
    assert dry.success
    assert dry.output_for_node("repair_billing_period") == 0
    shown = repair_metadata(dry)
    assert shown["dry_run"].value is True
    assert shown["items_differing"].value == 1
    assert f"| {world.drifted_item} |" in shown["deltas"].value
    assert "| -200 |" in shown["deltas"].value
    assert world.steady_item not in shown["deltas"].value
    assert world.meter_event_calls() == calls_before
    assert query(world.url, "select * from metering.meter_event_ledger order by 1") == ledger_before
    assert world.stripe_usage(world.drifted_customer) == 10200

    # ... then the repair sends it through the ledger and the check passes again.
    fixed = world.repair(dry_run=False)
    assert fixed.success
    assert fixed.output_for_node("repair_billing_period") == 1
    assert world.meter_event_calls() == calls_before + 1
    assert world.stripe_usage(world.drifted_customer) == 10000
    after = world.reconcile()
    assert after.success and check_of(after).passed
    # The ledger now explains Stripe's total, so the next push sends nothing.
    assert world.push() == 0
    assert world.meter_event_calls() == calls_before + 1

    # Once the period has ended, Stripe's amount comes from the invoice (still a draft during
    # the finalization grace hour), not from a preview of the next period.
    (clock,) = world.client.v1.test_helpers.test_clocks.list().data
    advance(world.client, clock.id, ts(2026, 12, 5, 0, 30))
    result = world.reconcile()
    assert check_of(result).passed
    for item in (world.drifted_item, world.steady_item):
        *_, flagged, expected, stripe_amount, source = results(world.url)[item]
        assert not flagged
        assert Decimal(expected) == Decimal(stripe_amount) == 8200
        assert source.startswith("invoice in_") and source.endswith("(draft)")
