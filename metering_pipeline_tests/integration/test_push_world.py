"""A billing world for the push tests, built through the real SDK against the sandbox, and a
``__main__`` that runs one push in its own process (to be killed, or raced by another).

    python -m metering_pipeline_tests.integration.test_push_world URL SANDBOX_URL FIRST LAST
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import stripe

from metering_pipeline.defs.push.assets import meter_events_delivered, stripe_meter_events
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.defs.stripe_catalog.assets import stripe_catalog
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

PERIOD = (ts(2026, 11, 5), ts(2026, 12, 5))
CLOCK_NOW = ts(2026, 11, 20)
FIRST_HOUR, LAST_HOUR = "2026-11-05-00:00", "2026-11-19-23:00"


def moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass
class World:
    url: str
    sandbox_url: str
    client: stripe.StripeClient
    meter: stripe.billing.Meter
    price: stripe.Price
    customers: list[str]
    clocks: list[str]
    subscriptions: list[stripe.Subscription]
    instance: dg.DagsterInstance

    def sync(self) -> None:
        result = dg.materialize(
            [stripe_catalog],
            instance=self.instance,
            resources={
                "stripe": StripeResource(api_base=self.sandbox_url),
                "warehouse": WarehouseResource(url=self.url),
            },
        )
        assert result.success

    def add_usage(self, events: list[tuple], first_hour: str, last_hour: str) -> None:
        insert_events(self.url, events)
        assert run_models(self.url, first_hour, last_hour, self.instance).success

    def push(
        self, first_hour: str = FIRST_HOUR, last_hour: str = LAST_HOUR, raise_on_error: bool = True
    ):
        return push(
            self.url, self.sandbox_url, first_hour, last_hour, self.instance, raise_on_error
        )

    def stripe_totals(self) -> dict[str, Decimal]:
        """What Stripe's meter counts per customer over the whole period."""
        totals = {}
        for customer in self.customers:
            summaries = self.client.v1.billing.meters.event_summaries.list(
                self.meter.id,
                {"customer": customer, "start_time": PERIOD[0], "end_time": PERIOD[1]},
            )
            totals[customer] = sum(
                (Decimal(str(s.aggregated_value)) for s in summaries.data), Decimal(0)
            )
        return totals

    def our_totals(self) -> dict[str, Decimal]:
        rows = query(
            self.url,
            "select stripe_customer_id, sum(quantity) from analytics.fct_usage_by_period "
            "group by stripe_customer_id",
        )
        return {customer: Decimal(total) for customer, total in rows}


def build_world(
    url: str,
    sandbox_url: str,
    client: stripe.StripeClient,
    customers: int,
    billing_mode: str = "flexible",
) -> World:
    """``customers`` customers, each on its own test clock at ``CLOCK_NOW``, subscribed since
    Nov 5 to a graduated metered price on a ``sum`` meter; the catalog synced."""
    api_calls = meter(client, "api_calls")
    price = metered_price(
        client, api_calls.id, billing_scheme="tiered", tiers_mode="graduated", tiers=GRADUATED
    )
    ids, clocks, subscriptions = [], [], []
    for index in range(customers):
        customer, clock = clocked_customer(
            client, PERIOD[0], metadata={"metering_customer_id": f"app_{index}"}
        )
        subscriptions.append(
            subscribe(client, customer.id, price.id, billing_mode={"type": billing_mode})
        )
        advance(client, clock.id, CLOCK_NOW)
        ids.append(customer.id)
        clocks.append(clock.id)
    world = World(
        url, sandbox_url, client, api_calls, price, ids, clocks, subscriptions,
        dg.DagsterInstance.ephemeral(),
    )  # fmt: skip
    world.sync()
    return world


def seeded_events(customers: list[str], per_customer: int, seed: int, tag: str) -> list[tuple]:
    """Usage between Nov 5 and Nov 19, with one refund per customer."""
    rng = random.Random(seed)
    events = []
    for customer in customers:
        for n in range(per_customer):
            at = moment(PERIOD[0]) + timedelta(seconds=rng.randrange(14 * 86400))
            events.append((f"{tag}-{customer}-{n}", customer, "api_calls", rng.randint(1, 400), at))
        refund_at = moment(PERIOD[0]) + timedelta(days=14, hours=rng.randrange(20))
        events.append((f"{tag}-{customer}-refund", customer, "api_calls", -7, refund_at, "refund"))
    return events


def push(
    url: str,
    sandbox_url: str,
    first_hour: str,
    last_hour: str,
    instance: dg.DagsterInstance | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """One run of ``stripe_meter_events`` over the hours first..last, as a single-run backfill."""
    return dg.materialize(
        [stripe_meter_events, meter_events_delivered],
        instance=instance,
        resources={
            "stripe": StripeResource(api_base=sandbox_url),
            "warehouse": WarehouseResource(url=url),
        },
        tags={
            "dagster/asset_partition_range_start": first_hour,
            "dagster/asset_partition_range_end": last_hour,
        },
        raise_on_error=raise_on_error,
    )


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with Database(url).connect() as conn:
        return conn.fetchall(sql, params)


if __name__ == "__main__":
    warehouse_url, sandbox_url, first, last = sys.argv[1:5]
    sys.exit(0 if push(warehouse_url, sandbox_url, first, last).success else 1)
