"""The Stripe catalog as plain values: what `stripe_io` reads and everything else consumes.

Kept free of the SDK so pricing maths, periods and the catalog sync can be tested without it.
Amounts are in the currency's minor unit (cents), as Stripe gives them; decimals stay Decimal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal


@dataclass(frozen=True)
class Tier:
    """One price tier; ``up_to`` None means ``inf``."""

    up_to: int | None
    unit_amount_decimal: Decimal = Decimal(0)
    flat_amount_decimal: Decimal = Decimal(0)


@dataclass(frozen=True)
class Price:
    id: str
    product_id: str
    currency: str
    billing_scheme: Literal["per_unit", "tiered"]
    unit_amount_decimal: Decimal | None = None
    tiers_mode: Literal["graduated", "volume"] | None = None
    tiers: tuple[Tier, ...] = ()
    transform_divide_by: int | None = None
    transform_round: Literal["up", "down"] | None = None
    meter_id: str | None = None
    usage_type: Literal["metered", "licensed"] | None = "metered"
    interval: Literal["day", "week", "month", "year"] = "month"
    interval_count: int = 1


@dataclass(frozen=True)
class Meter:
    id: str
    event_name: str
    display_name: str
    formula: Literal["sum", "count", "last"]
    event_time_window: Literal["hour", "day"] | None = None
    status: Literal["active", "inactive"] = "active"


@dataclass(frozen=True)
class Customer:
    id: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    test_clock: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class SubscriptionItem:
    id: str
    subscription_id: str
    customer_id: str
    price: Price
    created: datetime
    current_period_start: datetime
    current_period_end: datetime


@dataclass(frozen=True)
class Subscription:
    id: str
    customer_id: str
    status: str
    billing_mode: Literal["flexible", "classic"]
    billing_cycle_anchor: datetime
    created: datetime
    items: tuple[SubscriptionItem, ...]
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    test_clock: str | None = None


@dataclass(frozen=True)
class StripeEvent:
    """An entry of ``/v1/events``; ``created`` is Stripe's (or the test clock's) time."""

    id: str
    type: str
    created: datetime
    data_object: Mapping[str, Any]
    previous_attributes: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Catalog:
    customers: tuple[Customer, ...]
    meters: tuple[Meter, ...]
    prices: tuple[Price, ...]
    subscriptions: tuple[Subscription, ...]


@dataclass(frozen=True)
class InvoiceLine:
    """One invoice line; ``subscription_item_id`` is None for invoice items added by hand."""

    id: str
    amount: int
    currency: str
    quantity: Decimal | None
    period_start: datetime
    period_end: datetime
    subscription_item_id: str | None = None
    price_id: str | None = None
    invoice_item_id: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Invoice:
    """An invoice or an invoice preview (``id`` None); amounts in minor units, as Stripe gives."""

    id: str | None
    customer_id: str
    subscription_id: str | None
    status: str | None
    currency: str
    subtotal: int
    total: int
    period_start: datetime
    period_end: datetime
    lines: tuple[InvoiceLine, ...]
    created: datetime | None = None
    automatically_finalizes_at: datetime | None = None

    def amount_for_item(self, subscription_item_id: str) -> int:
        """What this invoice charges for one subscription item, over all its lines."""
        return sum(
            line.amount for line in self.lines if line.subscription_item_id == subscription_item_id
        )
