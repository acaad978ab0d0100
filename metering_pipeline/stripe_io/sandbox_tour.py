"""The sandbox tour: usage billing on the Stripe sandbox alone, from meter to finalized invoice.

It runs entirely in-process with no network (the caller starts the sandbox and passes its
address; this module only speaks the SDK): it sets up a metered price with
graduated tiers, subscribes a customer whose time is a Stripe test clock, reports usage through
the official stripe SDK, and moves the clock through the billing period and the invoice's
finalization grace period, narrating what Stripe does at each step.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import stripe

PERIOD_START = datetime(2026, 11, 5, tzinfo=UTC)
TIERS = [
    {"up_to": 1000, "unit_amount_decimal": "1"},
    {"up_to": 10000, "unit_amount_decimal": "0.8"},
    {"up_to": "inf", "unit_amount_decimal": "0.5"},
]
USAGE = [  # (day of month, API calls reported that day)
    (6, 1200),
    (12, 3400),
    (19, 2900),
    (27, 4100),
    (4, 900),  # 4 December: the last day of the period
]


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _money(cents: int) -> str:
    return f"${Decimal(cents) / 100:,.2f}"


def _step(number: int, text: str) -> None:
    print(f"\n{number}. {text}")


def _advance(client: stripe.StripeClient, clock_id: str, frozen_time: int) -> None:
    client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": frozen_time})
    while client.v1.test_helpers.test_clocks.retrieve(clock_id).status != "ready":
        time.sleep(0.2)  # poll gently: test mode allows 25 requests a second
    print(f"   test clock is now {_when(frozen_time)}")


def run_sandbox_tour(sandbox_url: str) -> None:
    print(f"Stripe sandbox running at {sandbox_url} (in-process, no network).")
    client = stripe.StripeClient(
        "sk_test_demo", base_addresses={"api": sandbox_url, "meter_events": sandbox_url}
    )
    _tour(client)


def _tour(client: stripe.StripeClient) -> None:
    start = int(PERIOD_START.timestamp())

    _step(1, "Create a billing meter: it sums the `value` of every `api_calls` event.")
    meter = client.v1.billing.meters.create(
        {
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
        }
    )
    print(f"   meter {meter.id} (event_name={meter.event_name})")

    _step(2, "Create a product and a metered price with graduated tiers.")
    product = client.v1.products.create({"name": "Acme API"})
    price = client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": TIERS,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    print(f"   price {price.id}: first 1,000 calls at 1¢, next 9,000 at 0.8¢, beyond at 0.5¢")

    _step(3, "Create a customer on a test clock frozen at the start of the period.")
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start, "name": "demo"})
    customer = client.v1.customers.create(
        {
            "name": "Globex Corp",
            "email": "billing@globex.example",
            "test_clock": clock.id,
            "metadata": {"metering_customer_id": "globex"},
        }
    )
    print(f"   customer {customer.id}, test clock {clock.id} at {_when(clock.frozen_time)}")

    _step(4, "Subscribe the customer to the metered price (billing mode flexible).")
    subscription = client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": price.id}]}
    )
    item = subscription["items"].data[0]
    period_end = item.current_period_end
    print(
        f"   subscription {subscription.id}: period {_when(item.current_period_start)} "
        f"→ {_when(period_end)}"
    )

    _step(5, "Report usage as meter events, moving the clock through the month.")
    total = 0
    for day, calls in USAGE:
        month = 12 if day < PERIOD_START.day else 11
        moment = int(datetime(2026, month, day, 12, tzinfo=UTC).timestamp())
        _advance(client, clock.id, moment)
        client.v1.billing.meter_events.create(
            {
                "event_name": "api_calls",
                "payload": {"stripe_customer_id": customer.id, "value": str(calls)},
                "identifier": f"globex-{month}-{day}",
                "timestamp": moment,
            },
        )
        total += calls
        print(f"   sent {calls:>5,} calls on {_when(moment)} (running total {total:,})")
    try:
        client.v1.billing.meter_events.create(
            {
                "event_name": "api_calls",
                "payload": {"stripe_customer_id": customer.id, "value": "900"},
                "identifier": "globex-12-4",
            }
        )
    except stripe.InvalidRequestError as error:
        print(f"   a retry with the same identifier is refused: {error.user_message}")

    preview = client.v1.invoices.create_preview({"subscription": subscription.id})
    print(f"   invoice preview before the period ends: {_money(preview.amount_due)}")

    _step(6, "Advance past the period end: Stripe drafts the invoice and waits an hour.")
    _advance(client, clock.id, period_end + 60)
    (draft,) = [
        invoice
        for invoice in client.v1.invoices.list({"customer": customer.id}).data
        if invoice.billing_reason == "subscription_cycle"
    ]
    print(
        f"   invoice {draft.id} is {draft.status}, {_money(draft.amount_due)}, finalizes "
        f"automatically at {_when(draft.automatically_finalizes_at)}"
    )
    late = int(datetime(2026, 11, 30, 9, tzinfo=UTC).timestamp())
    client.v1.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "payload": {"stripe_customer_id": customer.id, "value": "500"},
            "identifier": "globex-late-11-30",
            "timestamp": late,
        }
    )
    total += 500
    print("   500 late calls from 30 November arrive during the grace hour: they still count")

    _step(7, "Advance past the grace period: the invoice is finalized and frozen.")
    _advance(client, clock.id, draft.automatically_finalizes_at + 60)
    invoice = client.v1.invoices.retrieve(draft.id)
    _print_invoice(client, invoice, total)


def _print_invoice(client: stripe.StripeClient, invoice, total: int) -> None:
    print(f"\n   Invoice {invoice.number} ({invoice.id}) — status: {invoice.status}")
    print(f"   period {_when(invoice.period_start)} → {_when(invoice.period_end)}")
    for line in client.v1.invoices.line_items.list(invoice.id).data:
        print(f"   {line.description:<40} qty {line.quantity:>7,}   {_money(line.amount):>10}")
    print(f"   {'Total due':<55}{_money(invoice.amount_due):>10}")
    tier_one = min(total, 1000)
    tier_two = min(max(total - 1000, 0), 9000)
    tier_three = max(total - 10000, 0)
    print(
        f"\n   How Stripe got there: {tier_one:,} × 1¢ + {tier_two:,} × 0.8¢ + "
        f"{tier_three:,} × 0.5¢, computed in decimal and rounded once to the cent."
    )
