"""How Stripe turns a quantity into an amount, in decimal, rounded once to the minor unit.

The sandbox keeps its own copy of these rules on purpose: it stands in for Stripe, so it must not
share code with the pipeline's billing logic that it is there to check.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal


def round_minor(amount: Decimal) -> int:
    """A line's amount, computed in decimal, is rounded half up to the currency's minor unit."""
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def transformed(quantity: Decimal, transform: dict | None) -> Decimal:
    """`transform_quantity`: divide, then round to a whole number up or down (before pricing)."""
    if not transform:
        return quantity
    rounding = ROUND_CEILING if transform["round"] == "up" else ROUND_FLOOR
    return (quantity / Decimal(transform["divide_by"])).quantize(Decimal(1), rounding=rounding)


def _tier_bounds(tiers: list[dict]):
    lower = Decimal(0)
    for tier in tiers:
        upper = None if tier["up_to"] is None else Decimal(tier["up_to"])
        yield tier, lower, upper
        if upper is not None:
            lower = upper


def amount_for(price: dict, quantity: Decimal) -> int:
    """The amount, in minor units, Stripe bills for `quantity` units of `price`.

    graduated: each tier prices the units that fall into it; a tier's flat amount is charged
    when the quantity reaches into that tier (the first tier always counts).
    volume: every unit is priced at the tier the total falls into, plus that tier's flat amount.
    """
    if price["billing_scheme"] == "per_unit":
        units = transformed(quantity, price.get("transform_quantity"))
        return round_minor(units * Decimal(price["unit_amount_decimal"]))
    tiers = price["_tiers"]
    total = Decimal(0)
    if price["tiers_mode"] == "volume":
        for tier, _, upper in _tier_bounds(tiers):
            if upper is None or quantity <= upper:
                total = quantity * _unit(tier) + _flat(tier)
                break
        return round_minor(total)
    for position, (tier, lower, upper) in enumerate(_tier_bounds(tiers)):
        if quantity <= lower and position > 0:
            break
        in_tier = (quantity if upper is None else min(quantity, upper)) - lower
        total += max(in_tier, Decimal(0)) * _unit(tier) + _flat(tier)
    return round_minor(total)


def _unit(tier: dict) -> Decimal:
    return Decimal(tier["unit_amount_decimal"] or 0)


def _flat(tier: dict) -> Decimal:
    return Decimal(tier["flat_amount_decimal"] or 0)
