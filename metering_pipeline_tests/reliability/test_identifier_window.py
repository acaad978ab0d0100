"""A pending meter event re-sent after Stripe forgot its identifier must not bill twice.

Stripe dedupes a meter event identifier for about 24 hours; the sandbox models that window on
the customer's (test) clock. Each customer below has one entry the ledger left ``pending``:
Stripe got it but the answer was lost, or it never reached Stripe. Then the customers' clocks
move 23 hours, 25 hours or a week, and one push must leave Stripe holding each usage once.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from metering_pipeline.push import push_usage
from metering_pipeline.settings import SANDBOX_API_KEY
from metering_pipeline.stripe_io import CallContext, StripeGateway, StripeUnavailableError
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_push import METER_EVENTS, ledger_statuses
from metering_pipeline_tests.integration.test_push_world import (
    CLOCK_NOW,
    FIRST_HOUR,
    LAST_HOUR,
    build_world,
    moment,
    query,
)
from metering_pipeline_tests.sandbox.support import advance, ts

HOUR = 3600
DROP_ANSWERS = [
    {"path_prefix": "/v1/billing/meter_events", "method": "POST", "action": "drop_response"}
]


class _UnreachableFor(StripeGateway):
    """Stripe is unreachable for some customers: their events never arrive (no answer)."""

    def __init__(self, url: str, down: set[str]) -> None:
        super().__init__(SANDBOX_API_KEY, url, url, 1000.0, 0)
        self.down = down

    def send_meter_event(self, event_name, stripe_customer_id, *args, **kwargs):
        if stripe_customer_id in self.down:
            raise StripeUnavailableError(
                "send meter event", CallContext(customer=stripe_customer_id), "refused", "retry"
            )
        return super().send_meter_event(event_name, stripe_customer_id, *args, **kwargs)


def calls(sandbox) -> int:
    return sum(sandbox.control.stats()["by_path"].get(METER_EVENTS, {}).values())


def test_entries_past_the_identifier_window_are_checked_against_stripe_never_resent_blind(
    duckdb_url, stripe_sandbox, stripe_client
):
    world = build_world(duckdb_url, stripe_sandbox.url, stripe_client, customers=5)
    c23, c25, lost, week, foreign = world.customers
    usage = {customer: 1000 + 111 * n for n, customer in enumerate(world.customers)}
    world.add_usage(
        [(f"u-{c}", c, "api_calls", q, moment(ts(2026, 11, 10))) for c, q in usage.items()],
        FIRST_HOUR,
        LAST_HOUR,
    )
    units = {}

    # Stripe records every event but every answer is lost; one customer's never arrives
    stripe_sandbox.control.set_faults(DROP_ANSWERS)
    first = push_usage(
        Database(world.url),
        _UnreachableFor(stripe_sandbox.url, {lost}),
        late_usage_policy="hold",
        finalization_grace=timedelta(hours=1),
        meter_units=units,
    )
    stripe_sandbox.control.clear_faults()
    assert first.pending == 5 and first.money_at_risk()
    assert world.stripe_totals() == {**usage, lost: Decimal(0)}

    # someone sends usage for one customer outside the pipeline
    stripe_client.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": foreign, "value": "77"},
            "timestamp": ts(2026, 11, 11),
        }
    )
    for customer, clock in zip(world.customers, world.clocks, strict=True):
        hours = {c23: 23, week: 7 * 24}.get(customer, 25)
        advance(stripe_client, clock, CLOCK_NOW + hours * HOUR)
    gateway = StripeGateway(SANDBOX_API_KEY, stripe_sandbox.url, stripe_sandbox.url, 1000.0, 0)
    before = calls(stripe_sandbox)

    # right away: 23 h is still inside the window, so that entry is re-sent with its identifier
    # (a duplicate: delivered once); the older ones wait until Stripe's summaries have settled
    early = push_usage(
        Database(world.url),
        gateway,
        late_usage_policy="hold",
        finalization_grace=timedelta(hours=1),
        meter_units=units,
    )
    assert calls(stripe_sandbox) - before == 1 and early.already_delivered == 1
    assert early.pending == 4 and early.verified_delivered == early.superseded == 0
    assert sum("run the push again later" in problem for problem in early.problems) == 4
    assert world.stripe_totals() == {**usage, lost: Decimal(0), foreign: usage[foreign] + 77}

    # the sandbox's summaries are consistent at once: no need to wait for them to settle
    second = push_usage(
        Database(world.url),
        gateway,
        late_usage_policy="hold",
        finalization_grace=timedelta(hours=1),
        meter_units=units,
        summaries_settle=timedelta(0),
    )

    # 25 h and a week: Stripe's summaries show the event, so it is marked delivered, not re-sent.
    # never received: superseded, and the usage goes out once under a new identifier.
    assert world.stripe_totals() == {**usage, foreign: usage[foreign] + 77}
    assert calls(stripe_sandbox) - before == 2
    assert (second.already_delivered, second.verified_delivered) == (0, 2)
    assert (second.superseded, second.events_sent) == (1, 1)
    rows = query(
        world.url,
        "select stripe_customer_id, sequence, status, cast(value as integer) "
        "from metering.meter_event_ledger order by stripe_customer_id, sequence",
    )
    assert sorted(rows) == sorted(
        [(c, 1, "sent", usage[c]) for c in (c23, c25, week)]
        + [(lost, 1, "expired", usage[lost]), (lost, 2, "sent", usage[lost])]
        + [(foreign, 1, "pending", usage[foreign])]
    )
    # Stripe's figure fits neither: nothing is sent and the run must fail, naming both figures
    failure = second.money_at_risk()
    assert failure and foreign in failure
    assert f"holds {usage[foreign] + 77}" in failure
    assert f"expects {usage[foreign]} with them or 0 without them" in failure
    assert ledger_statuses(world.url) == {"sent": 4, "expired": 1, "pending": 1}
