"""The Stripe catalog file: meters, products, prices, customers and subscriptions, as code.

A YAML file states what the Stripe account must hold for the pipeline to bill; ``metering stripe
apply FILE`` makes it so (see ``plan.py`` for the comparison and ``stripe_io.catalog_file`` for
the calls). Parsing is strict: an unknown key or a malformed value is a ``CatalogFileError``
naming the file, the entry and the field, so a typo never creates a half-right price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml

Formula = Literal["sum", "count", "last"]
Interval = Literal["day", "week", "month", "year"]
TiersMode = Literal["graduated", "volume"]
FORMULAS: tuple[Formula, ...] = ("sum", "count", "last")
INTERVALS: tuple[Interval, ...] = ("day", "week", "month", "year")
TIERS_MODES: tuple[TiersMode, ...] = ("graduated", "volume")


class CatalogFileError(ValueError):
    """The catalog file is not valid; the message names the entry and the field."""


@dataclass(frozen=True)
class MeterSpec:
    event_name: str
    display_name: str
    formula: Formula


@dataclass(frozen=True)
class ProductSpec:
    key: str  # kept in the product's metadata, so a second apply finds it
    name: str


@dataclass(frozen=True)
class TierSpec:
    """One tier in minor units (cents for USD): ``up_to=None`` is Stripe's ``inf``."""

    up_to: int | None
    unit_amount_decimal: Decimal
    flat_amount: int = 0


@dataclass(frozen=True)
class PriceSpec:
    """A metered price. Exactly one of ``unit_amount_decimal`` (per unit) and ``tiers``."""

    lookup_key: str
    product: str
    meter: str
    currency: str
    interval: Interval
    interval_count: int
    unit_amount_decimal: Decimal | None
    tiers_mode: TiersMode | None
    tiers: tuple[TierSpec, ...]


@dataclass(frozen=True)
class CustomerSpec:
    id: str  # the application's customer key, written to the customer's metadata
    name: str
    email: str | None
    test_clock: datetime | None  # a test clock frozen there, created with the customer


@dataclass(frozen=True)
class SubscriptionSpec:
    customer: str
    prices: tuple[str, ...]  # lookup keys

    @property
    def key(self) -> str:
        return self.customer


@dataclass(frozen=True)
class CatalogSpec:
    meters: tuple[MeterSpec, ...]
    products: tuple[ProductSpec, ...]
    prices: tuple[PriceSpec, ...]
    customers: tuple[CustomerSpec, ...]
    subscriptions: tuple[SubscriptionSpec, ...]


def load_catalog_file(path: Path) -> CatalogSpec:
    """Read and check a catalog file; every reference (price → product, meter; subscription →
    customer, prices) must resolve inside the file."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise CatalogFileError(f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise CatalogFileError(f"{path} is not valid YAML: {error}") from None
    return parse_catalog(document, str(path))


def parse_catalog(document: Any, source: str = "catalog") -> CatalogSpec:
    top = _Entry(source, document)
    top.only("meters", "products", "prices", "customers", "subscriptions")
    spec = CatalogSpec(
        meters=tuple(_meter(entry) for entry in top.entries("meters")),
        products=tuple(_product(entry) for entry in top.entries("products")),
        prices=tuple(_price(entry) for entry in top.entries("prices")),
        customers=tuple(_customer(entry) for entry in top.entries("customers")),
        subscriptions=tuple(_subscription(entry) for entry in top.entries("subscriptions")),
    )
    _check_references(spec, source)
    return spec


def _meter(entry: _Entry) -> MeterSpec:
    entry.only("event_name", "display_name", "formula")
    event_name = entry.text("event_name")
    return MeterSpec(
        event_name=event_name,
        display_name=entry.text("display_name", default=event_name),
        formula=entry.choice("formula", FORMULAS, default="sum"),
    )


def _product(entry: _Entry) -> ProductSpec:
    entry.only("key", "name")
    key = entry.text("key")
    return ProductSpec(key=key, name=entry.text("name", default=key))


def _price(entry: _Entry) -> PriceSpec:
    entry.only(
        "lookup_key", "product", "meter", "currency", "interval", "interval_count",
        "unit_amount_decimal", "tiers_mode", "tiers",
    )  # fmt: skip
    has_unit, has_tiers = "unit_amount_decimal" in entry.value, "tiers" in entry.value
    if has_unit == has_tiers:
        raise entry.error("give either unit_amount_decimal (per unit) or tiers_mode and tiers")
    tiers = tuple(_tier(tier) for tier in entry.entries("tiers")) if has_tiers else ()
    if has_tiers:
        uppers = [tier.up_to for tier in tiers]
        if not tiers or uppers[-1] is not None or None in uppers[:-1]:
            raise entry.error("tiers need ascending whole up_to values and a last tier up_to: inf")
        if any(low >= high for low, high in zip(uppers[:-2], uppers[1:-1], strict=True)):
            raise entry.error("tiers' up_to values must ascend")
    return PriceSpec(
        lookup_key=entry.text("lookup_key"),
        product=entry.text("product"),
        meter=entry.text("meter"),
        currency=entry.text("currency", default="usd").lower(),
        interval=entry.choice("interval", INTERVALS, default="month"),
        interval_count=entry.whole("interval_count", default=1, low=1),
        unit_amount_decimal=entry.decimal("unit_amount_decimal") if has_unit else None,
        tiers_mode=entry.choice("tiers_mode", TIERS_MODES) if has_tiers else None,
        tiers=tiers,
    )


def _tier(entry: _Entry) -> TierSpec:
    entry.only("up_to", "unit_amount_decimal", "flat_amount")
    up_to = entry.value.get("up_to")
    return TierSpec(
        up_to=None if up_to == "inf" else entry.whole("up_to", low=1),
        unit_amount_decimal=entry.decimal("unit_amount_decimal", default="0"),
        flat_amount=entry.whole("flat_amount", default=0),
    )


def _customer(entry: _Entry) -> CustomerSpec:
    entry.only("id", "name", "email", "test_clock")
    clock = entry.value.get("test_clock")
    return CustomerSpec(
        id=entry.text("id"),
        name=entry.text("name", default=entry.text("id")),
        email=entry.text("email", default="") or None,
        test_clock=None if clock is None else entry.moment("test_clock"),
    )


def _subscription(entry: _Entry) -> SubscriptionSpec:
    entry.only("customer", "prices")
    prices = entry.value.get("prices")
    if not isinstance(prices, list) or not prices or not all(isinstance(p, str) for p in prices):
        raise entry.error("prices must be a list of price lookup keys")
    return SubscriptionSpec(customer=entry.text("customer"), prices=tuple(prices))


def _check_references(spec: CatalogSpec, source: str) -> None:
    for kind, keys in (
        ("meter event_name", [meter.event_name for meter in spec.meters]),
        ("product key", [product.key for product in spec.products]),
        ("price lookup_key", [price.lookup_key for price in spec.prices]),
        ("customer id", [customer.id for customer in spec.customers]),
        ("subscription customer", [subscription.customer for subscription in spec.subscriptions]),
    ):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise CatalogFileError(f"{source}: {kind} {', '.join(repeated)} appears twice")
    meters = {meter.event_name for meter in spec.meters}
    products = {product.key for product in spec.products}
    prices = {price.lookup_key: price for price in spec.prices}
    customers = {customer.id for customer in spec.customers}
    for price in spec.prices:
        if price.product not in products:
            raise CatalogFileError(
                f"{source}: price {price.lookup_key} names product {price.product!r}, which is "
                "not under products"
            )
        if price.meter not in meters:
            raise CatalogFileError(
                f"{source}: price {price.lookup_key} names meter {price.meter!r}, which is not "
                "under meters"
            )
    for subscription in spec.subscriptions:
        if subscription.customer not in customers:
            raise CatalogFileError(
                f"{source}: a subscription names customer {subscription.customer!r}, which is "
                "not under customers"
            )
        unknown = [key for key in subscription.prices if key not in prices]
        if unknown:
            raise CatalogFileError(
                f"{source}: the subscription of {subscription.customer} names prices "
                f"{', '.join(unknown)}, which are not under prices"
            )
        used = [prices[key].meter for key in subscription.prices]
        twice = sorted({meter for meter in used if used.count(meter) > 1})
        if twice:
            raise CatalogFileError(
                f"{source}: the subscription of {subscription.customer} has two prices on meter "
                f"{', '.join(twice)}; Stripe would bill that usage on both items"
            )


class _Entry:
    """One mapping of the file and where it is, so errors can say ``prices[2].tiers[0]``."""

    def __init__(self, where: str, value: Any) -> None:
        if not isinstance(value, Mapping):
            raise CatalogFileError(f"{where} must be a mapping of fields")
        self.where = where
        self.value = value

    def error(self, message: str) -> CatalogFileError:
        return CatalogFileError(f"{self.where}: {message}")

    def only(self, *fields: str) -> None:
        unknown = sorted(set(self.value) - set(fields))
        if unknown:
            raise self.error(f"unknown field {', '.join(unknown)}; expected {', '.join(fields)}")

    def entries(self, name: str) -> list[_Entry]:
        items = self.value.get(name) or []
        if not isinstance(items, list):
            raise self.error(f"{name} must be a list")
        return [_Entry(f"{self.where}.{name}[{index}]", item) for index, item in enumerate(items)]

    def text(self, name: str, default: str | None = None) -> str:
        value = self.value.get(name, default)
        if value is None or not isinstance(value, str | int) or isinstance(value, bool):
            raise self.error(f"{name} is required (text)")
        return str(value)

    def choice(self, name: str, choices: tuple[Any, ...], default: str | None = None) -> Any:
        value = self.value.get(name, default)
        if value not in choices:
            raise self.error(f"{name} is {value!r}; choose one of {', '.join(choices)}")
        return value

    def whole(self, name: str, default: int | None = None, low: int = 0) -> int:
        value = self.value.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self.error(f"{name} must be a whole number >= {low}")
        return value

    def decimal(self, name: str, default: str | None = None) -> Decimal:
        raw = self.value.get(name, default)
        try:
            value = Decimal(str(raw))
        except InvalidOperation:
            raise self.error(f"{name} must be a decimal number of minor units") from None
        if not value.is_finite() or value < 0:
            raise self.error(f"{name} must be a decimal number of minor units, 0 or more")
        return value

    def moment(self, name: str) -> datetime:
        raw = self.value.get(name)
        try:
            value = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
        except ValueError:
            raise self.error(
                f"{name} must be an ISO 8601 instant, e.g. 2026-11-01T00:00:00Z"
            ) from None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
