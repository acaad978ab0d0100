"""Tier maths at the edges, checked against amounts worked out by hand from Stripe's rules."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering_pipeline.billing.catalog import Price, Tier
from metering_pipeline.billing.tiers import (
    PricingError,
    amount_minor_units,
    billable_quantity,
    incremental_amount,
)

D = Decimal

# First 1000 units at 1 cent, next 9000 at 0.8 cent, above 10000 at 0.5 cent.
GRADUATED = Price(
    id="price_graduated",
    product_id="prod_1",
    currency="usd",
    billing_scheme="tiered",
    tiers_mode="graduated",
    tiers=(Tier(1000, D("1")), Tier(10000, D("0.8")), Tier(None, D("0.5"))),
)
VOLUME = Price(
    id="price_volume",
    product_id="prod_1",
    currency="usd",
    billing_scheme="tiered",
    tiers_mode="volume",
    tiers=(Tier(1000, D("1")), Tier(10000, D("0.8")), Tier(None, D("0.5"))),
)
# A base fee of $20 covering the first 1000 units, then a flat $5 plus 2 cents a unit.
GRADUATED_FLAT = Price(
    id="price_graduated_flat",
    product_id="prod_1",
    currency="usd",
    billing_scheme="tiered",
    tiers_mode="graduated",
    tiers=(Tier(1000, D(0), D(2000)), Tier(None, D(2), D(500))),
)
VOLUME_FLAT = Price(
    id="price_volume_flat",
    product_id="prod_1",
    currency="usd",
    billing_scheme="tiered",
    tiers_mode="volume",
    tiers=(Tier(1000, D(0), D(2000)), Tier(None, D("1.5"), D(500))),
)
SUB_CENT = Price(
    id="price_sub_cent",
    product_id="prod_1",
    currency="usd",
    billing_scheme="per_unit",
    unit_amount_decimal=D("0.05"),
)
PER_UNIT = Price(
    id="price_per_unit",
    product_id="prod_1",
    currency="usd",
    billing_scheme="per_unit",
    unit_amount_decimal=D("25"),
)
PER_THOUSAND_UP = Price(
    id="price_per_1000_up",
    product_id="prod_1",
    currency="usd",
    billing_scheme="per_unit",
    unit_amount_decimal=D("300"),
    transform_divide_by=1000,
    transform_round="up",
)
PER_THOUSAND_DOWN = Price(**{**PER_THOUSAND_UP.__dict__, "id": "p_down", "transform_round": "down"})


@pytest.mark.parametrize(
    ("price", "quantity", "cents"),
    [
        # graduated: 999 -> 999c; 1000 -> 1000c; 1001 -> 1000 + 0.8 = 1000.8 -> 1001
        (GRADUATED, 0, 0),
        (GRADUATED, 1, 1),
        (GRADUATED, 999, 999),
        (GRADUATED, 1000, 1000),
        (GRADUATED, 1001, 1001),
        (GRADUATED, 10000, 1000 + 7200),
        (GRADUATED, 10001, 8201),  # 8200.5 rounds half up
        (GRADUATED, 10002, 8201),
        (GRADUATED, 20000, 8200 + 5000),
        # volume: the whole quantity at the tier it lands in
        (VOLUME, 999, 999),
        (VOLUME, 1000, 1000),
        (VOLUME, 1001, 801),  # 800.8
        (VOLUME, 10000, 8000),
        (VOLUME, 10001, 5001),  # 5000.5 rounds half up
        # flat amounts: graduated adds the flat fee of every tier reached, and the first at zero
        (GRADUATED_FLAT, 0, 2000),
        (GRADUATED_FLAT, 1000, 2000),
        (GRADUATED_FLAT, 1001, 2000 + 500 + 2),
        (GRADUATED_FLAT, 1500, 2000 + 500 + 1000),
        (VOLUME_FLAT, 0, 2000),
        (VOLUME_FLAT, 1000, 2000),
        (VOLUME_FLAT, 1001, 500 + 1502),  # 1501.5 rounds half up
        # per unit, including sub-cent amounts rounded once per line
        (SUB_CENT, 29, 1),  # 1.45
        (SUB_CENT, 30, 2),  # 1.5, Stripe's own example
        (SUB_CENT, 31, 2),  # 1.55
        (SUB_CENT, 9, 0),  # 0.45
        (PER_UNIT, 4, 100),
        # transform_quantity before pricing
        (PER_THOUSAND_UP, 1, 300),
        (PER_THOUSAND_UP, 1000, 300),
        (PER_THOUSAND_UP, 1001, 600),
        (PER_THOUSAND_DOWN, 999, 0),
        (PER_THOUSAND_DOWN, 1999, 300),
        (PER_THOUSAND_DOWN, 2000, 600),
        # negative period totals bill as zero (a flat base fee still applies)
        (GRADUATED, -5, 0),
        (PER_UNIT, -4, 0),
        (GRADUATED_FLAT, -1, 2000),
        (PER_THOUSAND_UP, -1, 0),
    ],
)
def test_amount_matches_stripe(price: Price, quantity: int, cents: int) -> None:
    assert amount_minor_units(price, D(quantity)) == D(cents)


def test_fractional_quantity_spans_a_tier_edge() -> None:
    # 1000.5 units: 1000 at 1c and half a unit at 0.8c = 1000.4 -> 1000
    assert amount_minor_units(GRADUATED, D("1000.5")) == D(1000)


def test_transform_rounds_to_whole_units_before_pricing() -> None:
    assert billable_quantity(PER_THOUSAND_UP, D(1001)) == D(2)
    assert billable_quantity(PER_THOUSAND_DOWN, D(1001)) == D(1)
    assert billable_quantity(GRADUATED, D(-3)) == D(0)


@pytest.mark.parametrize(
    ("billed", "total", "owed"),
    [
        (0, 1000, 1000),
        (1000, 1001, 1),  # the unit past the edge costs the second tier's 0.8c, rounded
        (999, 10001, 8201 - 999),
        (10000, 10000, 0),
        (
            10001,
            10000,
            -1,
        ),  # 8200 - 8201 (8200.5 rounded up): Stripe billed one cent more than we measured
        (-20, 500, 500),  # a negative billed total was billed as zero
    ],
)
def test_incremental_amount_prices_a_gap_on_the_same_tiers(
    billed: int, total: int, owed: int
) -> None:
    got = incremental_amount(GRADUATED, D(billed), D(total))
    assert got == D(owed)
    assert got == amount_minor_units(GRADUATED, D(total)) - amount_minor_units(GRADUATED, D(billed))


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (Price("price_x", "prod", "usd", "per_unit"), "no unit_amount_decimal"),
        (
            Price(
                "price_y", "prod", "usd", "tiered", tiers_mode="graduated", tiers=(Tier(10, D(1)),)
            ),
            "up_to=inf",
        ),
        (Price("price_z", "prod", "usd", "tiered", tiers_mode="graduated"), "up_to=inf"),
        (
            Price("price_w", "prod", "usd", "tiered", tiers=(Tier(None, D(1)),)),
            "tiers_mode None",
        ),
    ],
)
def test_unpriceable_prices_name_the_price(price: Price, message: str) -> None:
    with pytest.raises(PricingError, match=message) as error:
        amount_minor_units(price, D(5))
    assert price.id in str(error.value)
