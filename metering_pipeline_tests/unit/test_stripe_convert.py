"""Stripe objects into catalog values: fixtures with Stripe's own shapes, plus the metered cases
the fixtures do not show (tiers, meters on prices, subscription items, invoice line parents)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import stripe

from metering_pipeline.billing.catalog import Tier
from metering_pipeline.stripe_io import convert

FIXTURES = Path(__file__).parents[3] / "shared" / "stripe" / "fixtures3.json"


@pytest.fixture(scope="module")
def fixtures() -> dict:
    if not FIXTURES.exists():
        pytest.skip(
            f"Stripe's fixtures are expected at {FIXTURES} (the shared folder beside the repo)"
        )
    return json.loads(FIXTURES.read_text())["resources"]


def sdk(obj: dict) -> dict:
    """The object as the gateway hands it over: parsed by the SDK, then ``to_dict()``."""
    return stripe.StripeObject.construct_from(copy.deepcopy(obj), "sk_test_x").to_dict()


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_customer(fixtures: dict) -> None:
    raw = fixtures["customer"] | {
        "metadata": {"metering_customer_id": "acme"},
        "test_clock": "clock_1",
    }
    customer = convert.customer(sdk(raw))
    assert customer.id == raw["id"]
    assert customer.metadata == {"metering_customer_id": "acme"}
    assert customer.test_clock == "clock_1"


def test_meter(fixtures: dict) -> None:
    meter = convert.meter(sdk(fixtures["billing.meter"] | {"event_time_window": "hour"}))
    assert (meter.id, meter.event_name, meter.formula) == (
        "meter_123",
        "test-meter-event-name",
        "sum",
    )
    assert meter.event_time_window == "hour"
    assert meter.status == "active"


def test_per_unit_price_with_transform(fixtures: dict) -> None:
    price = convert.price(sdk(fixtures["price"]))
    assert price.billing_scheme == "per_unit"
    assert price.unit_amount_decimal == Decimal(2000)
    assert (price.transform_divide_by, price.transform_round) == (1592560163, "down")
    assert (price.interval, price.interval_count, price.usage_type) == ("month", 1, "licensed")


def test_metered_tiered_price(fixtures: dict) -> None:
    raw = fixtures["price"] | {
        "billing_scheme": "tiered",
        "tiers_mode": "graduated",
        "unit_amount": None,
        "unit_amount_decimal": None,
        "transform_quantity": None,
        "recurring": fixtures["price"]["recurring"] | {"usage_type": "metered", "meter": "mtr_1"},
        "tiers": [
            {"up_to": 1000, "unit_amount": 1, "unit_amount_decimal": "1", "flat_amount": None,
             "flat_amount_decimal": None},
            {"up_to": 10000, "unit_amount": None, "unit_amount_decimal": "0.8", "flat_amount": 500,
             "flat_amount_decimal": "500"},
            {"up_to": None, "unit_amount": None, "unit_amount_decimal": "0.5", "flat_amount": None,
             "flat_amount_decimal": None},
        ],
    }  # fmt: skip
    price = convert.price(sdk(raw))
    assert price.meter_id == "mtr_1"
    assert price.usage_type == "metered"
    assert price.unit_amount_decimal is None
    assert price.tiers == (
        Tier(1000, Decimal(1)),
        Tier(10000, Decimal("0.8"), Decimal(500)),
        Tier(None, Decimal("0.5")),
    )


def test_subscription_items_take_the_price_with_tiers(fixtures: dict) -> None:
    raw = fixtures["subscription"] | {"billing_mode": {"type": "flexible"}, "test_clock": "clock_1"}
    items = list(raw["items"]["data"])
    full_price = convert.price(sdk(fixtures["price"] | {"unit_amount_decimal": "0.5"}))
    subscription = convert.subscription(
        sdk(raw), [sdk(i) for i in items], {full_price.id: full_price}
    )
    assert subscription.billing_mode == "flexible"
    assert subscription.billing_cycle_anchor == at(raw["billing_cycle_anchor"])
    assert subscription.test_clock == "clock_1"
    (item,) = subscription.items
    assert item.id == items[0]["id"]
    assert item.customer_id == raw["customer"]
    assert item.price is full_price
    assert item.current_period_start == at(items[0]["current_period_start"])
    assert item.current_period_end == at(items[0]["current_period_end"])


def test_subscription_without_billing_mode_is_flexible(fixtures: dict) -> None:
    raw = {k: v for k, v in fixtures["subscription"].items() if k != "billing_mode"}
    assert convert.subscription(sdk(raw), [], {}).billing_mode == "flexible"


def test_invoice_with_a_metered_line(fixtures: dict) -> None:
    raw = fixtures["invoice"] | {
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": "sub_9"},
        }
    }
    line = raw["lines"]["data"][0] | {
        "amount": 8201,
        "quantity": 10001,
        "parent": {
            "type": "subscription_item_details",
            "subscription_item_details": {"subscription_item": "si_9", "invoice_item": None},
        },
        "pricing": {"type": "price_details", "price_details": {"price": "price_9", "product": "p"}},
    }
    invoice = convert.invoice(sdk(raw), [sdk(line)])
    assert invoice.subscription_id == "sub_9"
    assert (invoice.total, invoice.subtotal, invoice.status) == (1000, 1000, "draft")
    (converted,) = invoice.lines
    assert (converted.subscription_item_id, converted.price_id) == ("si_9", "price_9")
    assert converted.quantity == Decimal(10001)
    assert invoice.amount_for_item("si_9") == 8201
    assert invoice.amount_for_item("si_other") == 0


def test_invoice_item_line_from_the_fixture(fixtures: dict) -> None:
    raw = fixtures["invoice"]
    invoice = convert.invoice(sdk(raw), [sdk(line) for line in raw["lines"]["data"]])
    (line,) = invoice.lines
    assert line.invoice_item_id == "invoice_item"
    assert line.amount == 1000
    assert line.period_start == at(raw["lines"]["data"][0]["period"]["start"])


def test_event_is_plain_data(fixtures: dict) -> None:
    raw = fixtures["event"] | {"type": "customer.subscription.updated"}
    raw["data"] = raw["data"] | {"previous_attributes": {"items": {"data": []}}}
    event = convert.event(sdk(raw))
    assert event.type == "customer.subscription.updated"
    assert event.created == at(raw["created"])
    assert type(event.data_object) is dict
    assert event.data_object["id"] == raw["data"]["object"]["id"]
    assert event.previous_attributes == {"items": {"data": []}}
    json.dumps(event.data_object)  # storable as JSON
