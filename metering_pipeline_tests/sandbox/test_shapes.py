"""Every object the sandbox returns carries the top-level keys, with the same value types, as
Stripe's own fixture for that resource (`../shared/stripe/fixtures3.json`, read at test time)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import stripe

from metering_pipeline.stripe_sandbox import run_sandbox

from .support import (
    GRADUATED,
    advance,
    clocked_customer,
    meter,
    metered_price,
    subscribe,
    ts,
    usage,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "stripe" / "fixtures3.json"
KEY = "sk_test_shapes"
NOV_5 = ts(2026, 11, 5)


@pytest.fixture(scope="module")
def stripe_fixtures() -> dict:
    if not FIXTURES.exists():
        pytest.skip(f"Stripe's fixture file is not at {FIXTURES}; shapes cannot be compared")
    return json.loads(FIXTURES.read_text())["resources"]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    """One raw JSON body per implemented resource, made through the SDK, read over HTTP."""
    with run_sandbox(requests_per_second=1000) as sandbox:
        client = stripe.StripeClient(
            KEY, base_addresses={"api": sandbox.url, "meter_events": sandbox.url}
        )

        def raw(method: str, path: str, **kwargs) -> dict:
            response = httpx.request(
                method,
                f"{sandbox.url}{path}",
                headers={"Authorization": f"Bearer {KEY}"},
                **kwargs,
            )
            response.raise_for_status()
            return response.json()

        api_meter = meter(client)
        price = metered_price(
            client,
            api_meter.id,
            billing_scheme="tiered",
            tiers_mode="graduated",
            tiers=GRADUATED,
        )
        customer, clock = clocked_customer(client, NOV_5)
        subscription = subscribe(client, customer.id, price.id)
        item = subscription["items"].data[0]
        event = raw(
            "POST",
            "/v1/billing/meter_events",
            data={
                "event_name": "api_calls",
                "payload[stripe_customer_id]": customer.id,
                "payload[value]": "1200",
                "identifier": "shape-1",
                "timestamp": str(NOV_5),
            },
        )
        usage(client, customer.id, 1, NOV_5, "shape-2")
        adjustment = raw(
            "POST",
            "/v1/billing/meter_event_adjustments",
            data={
                "event_name": "api_calls",
                "type": "cancel",
                "cancel[identifier]": "shape-2",
            },
        )
        advance(client, clock.id, ts(2026, 12, 5, 2))
        invoice = client.v1.invoices.list({"customer": customer.id}).data[0]
        invoice_item = client.v1.invoice_items.create(
            {"customer": customer.id, "amount": 100, "currency": "usd"}
        )
        credit_note = raw("POST", "/v1/credit_notes", data={"invoice": invoice.id, "amount": "50"})
        summaries = raw(
            "GET",
            f"/v1/billing/meters/{api_meter.id}/event_summaries",
            params={"customer": customer.id, "start_time": NOV_5, "end_time": NOV_5 + 3600},
        )
        other_clock = client.v1.test_helpers.test_clocks.create({"frozen_time": NOV_5})
        product = client.v1.products.create({"name": "to delete"})
        yield {
            "billing.meter": raw("GET", f"/v1/billing/meters/{api_meter.id}"),
            "billing.meter_event": event,
            "billing.meter_event_adjustment": adjustment,
            "billing.meter_event_summary": summaries["data"][0],
            "product": raw("GET", f"/v1/products/{price.product}"),
            "price": raw("GET", f"/v1/prices/{price.id}"),
            "customer": raw("GET", f"/v1/customers/{customer.id}"),
            "subscription": raw("GET", f"/v1/subscriptions/{subscription.id}"),
            "subscription_item": raw("GET", f"/v1/subscription_items/{item.id}"),
            "invoice": raw("GET", f"/v1/invoices/{invoice.id}"),
            "line_item": raw("GET", f"/v1/invoices/{invoice.id}/lines")["data"][0],
            "invoiceitem": raw("GET", f"/v1/invoiceitems/{invoice_item.id}"),
            "credit_note": credit_note,
            "credit_note_line_item": raw(
                "POST",
                "/v1/credit_notes",
                data={
                    "invoice": invoice.id,
                    "lines[0][type]": "custom_line_item",
                    "lines[0][unit_amount]": "10",
                    "lines[0][description]": "goodwill",
                },
            )["lines"]["data"][0],
            "test_helpers.test_clock": raw("GET", f"/v1/test_helpers/test_clocks/{clock.id}"),
            "event": raw("GET", "/v1/events")["data"][0],
            "deleted_test_helpers.test_clock": raw(
                "DELETE", f"/v1/test_helpers/test_clocks/{other_clock.id}"
            ),
            "deleted_product": raw("DELETE", f"/v1/products/{product.id}"),
            "deleted_invoiceitem": raw("DELETE", f"/v1/invoiceitems/{invoice_item.id}"),
        }


def _type(value) -> str:
    return type(value).__name__


def mismatches(fixture: dict, ours: dict) -> list[str]:
    problems = [f"missing key {key!r}" for key in sorted(fixture.keys() - ours.keys())]
    problems += [f"extra key {key!r}" for key in sorted(ours.keys() - fixture.keys())]
    for key in sorted(fixture.keys() & ours.keys()):
        expected, actual = fixture[key], ours[key]
        if expected is None or actual is None:  # nullable in Stripe's schema
            continue
        if _type(expected) != _type(actual):
            problems.append(f"{key!r}: Stripe has {_type(expected)}, sandbox has {_type(actual)}")
    return problems


RESOURCES = [
    "billing.meter",
    "billing.meter_event",
    "billing.meter_event_adjustment",
    "billing.meter_event_summary",
    "product",
    "price",
    "customer",
    "subscription",
    "subscription_item",
    "invoice",
    "line_item",
    "invoiceitem",
    "credit_note",
    "credit_note_line_item",
    "test_helpers.test_clock",
    "event",
    "deleted_test_helpers.test_clock",
    "deleted_product",
    "deleted_invoiceitem",
]


@pytest.mark.parametrize("resource", RESOURCES)
def test_object_shape_matches_stripe(stripe_fixtures, objects, resource):
    ours = objects[resource]
    assert ours["object"] == stripe_fixtures[resource]["object"]
    assert mismatches(stripe_fixtures[resource], ours) == []


def test_the_check_notices_a_wrong_shape(stripe_fixtures):
    broken = dict(stripe_fixtures["customer"], balance="0")
    broken.pop("email")
    assert mismatches(stripe_fixtures["customer"], broken) == [
        "missing key 'email'",
        "'balance': Stripe has int, sandbox has str",
    ]
