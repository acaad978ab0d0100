"""Tier maths, driven through the SDK: usage sent as meter events, priced by an invoice preview.

Expected amounts are worked out by hand in cents (Stripe computes in decimal and rounds the line
half up to the cent).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from .support import GRADUATED, clocked_customer, meter, metered_price, subscribe, ts, usage

START = ts(2026, 11, 5)

GRADUATED_CASES = [
    (999, 999),  # 999 × 1¢
    (1000, 1000),  # the first tier's edge
    (1001, 1001),  # 1000 × 1¢ + 1 × 0.8¢ = 1000.8 → 1001
    (10000, 8200),  # 1000 + 9000 × 0.8
    (10001, 8201),  # 8200 + 0.5 = 8200.5 → 8201 (half up)
    (0, 0),
]

VOLUME = [
    {"up_to": 1000, "unit_amount_decimal": "1"},
    {"up_to": 10000, "unit_amount_decimal": "0.8"},
    {"up_to": "inf", "unit_amount_decimal": "0.5"},
]
VOLUME_CASES = [
    (999, 999),
    (1000, 1000),
    (1001, 801),  # every unit at the second tier: 1001 × 0.8 = 800.8 → 801
    (10000, 8000),
    (10001, 5001),  # 10001 × 0.5 = 5000.5 → 5001
]


def _preview_amount(client, price_id: str, quantity: int) -> int:
    customer, _ = clocked_customer(client, START)
    subscription = subscribe(client, customer.id, price_id)
    if quantity:
        usage(client, customer.id, quantity, START)
    preview = client.v1.invoices.create_preview({"subscription": subscription.id})
    (line,) = preview.lines.data
    assert line.quantity == quantity
    assert line.amount == preview.amount_due
    return preview.amount_due


@pytest.fixture
def api_meter(stripe_client):
    return meter(stripe_client)


@pytest.mark.parametrize(("quantity", "cents"), GRADUATED_CASES)
def test_graduated_tiers_at_their_edges(stripe_client, api_meter, quantity, cents):
    price = metered_price(
        stripe_client,
        api_meter.id,
        billing_scheme="tiered",
        tiers_mode="graduated",
        tiers=GRADUATED,
    )
    assert _preview_amount(stripe_client, price.id, quantity) == cents


@pytest.mark.parametrize(("quantity", "cents"), VOLUME_CASES)
def test_volume_tiers_price_every_unit_at_the_reached_tier(
    stripe_client, api_meter, quantity, cents
):
    price = metered_price(
        stripe_client, api_meter.id, billing_scheme="tiered", tiers_mode="volume", tiers=VOLUME
    )
    assert _preview_amount(stripe_client, price.id, quantity) == cents


@pytest.mark.parametrize(
    ("quantity", "cents"),
    [(1, 0), (4, 1), (5, 1), (1000, 125), (1234567, 154321)],  # × 0.125¢, half up
)
def test_unit_amount_decimal_below_a_cent(stripe_client, api_meter, quantity, cents):
    price = metered_price(stripe_client, api_meter.id, unit_amount_decimal="0.125")
    assert _preview_amount(stripe_client, price.id, quantity) == cents


@pytest.mark.parametrize(
    ("mode", "quantity", "cents"),
    [
        ("graduated", 0, 500),  # the first tier's flat fee is due even with no usage
        ("graduated", 100, 500),
        ("graduated", 101, 500 + 2000 + 10),  # reaches tier 2: its flat fee plus 1 unit
        ("graduated", 150, 500 + 2000 + 500),
        ("volume", 100, 500),
        ("volume", 150, 2000 + 1500),  # all 150 units at tier 2, plus tier 2's flat fee
    ],
)
def test_flat_amounts(stripe_client, api_meter, mode, quantity, cents):
    tiers = [
        {"up_to": 100, "flat_amount": 500},
        {"up_to": "inf", "flat_amount": 2000, "unit_amount": 10},
    ]
    price = metered_price(
        stripe_client, api_meter.id, billing_scheme="tiered", tiers_mode=mode, tiers=tiers
    )
    assert _preview_amount(stripe_client, price.id, quantity) == cents


@pytest.mark.parametrize(
    ("rounding", "quantity", "cents"),
    [("up", 1001, 200), ("down", 1001, 100), ("up", 1000, 100), ("down", 999, 0)],
)
def test_transform_quantity_divides_then_rounds(
    stripe_client, api_meter, rounding, quantity, cents
):
    price = metered_price(
        stripe_client,
        api_meter.id,
        unit_amount=100,
        transform_quantity={"divide_by": 1000, "round": rounding},
    )
    assert price.transform_quantity.divide_by == 1000
    assert _preview_amount(stripe_client, price.id, quantity) == cents


def test_tiers_are_returned_only_when_expanded(stripe_client, api_meter):
    price = metered_price(
        stripe_client,
        api_meter.id,
        billing_scheme="tiered",
        tiers_mode="graduated",
        tiers=GRADUATED,
    )
    assert "tiers" not in stripe_client.v1.prices.retrieve(price.id)
    expanded = stripe_client.v1.prices.retrieve(price.id, {"expand": ["tiers"]})
    assert [tier.up_to for tier in expanded.tiers] == [1000, 10000, None]
    assert expanded.tiers[1].unit_amount_decimal == Decimal("0.8")
    assert expanded.tiers[1].unit_amount is None  # not a whole number of cents
    listed = stripe_client.v1.prices.list({"expand": ["data.tiers"]}).data[0]
    assert listed.tiers[0].unit_amount == 1


@pytest.mark.parametrize(
    ("params", "param"),
    [
        (
            {
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "tiers": [{"up_to": 10, "unit_amount": 1}],
            },
            "tiers[0][up_to]",
        ),
        (
            {
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "tiers": [{"up_to": "inf", "unit_amount": 1}, {"up_to": 5, "unit_amount": 1}],
            },
            "tiers[0][up_to]",
        ),
        ({"unit_amount": 5, "unit_amount_decimal": "5"}, "unit_amount_decimal"),
        ({"unit_amount_decimal": "0.0000000000001"}, "unit_amount_decimal"),
        (
            {
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "tiers": [{"up_to": "inf", "unit_amount": 1, "unit_amount_decimal": "1"}],
            },
            "tiers[0][unit_amount_decimal]",
        ),
        (
            {
                "billing_scheme": "tiered",
                "tiers_mode": "volume",
                "tiers": [{"up_to": "inf", "unit_amount": 1}],
                "transform_quantity": {"divide_by": 10, "round": "up"},
            },
            "transform_quantity",
        ),
    ],
)
def test_invalid_prices_are_rejected_with_the_param(stripe_client, api_meter, params, param):
    import stripe

    with pytest.raises(stripe.InvalidRequestError) as caught:
        metered_price(stripe_client, api_meter.id, **params)
    assert caught.value.param == param
    assert caught.value.http_status == 400


def test_metered_price_needs_a_meter(stripe_client):
    import stripe

    product = stripe_client.v1.products.create({"name": "x"})
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.prices.create(
            {
                "currency": "usd",
                "product": product.id,
                "unit_amount": 1,
                "recurring": {"interval": "month", "usage_type": "metered"},
            }
        )
    assert caught.value.param == "recurring[meter]"
