"""The catalog sync against the Stripe sandbox, through the real SDK, into both warehouses:
customers with their mapping, meters with our modes, tiered prices, and subscription items
whose history survives a mid-period price change and a removed item."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg

from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.defs.stripe_catalog.assets import one_active_item_per_meter, stripe_catalog
from metering_pipeline.settings import SANDBOX_API_KEY
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.usage_world import insert_events, run_models
from metering_pipeline_tests.sandbox.support import (
    GRADUATED,
    advance,
    clocked_customer,
    meter,
    metered_price,
    subscribe,
    ts,
)

NOV_5 = ts(2026, 11, 5)
CHANGE = ts(2026, 11, 17, 9, 41, 7)


def moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def sync(url: str, sandbox_url: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [stripe_catalog, one_active_item_per_meter],
        instance=instance,
        resources={
            "stripe": StripeResource(api_base=sandbox_url),
            "warehouse": WarehouseResource(url=url),
        },
    )


def rows(url: str, sql: str) -> list[tuple]:
    with Database(url).connect() as conn:
        return conn.fetchall(sql)


def test_sync_keeps_both_intervals_of_a_mid_period_price_change(
    warehouse_url, stripe_sandbox, stripe_client
):
    api_calls = meter(stripe_client, "api_calls")
    seats = meter(stripe_client, "seats", formula="last")
    old = metered_price(stripe_client, api_calls.id, unit_amount=2)
    new = metered_price(
        stripe_client,
        api_calls.id,
        billing_scheme="tiered",
        tiers_mode="graduated",
        tiers=GRADUATED,
    )
    seat_price = metered_price(stripe_client, seats.id, unit_amount=500)
    customer, clock = clocked_customer(
        stripe_client, NOV_5, metadata={"metering_customer_id": "app_1"}
    )
    stripe_client.v1.customers.create({"email": "nobody@example.com"})
    subscription = subscribe(stripe_client, customer.id, old.id, seat_price.id)
    api_item, seat_item = subscription["items"]["data"]
    advance(stripe_client, clock.id, CHANGE)
    stripe_client.v1.subscriptions.update(
        subscription.id,
        {
            "items": [{"id": api_item.id, "price": new.id}, {"id": seat_item.id, "deleted": True}],
            "proration_behavior": "none",
        },
    )
    instance = dg.DagsterInstance.ephemeral()

    result = sync(warehouse_url, stripe_sandbox.url, instance)

    assert result.success
    intervals = rows(
        warehouse_url,
        "select subscription_item_id, price_id, meter_event_name, valid_from, valid_to "
        "from metering.stripe_subscription_items order by valid_from, price_id",
    )
    assert sorted(intervals, key=lambda r: (r[3], r[1])) == sorted(
        [
            (api_item.id, old.id, "api_calls", moment(NOV_5), moment(CHANGE)),
            (seat_item.id, seat_price.id, "seats", moment(NOV_5), moment(CHANGE)),
            (api_item.id, new.id, "api_calls", moment(CHANGE), None),
        ],
        key=lambda r: (r[3], r[1]),
    )
    periods = rows(
        warehouse_url, "select distinct period_start, period_end from metering.billing_periods"
    )
    assert periods == [(moment(NOV_5), moment(ts(2026, 12, 5)))]
    assert instance.get_dynamic_partitions("billing_periods") == [
        "2026-11-05T00:00:00Z/2026-12-05T00:00:00Z"
    ]

    customers = dict(
        rows(
            warehouse_url,
            "select stripe_customer_id, metering_customer_id from metering.stripe_customers",
        )
    )
    assert customers[customer.id] == "app_1"
    assert list(customers.values()).count(None) == 1
    modes = dict(
        rows(warehouse_url, "select event_name, aggregation_mode from metering.stripe_meters")
    )
    assert modes == {"api_calls": "sum", "seats": "last_during_period"}
    (tiers,) = rows(
        warehouse_url, f"select tiers from metering.stripe_prices where price_id = '{new.id}'"
    )
    assert [tier["up_to"] for tier in json.loads(tiers[0])] == [1000, 10000, None]

    (check,) = result.get_asset_check_evaluations()
    assert check.passed

    again = sync(warehouse_url, stripe_sandbox.url, instance)
    assert again.success
    assert (
        rows(
            warehouse_url,
            "select subscription_item_id, price_id, meter_event_name, valid_from, valid_to "
            "from metering.stripe_subscription_items order by valid_from, price_id",
        )
        == intervals
    )


def test_the_key_never_reaches_metadata(warehouse_url, stripe_sandbox, stripe_client):
    meter(stripe_client, "api_calls")
    result = sync(warehouse_url, stripe_sandbox.url, dg.DagsterInstance.ephemeral())
    assert result.success
    for materialization in result.asset_materializations_for_node("stripe_catalog"):
        shown = json.dumps({k: str(v.value) for k, v in materialization.metadata.items()})
        assert SANDBOX_API_KEY not in shown and "sk_test" not in shown


def test_synced_intervals_split_the_hour_of_a_price_change_in_the_marts(
    warehouse_url, stripe_sandbox, stripe_client
):
    """Stripe keeps the item id across a price change; the marts still bill each side of the
    instant at its own price."""
    api_calls = meter(stripe_client, "api_calls")
    old = metered_price(stripe_client, api_calls.id, unit_amount=2)
    new = metered_price(stripe_client, api_calls.id, unit_amount=1)
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, old.id)
    (item,) = subscription["items"]["data"]
    advance(stripe_client, clock.id, CHANGE)
    stripe_client.v1.subscription_items.update(
        item.id, {"price": new.id, "proration_behavior": "none"}
    )
    assert sync(warehouse_url, stripe_sandbox.url, dg.DagsterInstance.ephemeral()).success
    insert_events(
        warehouse_url,
        [
            ("before", customer.id, "api_calls", 30, moment(CHANGE - 60)),
            ("at", customer.id, "api_calls", 4, moment(CHANGE)),
            ("after", customer.id, "api_calls", 8, moment(CHANGE + 60)),
        ],
    )

    assert run_models(warehouse_url, "2026-11-17-09:00", "2026-11-17-09:00").success

    assert rows(
        warehouse_url,
        "select price_id, quantity, window_start, window_end from analytics.fct_usage_by_period "
        "order by window_start",
    ) == [
        (old.id, Decimal(30), moment(NOV_5), moment(CHANGE)),
        (new.id, Decimal(12), moment(CHANGE), moment(ts(2026, 12, 5))),
    ]
