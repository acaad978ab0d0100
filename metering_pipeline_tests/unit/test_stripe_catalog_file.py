"""The catalog file: strict parsing with errors that name the entry, and a plan that creates what
is missing, updates what Stripe can change, leaves the rest alone and refuses the impossible."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from metering_pipeline.billing.catalog import Meter, Price, Tier
from metering_pipeline.stripe_setup.plan import (
    Existing,
    ExistingCustomer,
    ExistingProduct,
    ExistingSubscription,
    plan_catalog,
)
from metering_pipeline.stripe_setup.spec import CatalogFileError, load_catalog_file, parse_catalog

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stripe_catalog.yaml"


def document() -> dict:
    return {
        "meters": [{"event_name": "api_calls", "formula": "sum"}],
        "products": [{"key": "api", "name": "API"}],
        "prices": [
            {
                "lookup_key": "api_std", "product": "api", "meter": "api_calls",
                "tiers_mode": "graduated",
                "tiers": [{"up_to": 1000, "unit_amount_decimal": "0.5"},
                          {"up_to": "inf", "unit_amount_decimal": "0.1", "flat_amount": 100}],
            }
        ],
        "customers": [{"id": "c1", "name": "Acme", "test_clock": "2026-11-01T00:00:00Z"}],
        "subscriptions": [{"customer": "c1", "prices": ["api_std"]}],
    }  # fmt: skip


def existing_like_the_file() -> Existing:
    return Existing(
        meters={"api_calls": Meter("mtr_1", "api_calls", "api_calls", "sum")},
        products={"api": ExistingProduct("prod_1", "API")},
        prices={
            "api_std": Price(
                "price_1", "prod_1", "usd", "tiered", tiers_mode="graduated",
                tiers=(Tier(1000, Decimal("0.50")), Tier(None, Decimal("0.1"), Decimal("100"))),
                meter_id="mtr_1",
            )
        },
        customers={"c1": ExistingCustomer("cus_1", "Acme", None, "clock_1")},
        subscriptions={"c1": ExistingSubscription("sub_1", {"price_1": "si_1"})},
    )  # fmt: skip


def test_the_example_file_parses():
    spec = load_catalog_file(EXAMPLE)
    assert {price.lookup_key for price in spec.prices} >= {"api_standard", "messages_volume"}
    assert all(
        customer.test_clock == datetime(2026, 11, 1, tzinfo=UTC) for customer in spec.customers
    )


def test_an_empty_account_gets_everything_created_in_order():
    plan = plan_catalog(parse_catalog(document()), Existing())
    assert [(c.kind, c.action) for c in plan.changes] == [
        ("meter", "create"), ("product", "create"), ("price", "create"),
        ("customer", "create"), ("subscription", "create"),
    ]  # fmt: skip
    assert plan.lines()[-1] == "5 to create, 0 to update, 0 unchanged"


def test_a_second_apply_changes_nothing():
    plan = plan_catalog(parse_catalog(document()), existing_like_the_file())
    assert plan.changes == () and plan.conflicts == ()
    assert plan.unchanged == 5


def test_what_stripe_can_change_is_an_update():
    changed = document()
    changed["customers"][0]["name"] = "Acme Inc"
    changed["prices"].append({**changed["prices"][0], "lookup_key": "api_new"})
    changed["subscriptions"][0]["prices"] = ["api_new"]
    plan = plan_catalog(parse_catalog(changed), existing_like_the_file())
    lines = plan.lines()
    assert "~ customer c1: name 'Acme' -> 'Acme Inc'" in lines
    assert "+ price api_new: usd on meter api_calls, graduated, 2 tiers, per month" in lines
    assert "~ subscription c1: add api_new; remove api_std" in lines
    assert not plan.conflicts


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda d: d["prices"][0]["tiers"][0].update(unit_amount_decimal="0.6"), "amounts"),
        (lambda d: d["meters"][0].update(formula="last"), "formula cannot change"),
        (lambda d: d["customers"][0].pop("test_clock"), "test clock"),
    ],
)
def test_what_stripe_cannot_change_is_a_conflict_with_the_way_out(edit, says):
    changed = document()
    edit(changed)
    plan = plan_catalog(parse_catalog(changed), existing_like_the_file())
    assert len(plan.conflicts) == 1 and says in plan.conflicts[0]
    assert plan.lines()[-1].endswith("nothing will be applied")


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda d: d["prices"][0].update(colour="red"), "prices[0]: unknown field colour"),
        (lambda d: d["prices"][0].update(meter="nope"), "names meter 'nope'"),
        (lambda d: d["subscriptions"][0].update(customer="c9"), "names customer 'c9'"),
        (lambda d: d["prices"][0]["tiers"].pop(), "last tier up_to: inf"),
        (lambda d: d["prices"][0].update(interval="fortnight"), "choose one of day, week"),
        (lambda d: d["customers"][0].update(test_clock="soon"), "ISO 8601"),
        (lambda d: d["customers"].append(dict(d["customers"][0])), "customer id c1 appears twice"),
    ],
)
def test_a_bad_file_names_the_entry_and_the_field(edit, says):
    broken = document()
    edit(broken)
    with pytest.raises(CatalogFileError) as error:
        parse_catalog(broken, "catalog.yaml")
    assert says in str(error.value)


def test_two_prices_on_one_meter_in_a_subscription_are_refused():
    doubled = document()
    doubled["prices"].append({**doubled["prices"][0], "lookup_key": "api_other"})
    doubled["subscriptions"][0]["prices"] = ["api_std", "api_other"]
    with pytest.raises(CatalogFileError, match="two prices on meter api_calls"):
        parse_catalog(doubled)
