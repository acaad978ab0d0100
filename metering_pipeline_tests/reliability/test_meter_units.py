"""Usage that is not a whole number reaches Stripe in its meter's unit, and reconciles there.

Before, a key whose total was not whole was skipped with a line in the run's metadata and the run
succeeded: with ``metering seed``'s defaults, half of the ``storage_gb`` keys were never billed.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from metering_pipeline.billing.units import MeterUnit
from metering_pipeline.push import push_usage
from metering_pipeline.reconcile.period import reconcile_period
from metering_pipeline.settings import SANDBOX_API_KEY
from metering_pipeline.stripe_io import StripeGateway
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_push import ledger_statuses
from metering_pipeline_tests.integration.test_push_world import (
    FIRST_HOUR,
    LAST_HOUR,
    PERIOD,
    build_world,
    moment,
)
from metering_pipeline_tests.sandbox.support import ts

PERIOD_DATES = (moment(PERIOD[0]), moment(PERIOD[1]))


def test_fractional_usage_is_pushed_in_the_meters_unit_or_fails_the_run(
    duckdb_url, stripe_sandbox, stripe_client
):
    world = build_world(duckdb_url, stripe_sandbox.url, stripe_client, customers=2)
    first, second = world.customers
    world.add_usage(
        [
            ("a1", first, "api_calls", "1.2345", moment(ts(2026, 11, 10))),
            ("a2", first, "api_calls", "2.0004", moment(ts(2026, 11, 11))),
            ("b1", second, "api_calls", "0.5", moment(ts(2026, 11, 12))),
            ("b2", second, "api_calls", "0.25", moment(ts(2026, 11, 12, 1))),
        ],
        FIRST_HOUR,
        LAST_HOUR,
    )
    database = Database(world.url)
    gateway = StripeGateway(SANDBOX_API_KEY, stripe_sandbox.url, stripe_sandbox.url, 1000.0, 0)

    def push(unit: MeterUnit):
        return push_usage(
            database,
            gateway,
            late_usage_policy="hold",
            finalization_grace=timedelta(hours=1),
            meter_units={"api_calls": unit},
        )

    # a meter whose rule forbids rounding: nothing sent, and the run must fail naming the keys
    refused = push(MeterUnit(1, "exact"))
    failure = refused.money_at_risk()
    assert failure and first in failure and second in failure
    assert "not a whole number of pushed units" in failure
    assert world.stripe_totals() == {first: 0, second: 0}

    # in milli-units, each period total reaches Stripe exactly
    milli = MeterUnit(1000)
    pushed = push(milli)
    assert pushed.money_at_risk() is None
    assert world.stripe_totals() == {first: 3235, second: 750}  # 3.2349 rounds half up
    assert ledger_statuses(world.url) == {"sent": 2}

    # and reconciliation compares ours in the same unit
    rows = reconcile_period(database, gateway, PERIOD_DATES, Decimal("0.01"), {"api_calls": milli})
    assert {(r.stripe_customer_id, r.ours, r.stripe, r.flagged) for r in rows} == {
        (first, 3235, 3235, False),
        (second, 750, 750, False),
    }
