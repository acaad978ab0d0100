"""Each meter's pushed unit: our usage is decimal, Stripe's meter events carry whole numbers.

Stripe recommends whole values ("scale fractional units, e.g. send milliseconds rather than
seconds"), so every meter has a unit: a ``scale`` (how many pushed units make one of ours: 1000
pushes milli-GB for a GB meter) and a ``rounding`` rule applied to the *period's cumulative total*
in pushed units. The push then sends the difference between that rounded total and what Stripe
already counts, so rounding never accumulates: the period total Stripe holds is exactly
``round(total x scale)``, never off by more than the rule allows, however many runs it took.

Rules: ``half_up`` (the default: halves away from zero), ``half_even``, ``up`` (towards +inf),
``down`` (towards -inf), ``exact`` (no rounding: a fraction cannot be pushed and fails the run).
The Stripe price must be per pushed unit: for a scale of 1000 either a price per milli-unit, or
``transform_quantity[divide_by]=1000`` on a price per unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

ROUNDINGS = {
    "half_up": ROUND_HALF_UP,
    "half_even": ROUND_HALF_EVEN,
    "up": ROUND_CEILING,
    "down": ROUND_FLOOR,
    "exact": None,
}


class UnpushableQuantity(ValueError):
    """A quantity that is not whole in its meter's unit and whose rule forbids rounding."""


@dataclass(frozen=True)
class MeterUnit:
    scale: int = 1
    rounding: str = "half_up"

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"a meter unit scale must be a whole number >= 1, not {self.scale}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(
                f"rounding {self.rounding!r} is unknown; choose one of {', '.join(ROUNDINGS)}"
            )


DEFAULT_UNIT = MeterUnit()


def meter_unit(units: Mapping[str, MeterUnit], meter: str) -> MeterUnit:
    """The unit configured for ``meter`` (``METERING_METER_UNITS``), else scale 1, half_up."""
    return units.get(meter, DEFAULT_UNIT)


def to_meter_units(quantity: Decimal, unit: MeterUnit) -> Decimal:
    """``quantity`` (our unit) as a whole number of pushed units, by the meter's rule."""
    scaled = quantity * unit.scale
    if scaled == scaled.to_integral_value():
        return scaled.to_integral_value()
    rounding = ROUNDINGS[unit.rounding]
    if rounding is None:
        raise UnpushableQuantity(
            f"{quantity.normalize():f} is not a whole number of pushed units (scale "
            f"{unit.scale}, rounding exact); raise the meter's scale or give it a rounding rule "
            "in METERING_METER_UNITS"
        )
    return scaled.to_integral_value(rounding=rounding)


def meter_units(spec: Mapping[str, tuple[int, str]]) -> dict[str, MeterUnit]:
    """The units of ``METERING_METER_UNITS`` as parsed by settings: event_name -> unit."""
    return {name: MeterUnit(scale, rounding) for name, (scale, rounding) in spec.items()}
