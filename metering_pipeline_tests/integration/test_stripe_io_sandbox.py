"""The gateway against the Stripe sandbox through the real SDK: catalog reads with pagination,
meter events exactly once under injected faults, summaries, previews, invoices and events."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import stripe

from metering_pipeline.billing.catalog import Tier
from metering_pipeline.billing.identifiers import idempotency_key, meter_event_identifier
from metering_pipeline.billing.tiers import amount_minor_units
from metering_pipeline.stripe_io import StripeGateway, StripeRejectedError
from metering_pipeline.stripe_io import gateway as gateway_module
from metering_pipeline.stripe_sandbox import run_sandbox

KEY = "sk_test_gateway_tests"
GRADUATED_TIERS = [
    {"up_to": 1000, "unit_amount_decimal": "1"},
    {"up_to": 10000, "unit_amount_decimal": "0.8"},
    {"up_to": "inf", "unit_amount_decimal": "0.5"},
]


@pytest.fixture
def gateway(stripe_sandbox) -> StripeGateway:
    return StripeGateway(KEY, stripe_sandbox.url, stripe_sandbox.url, 1000, 8, backoff_base=0.01)


@pytest.fixture
def billing(stripe_client: stripe.StripeClient) -> dict:
    """A metered product on a graduated price, one customer subscribed to it."""
    meter = stripe_client.v1.billing.meters.create(
        params={
            "display_name": "API calls",
            "event_name": "api_calls",
            "default_aggregation": {"formula": "sum"},
        }
    )
    product = stripe_client.v1.products.create(params={"name": "API"})
    price = stripe_client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": GRADUATED_TIERS,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    customer = stripe_client.v1.customers.create(
        params={"email": "ops@acme.test", "metadata": {"metering_customer_id": "acme"}}
    )
    subscription = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price.id}]}
    )
    return {
        "meter": meter,
        "product": product,
        "price": price,
        "customer": customer,
        "subscription": subscription,
        "item": subscription["items"].data[0],
    }


def advance(stripe_client: stripe.StripeClient, clock: str, to: datetime) -> None:
    stripe_client.v1.test_helpers.test_clocks.advance(
        clock, params={"frozen_time": int(to.timestamp())}
    )
    deadline = time.monotonic() + 20
    while stripe_client.v1.test_helpers.test_clocks.retrieve(clock).status != "ready":
        assert time.monotonic() < deadline, "the test clock did not finish advancing"
        time.sleep(0.05)


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def test_fetch_catalog_reads_every_page(
    stripe_client: stripe.StripeClient, gateway: StripeGateway, billing: dict, monkeypatch
) -> None:
    monkeypatch.setattr(gateway_module, "PAGE_SIZE", 2)
    for n in range(4):
        stripe_client.v1.customers.create(
            params={"metadata": {"metering_customer_id": f"extra-{n}"}}
        )
    per_unit = stripe_client.v1.prices.create(
        params={
            "product": billing["product"].id,
            "currency": "usd",
            "unit_amount_decimal": "0.05",
            "recurring": {"interval": "week", "interval_count": 2, "usage_type": "metered",
                          "meter": billing["meter"].id},
        }
    )  # fmt: skip
    classic = stripe_client.v1.subscriptions.create(
        params={
            "customer": billing["customer"].id,
            "items": [{"price": per_unit.id}],
            "billing_mode": {"type": "classic"},
        }
    )

    catalog = gateway.fetch_catalog()

    assert len(catalog.customers) == 5
    acme = next(c for c in catalog.customers if c.id == billing["customer"].id)
    assert acme.metadata == {"metering_customer_id": "acme"}
    assert acme.email == "ops@acme.test"
    (meter,) = catalog.meters
    assert (meter.id, meter.event_name, meter.formula) == (billing["meter"].id, "api_calls", "sum")
    prices = {price.id: price for price in catalog.prices}
    graduated = prices[billing["price"].id]
    assert graduated.tiers == (
        Tier(1000, Decimal(1)),
        Tier(10000, Decimal("0.8")),
        Tier(None, Decimal("0.5")),
    )
    assert graduated.meter_id == billing["meter"].id
    assert prices[per_unit.id].unit_amount_decimal == Decimal("0.05")
    assert (prices[per_unit.id].interval, prices[per_unit.id].interval_count) == ("week", 2)
    subscriptions = {s.id: s for s in catalog.subscriptions}
    assert subscriptions[billing["subscription"].id].billing_mode == "flexible"
    assert subscriptions[classic.id].billing_mode == "classic"
    (item,) = subscriptions[billing["subscription"].id].items
    assert item.id == billing["item"].id
    assert item.price.tiers == graduated.tiers  # the item's price carries its tiers
    assert item.current_period_start == datetime.fromtimestamp(
        billing["item"]["current_period_start"], UTC
    )
    assert gateway.stats.api_calls >= 6  # several pages of customers alone


def test_meter_event_is_counted_once_and_priced_like_stripe(
    gateway: StripeGateway, billing: dict
) -> None:
    customer, item = billing["customer"].id, billing["item"]
    start = datetime.fromtimestamp(item["current_period_start"], UTC)
    now = datetime.now(UTC)
    identifier = meter_event_identifier(item.id, customer, "api_calls", start, 1)

    assert (
        gateway.send_meter_event("api_calls", customer, Decimal(10001), now, identifier) == "sent"
    )
    assert (
        gateway.send_meter_event("api_calls", customer, Decimal(10001), now, identifier)
        == "already_delivered"
    )

    window = (minute(now) - timedelta(hours=1), minute(now) + timedelta(hours=1))
    assert gateway.meter_event_summaries(billing["meter"].id, customer, *window) == Decimal(10001)
    preview = gateway.invoice_preview(customer, billing["subscription"].id)
    price = next(p for p in gateway.fetch_catalog().prices if p.id == billing["price"].id)
    assert preview.amount_for_item(item.id) == 8201
    assert amount_minor_units(price, Decimal(10001)) == 8201


def test_faults_do_not_change_what_stripe_counts(
    stripe_sandbox, gateway: StripeGateway, billing: dict
) -> None:
    stripe_sandbox.control.set_faults(
        [
            {"path_prefix": "/v1/billing/meter_events", "method": "POST", "probability": 0.2,
             "action": "status", "status": 429, "should_retry": True},
            {"path_prefix": "/v1/billing/meter_events", "method": "POST", "probability": 0.05,
             "action": "status", "status": 500},
            {"path_prefix": "/v1/billing/meter_events", "method": "POST", "probability": 0.05,
             "action": "drop_response"},
        ],
        seed=7,
    )  # fmt: skip
    customer, item = billing["customer"].id, billing["item"]
    start = datetime.fromtimestamp(item["current_period_start"], UTC)
    now = datetime.now(UTC)
    outcomes = [
        gateway.send_meter_event(
            "api_calls",
            customer,
            Decimal(n),
            now,
            meter_event_identifier(item.id, customer, "api_calls", start, n),
        )
        for n in range(1, 61)
    ]
    stripe_sandbox.control.clear_faults()

    window = (minute(now) - timedelta(hours=1), minute(now) + timedelta(hours=1))
    assert gateway.meter_event_summaries(billing["meter"].id, customer, *window) == Decimal(1830)
    assert gateway.stats.failures == 0
    assert set(outcomes) <= {"sent", "already_delivered"}
    # every injected fault, and only those, cost one retry; drops really happened
    injected = stripe_sandbox.control.stats()["faults_injected"]
    assert injected.get("drop_response", 0) > 0, injected
    assert gateway.stats.retries == sum(injected.values()) > 0
    assert 0 < outcomes.count("already_delivered") <= injected["drop_response"]


def test_a_rejected_meter_event_names_its_customer(gateway: StripeGateway, billing: dict) -> None:
    too_old = datetime.now(UTC) - timedelta(days=40)  # Stripe answers 400 at once
    with pytest.raises(StripeRejectedError) as raised:
        gateway.send_meter_event("api_calls", "cus_missing", Decimal(1), too_old, "mp_x_1")
    assert "cus_missing" in str(raised.value) and "35 days" in str(raised.value)
    assert KEY not in str(raised.value)
    # an unknown customer is accepted (200) and reported afterwards, as Stripe does
    now = datetime.now(UTC)
    assert gateway.send_meter_event("api_calls", "cus_missing", Decimal(1), now, "mp_x_2") == "sent"
    [report] = [
        r
        for r in gateway.list_meter_error_reports(None)
        if "mp_x_2" in {e.identifier for e in r.errors}
    ]
    assert [(e.code, e.identifier) for e in report.errors] == [
        ("meter_event_customer_not_found", "mp_x_2")
    ]
    assert gateway.meter_error_report(report.id) == report


def test_list_events_follows_a_cursor_oldest_first(
    stripe_client: stripe.StripeClient, gateway: StripeGateway, billing: dict, monkeypatch
) -> None:
    monkeypatch.setattr(gateway_module, "PAGE_SIZE", 2)
    types = ["customer.subscription.created", "customer.subscription.updated"]
    for n in range(3):
        stripe_client.v1.subscriptions.create(
            params={"customer": billing["customer"].id, "items": [{"price": billing["price"].id}],
                    "metadata": {"n": str(n)}}
        )  # fmt: skip
    first = gateway.list_events(None, types)
    assert [e.type for e in first] == ["customer.subscription.created"] * 4
    assert first[0].data_object["id"] == billing["subscription"].id
    assert [e.created for e in first] == sorted(e.created for e in first)

    stripe_client.v1.subscriptions.update(
        billing["subscription"].id, params={"metadata": {"seen": "1"}}
    )
    stripe_client.v1.subscriptions.update(
        billing["subscription"].id, params={"metadata": {"seen": "2"}}
    )
    stripe_client.v1.subscriptions.update(
        billing["subscription"].id, params={"metadata": {"seen": "3"}}
    )
    later = gateway.list_events(first[-1].id, types)
    assert [e.data_object["metadata"]["seen"] for e in later] == ["1", "2", "3"]
    assert gateway.list_events(later[-1].id, types) == []


def test_invoice_item_is_created_once_per_idempotency_key(
    stripe_client: stripe.StripeClient, gateway: StripeGateway, billing: dict
) -> None:
    customer = billing["customer"].id
    key = idempotency_key("late_usage", customer, billing["item"].id, 1234)
    arguments = {
        "customer": customer,
        "amount": 1234,
        "currency": "usd",
        "description": "Usage reported after the plan change",
        "idempotency_key": key,
        "subscription": billing["subscription"].id,
    }
    first = gateway.create_invoice_item(**arguments)
    assert gateway.create_invoice_item(**arguments) == first
    items = stripe_client.v1.invoice_items.list(params={"customer": customer}).data
    assert [i.id for i in items] == [first]
    assert items[0].amount == 1234


def test_finalized_invoice_is_read_with_its_lines(
    stripe_client: stripe.StripeClient, stripe_sandbox
) -> None:
    start = datetime(2026, 11, 5, tzinfo=UTC)
    clock = stripe_client.v1.test_helpers.test_clocks.create(
        params={"frozen_time": int(start.timestamp())}
    )
    meter = stripe_client.v1.billing.meters.create(
        params={"display_name": "Seats", "event_name": "seats",
                "default_aggregation": {"formula": "sum"}}
    )  # fmt: skip
    product = stripe_client.v1.products.create(params={"name": "Seats"})
    price = stripe_client.v1.prices.create(
        params={"product": product.id, "currency": "usd", "billing_scheme": "tiered",
                "tiers_mode": "volume", "tiers": GRADUATED_TIERS,
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}}
    )  # fmt: skip
    customer = stripe_client.v1.customers.create(params={"test_clock": clock.id})
    subscription = stripe_client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price.id}]}
    )
    gateway = StripeGateway(KEY, stripe_sandbox.url, stripe_sandbox.url, 1000, 3)
    advance(stripe_client, clock.id, start + timedelta(days=3))
    gateway.send_meter_event(
        "seats", customer.id, Decimal(1001), start + timedelta(days=2), "mp_seats_1"
    )
    advance(stripe_client, clock.id, start + timedelta(days=31))

    invoices = gateway.list_invoices(subscription=subscription.id)
    usage = next(i for i in invoices if i.period_end == datetime(2026, 12, 5, tzinfo=UTC))
    assert usage.customer_id == customer.id
    assert usage.subscription_id == subscription.id
    assert usage.status in ("draft", "open", "paid")
    assert usage.amount_for_item(subscription["items"].data[0].id) == 801  # volume: 1001 x 0.8
    assert usage.total == 801


@pytest.mark.parametrize(
    ("client_rate", "throttled"),
    [(15, False), (500, True)],
    ids=["under-the-budget", "over-the-budget"],
)
def test_client_rate_limit_keeps_us_under_the_account_budget(
    client_rate: float, throttled: bool
) -> None:
    """Under Stripe's budget no request is refused; over it, retries absorb the 429s."""
    with run_sandbox(requests_per_second=20) as sandbox:
        gateway = StripeGateway(KEY, sandbox.url, None, client_rate, 20, backoff_base=0.05)
        for _ in range(12):
            assert gateway.fetch_catalog().customers == ()  # 4 list calls each
        refused = sandbox.control.stats()["by_status"].get("429", 0)
    assert (refused > 0) is throttled
    assert gateway.stats.retries == refused
    assert gateway.stats.failures == 0
