"""What Stripe charges for a metered line, computed independently of Stripe.

Reconciliation compares this with Stripe's invoice, and late usage is priced with it, so it follows
Stripe's documented rules step by step:

1. The period's usage is clamped at zero: a negative total (refunds exceeding usage) bills as 0.
2. ``transform_quantity`` divides the quantity by ``divide_by`` and rounds the result to a whole
   number, ``up`` or ``down``, before any price applies.
3. ``per_unit`` multiplies by ``unit_amount_decimal`` (minor units, sub-cent allowed).
   ``tiered`` + ``graduated`` prices each unit at the tier it falls in and adds the flat amount of
   every tier the quantity reaches; ``tiered`` + ``volume`` prices every unit at the tier the whole
   quantity falls in, plus that tier's flat amount. A tier covers ``(previous up_to, up_to]``;
   ``up_to=None`` is ``inf``. A zero quantity falls in the first tier, so its flat amount (the usual
   way to express a base fee) is still charged.
4. The line's exact amount is rounded once, to a whole minor unit, half away from zero (Stripe's
   decimal-amounts guide: "rounding occurs on the line item level", 0.05 x 30 = 1.5 becomes 2
   cents). Tiers are not rounded one by one.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from metering_pipeline.billing.catalog import Price, Tier


class PricingError(ValueError):
    """A price cannot be evaluated (missing amount or malformed tiers); names the price."""


def billable_quantity(price: Price, quantity: Decimal) -> Decimal:
    """The quantity Stripe prices: clamped at zero, then transformed (steps 1 and 2)."""
    quantity = max(quantity, Decimal(0))
    if price.transform_divide_by:
        rounding = ROUND_FLOOR if price.transform_round == "down" else ROUND_CEILING
        quantity = (quantity / price.transform_divide_by).to_integral_value(rounding=rounding)
    return quantity


def exact_amount(price: Price, quantity: Decimal) -> Decimal:
    """The line amount in minor units before rounding (steps 1 to 3)."""
    quantity = billable_quantity(price, quantity)
    if price.billing_scheme == "per_unit":
        if price.unit_amount_decimal is None:
            raise PricingError(f"price {price.id} is per_unit but has no unit_amount_decimal")
        return quantity * price.unit_amount_decimal
    if not price.tiers or price.tiers[-1].up_to is not None:
        raise PricingError(
            f"price {price.id} is tiered but its last tier is not up_to=inf; Stripe requires one"
        )
    if price.tiers_mode == "graduated":
        return _graduated(price.tiers, quantity)
    if price.tiers_mode == "volume":
        return _volume(price.tiers, quantity)
    raise PricingError(
        f"price {price.id} has tiers_mode {price.tiers_mode!r}; expected graduated or volume"
    )


def amount_minor_units(price: Price, quantity: Decimal) -> Decimal:
    """What Stripe charges for ``quantity`` on ``price``, a whole number of minor units (step 4)."""
    return exact_amount(price, quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP)


def incremental_amount(price: Price, billed_quantity: Decimal, total_quantity: Decimal) -> Decimal:
    """The amount still owed when Stripe billed ``billed_quantity`` but the usage was ``total``.

    Used for usage that reached Stripe too late for a replaced price: the customer owes what the
    whole quantity would have cost minus what the invoice already charged, so tiers already passed
    are not charged again at their higher rates. Negative when Stripe billed more than we measured.
    """
    return amount_minor_units(price, total_quantity) - amount_minor_units(price, billed_quantity)


def _graduated(tiers: tuple[Tier, ...], quantity: Decimal) -> Decimal:
    total = Decimal(0)
    lower = Decimal(0)
    for index, tier in enumerate(tiers):
        upper = _upper(tier)
        units = min(quantity, upper) - lower
        if units > 0 or (index == 0 and quantity == 0):
            total += max(units, Decimal(0)) * tier.unit_amount_decimal + tier.flat_amount_decimal
        if quantity <= upper:
            break
        lower = upper
    return total


def _volume(tiers: tuple[Tier, ...], quantity: Decimal) -> Decimal:
    tier = next(tier for tier in tiers if quantity <= _upper(tier))
    return quantity * tier.unit_amount_decimal + tier.flat_amount_decimal


def _upper(tier: Tier) -> Decimal:
    return Decimal("Infinity") if tier.up_to is None else Decimal(tier.up_to)
