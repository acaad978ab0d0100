"""Builders for sandbox tests: every object is made through the real stripe SDK."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime

import httpx
import stripe

GRADUATED = [
    {"up_to": 1000, "unit_amount_decimal": "1"},
    {"up_to": 10000, "unit_amount_decimal": "0.8"},
    {"up_to": "inf", "unit_amount_decimal": "0.5"},
]


def ts(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp())


def meter(client: stripe.StripeClient, event_name: str = "api_calls", **extra) -> stripe.Meter:
    return client.v1.billing.meters.create(
        {
            "display_name": event_name.replace("_", " "),
            "event_name": event_name,
            "default_aggregation": {"formula": extra.pop("formula", "sum")},
            **extra,
        }
    )


def metered_price(client: stripe.StripeClient, meter_id: str, **pricing) -> stripe.Price:
    """A monthly metered price on `meter_id`; `pricing` holds unit amounts or tiers."""
    product = client.v1.products.create({"name": pricing.pop("name", "API usage")})
    return client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            **pricing,
        }
    )


def clocked_customer(
    client: stripe.StripeClient, frozen_time: int, **extra
) -> tuple[stripe.Customer, stripe.test_helpers.TestClock]:
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": frozen_time})
    customer = client.v1.customers.create({"test_clock": clock.id, **extra})
    return customer, clock


def subscribe(client: stripe.StripeClient, customer_id: str, *price_ids: str, **extra):
    return client.v1.subscriptions.create(
        {"customer": customer_id, "items": [{"price": p} for p in price_ids], **extra}
    )


def usage(
    client,
    customer_id: str,
    value,
    timestamp: int,
    identifier: str | None = None,
    event_name: str = "api_calls",
):
    params = {
        "event_name": event_name,
        "payload": {"stripe_customer_id": customer_id, "value": str(value)},
        "timestamp": timestamp,
    }
    if identifier:
        params["identifier"] = identifier
    return client.v1.billing.meter_events.create(params)


def advance(client: stripe.StripeClient, clock_id: str, frozen_time: int) -> None:
    """Advance a test clock and wait, as one must with Stripe, until it is ready again."""
    clock = client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": frozen_time})
    assert clock.status == "advancing"
    deadline = time.monotonic() + 10
    while client.v1.test_helpers.test_clocks.retrieve(clock_id).status != "ready":
        assert time.monotonic() < deadline, "test clock did not become ready in 10 s"
        time.sleep(0.01)


def invoices(client: stripe.StripeClient, customer_id: str, reason: str = "subscription_cycle"):
    """The customer's invoices with that billing reason, oldest first."""
    found = client.v1.invoices.list({"customer": customer_id, "limit": 100}).data
    return [invoice for invoice in reversed(found) if invoice.billing_reason == reason]


def wait_until_serving(url: str, process: subprocess.Popen, seconds: float = 20) -> None:
    """Block until a sandbox started as a separate process answers, or fail with its output."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(f"{url}/_sandbox/stats", timeout=1)
            return
        except httpx.TransportError:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, f"the sandbox did not start within {seconds} s"
            time.sleep(0.05)
