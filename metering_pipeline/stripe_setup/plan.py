"""What ``metering stripe apply`` would change: the catalog file compared with the account.

Each object is found by a key that survives a second apply: a meter by ``event_name``, a product
by its ``metering_key`` metadata, a price by ``lookup_key``, a customer by the application's
customer id in its metadata, a subscription by its customer. What Stripe cannot change in place
(a meter's formula, a price's amounts, a customer's test clock) is a conflict with the way out
spelled out, never a silent re-creation that would leave two objects billing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from metering_pipeline.billing.catalog import Meter, Price
from metering_pipeline.stripe_setup.spec import (
    CatalogSpec,
    CustomerSpec,
    MeterSpec,
    PriceSpec,
    ProductSpec,
    SubscriptionSpec,
)

Kind = Literal["meter", "product", "price", "customer", "subscription"]
Spec = MeterSpec | ProductSpec | PriceSpec | CustomerSpec | SubscriptionSpec


@dataclass(frozen=True)
class ExistingProduct:
    id: str
    name: str


@dataclass(frozen=True)
class ExistingCustomer:
    id: str
    name: str | None
    email: str | None
    test_clock: str | None


@dataclass(frozen=True)
class ExistingSubscription:
    id: str
    items: Mapping[str, str]  # price id -> subscription item id


@dataclass(frozen=True)
class Existing:
    """What the account holds, under the keys the file uses."""

    meters: Mapping[str, Meter] = field(default_factory=dict)  # by event_name
    products: Mapping[str, ExistingProduct] = field(default_factory=dict)  # by metering_key
    prices: Mapping[str, Price] = field(default_factory=dict)  # by lookup_key
    customers: Mapping[str, ExistingCustomer] = field(default_factory=dict)  # by our id
    subscriptions: Mapping[str, ExistingSubscription] = field(default_factory=dict)  # by our id


@dataclass(frozen=True)
class Change:
    kind: Kind
    key: str
    action: Literal["create", "update"]
    spec: Spec
    existing_id: str | None = None
    details: tuple[str, ...] = ()

    def line(self) -> str:
        sign = "+" if self.action == "create" else "~"
        text = f"{sign} {self.kind} {self.key}"
        return f"{text}: {'; '.join(self.details)}" if self.details else text


@dataclass(frozen=True)
class CatalogPlan:
    changes: tuple[Change, ...]
    conflicts: tuple[str, ...]
    unchanged: int

    def lines(self) -> list[str]:
        lines = [change.line() for change in self.changes]
        lines += [f"! {conflict}" for conflict in self.conflicts]
        summary = (
            f"{sum(c.action == 'create' for c in self.changes)} to create, "
            f"{sum(c.action == 'update' for c in self.changes)} to update, "
            f"{self.unchanged} unchanged"
        )
        if self.conflicts:
            summary += f", {len(self.conflicts)} conflict(s): nothing will be applied"
        return [*lines, summary]


def plan_catalog(spec: CatalogSpec, existing: Existing) -> CatalogPlan:
    changes: list[Change] = []
    conflicts: list[str] = []
    unchanged = 0

    def record(change: Change | None) -> None:
        nonlocal unchanged
        if change is None:
            unchanged += 1
        else:
            changes.append(change)

    for meter in spec.meters:
        record(_meter(meter, existing.meters.get(meter.event_name), conflicts))
    for product in spec.products:
        record(_product(product, existing.products.get(product.key)))
    for price in spec.prices:
        record(_price(price, existing, conflicts))
    for customer in spec.customers:
        record(_customer(customer, existing.customers.get(customer.id), conflicts))
    prices = {price.lookup_key: price for price in spec.prices}
    for subscription in spec.subscriptions:
        record(_subscription(subscription, existing, prices))
    return CatalogPlan(tuple(changes), tuple(conflicts), unchanged)


def _meter(spec: MeterSpec, found: Meter | None, conflicts: list[str]) -> Change | None:
    if found is None:
        return Change(
            "meter", spec.event_name, "create", spec, details=(f"formula {spec.formula}",)
        )
    if found.formula != spec.formula:
        conflicts.append(
            f"meter {spec.event_name}: Stripe has formula {found.formula}, the file says "
            f"{spec.formula}; a meter's formula cannot change: create a meter with a new "
            "event_name and point the price at it"
        )
        return None
    details = []
    if found.display_name != spec.display_name:
        details.append(f"display_name {found.display_name!r} -> {spec.display_name!r}")
    if found.status != "active":
        details.append("reactivate")
    return (
        Change("meter", spec.event_name, "update", spec, found.id, tuple(details))
        if details
        else None
    )


def _product(spec: ProductSpec, found: ExistingProduct | None) -> Change | None:
    if found is None:
        return Change("product", spec.key, "create", spec, details=(repr(spec.name),))
    if found.name != spec.name:
        return Change(
            "product",
            spec.key,
            "update",
            spec,
            found.id,
            (f"name {found.name!r} -> {spec.name!r}",),
        )
    return None


def _price(spec: PriceSpec, existing: Existing, conflicts: list[str]) -> Change | None:
    found = existing.prices.get(spec.lookup_key)
    if found is None:
        return Change("price", spec.lookup_key, "create", spec, details=(_describe_price(spec),))
    meter = existing.meters.get(spec.meter)
    product = existing.products.get(spec.product)
    differences = [
        name
        for name, same in (
            ("currency", found.currency == spec.currency),
            (
                "interval",
                (found.interval, found.interval_count) == (spec.interval, spec.interval_count),
            ),
            ("meter", meter is not None and found.meter_id == meter.id),
            ("product", product is not None and found.product_id == product.id),
            ("amounts", _amounts(found) == _spec_amounts(spec)),
        )
        if not same
    ]
    if differences:
        conflicts.append(
            f"price {spec.lookup_key}: Stripe's differs from the file in {', '.join(differences)}; "
            "a price's terms cannot change: give the new terms a new lookup_key and move the "
            "subscriptions to it"
        )
    return None


def _customer(
    spec: CustomerSpec, found: ExistingCustomer | None, conflicts: list[str]
) -> Change | None:
    if found is None:
        details = [repr(spec.name)]
        if spec.test_clock is not None:
            details.append(f"on a test clock at {spec.test_clock:%Y-%m-%dT%H:%M:%SZ}")
        return Change("customer", spec.id, "create", spec, details=tuple(details))
    if (found.test_clock is None) != (spec.test_clock is None):
        conflicts.append(
            f"customer {spec.id}: a test clock is attached when a customer is created and "
            "cannot be added or removed; remove the customer in Stripe or change the file"
        )
        return None
    details = []
    if found.name != spec.name:
        details.append(f"name {found.name!r} -> {spec.name!r}")
    if found.email != spec.email:
        details.append(f"email {found.email!r} -> {spec.email!r}")
    return (
        Change("customer", spec.id, "update", spec, found.id, tuple(details)) if details else None
    )


def _subscription(
    spec: SubscriptionSpec, existing: Existing, prices: Mapping[str, PriceSpec]
) -> Change | None:
    found = existing.subscriptions.get(spec.customer)
    if found is None:
        return Change(
            "subscription", spec.key, "create", spec, details=(f"prices {', '.join(spec.prices)}",)
        )
    held = {
        lookup_key
        for lookup_key, price in existing.prices.items()
        if price.id in found.items and lookup_key in prices
    }
    unknown = [price_id for price_id in found.items if price_id not in _ids(existing)]
    wanted = set(spec.prices)
    details = [f"add {key}" for key in sorted(wanted - held)]
    details += [f"remove {key}" for key in sorted(held - wanted)]
    details += [f"remove item at price {price_id} (not in the file)" for price_id in unknown]
    if not details:
        return None
    return Change("subscription", spec.key, "update", spec, found.id, tuple(details))


def _ids(existing: Existing) -> set[str]:
    return {price.id for price in existing.prices.values()}


def _amounts(price: Price) -> tuple:
    if price.billing_scheme == "per_unit":
        return ("per_unit", _normal(price.unit_amount_decimal or Decimal(0)))
    return (
        price.tiers_mode,
        tuple(
            (tier.up_to, _normal(tier.unit_amount_decimal), _normal(tier.flat_amount_decimal))
            for tier in price.tiers
        ),
    )


def _spec_amounts(spec: PriceSpec) -> tuple:
    if spec.unit_amount_decimal is not None:
        return ("per_unit", _normal(spec.unit_amount_decimal))
    return (
        spec.tiers_mode,
        tuple(
            (tier.up_to, _normal(tier.unit_amount_decimal), _normal(Decimal(tier.flat_amount)))
            for tier in spec.tiers
        ),
    )


def _normal(value: Decimal) -> Decimal:
    return value.normalize() if value else Decimal(0)


def _describe_price(spec: PriceSpec) -> str:
    every = (
        f"every {spec.interval_count} {spec.interval}s"
        if spec.interval_count > 1
        else (f"per {spec.interval}")
    )
    terms = (
        f"{spec.unit_amount_decimal} minor units per unit"
        if spec.unit_amount_decimal is not None
        else f"{spec.tiers_mode}, {len(spec.tiers)} tiers"
    )
    return f"{spec.currency} on meter {spec.meter}, {terms}, {every}"
