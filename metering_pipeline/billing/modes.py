"""Our aggregation modes and the Stripe meter formula each one is pushed to.

Stripe meters aggregate with ``sum``, ``count`` or ``last``; there is no ``max`` and no value that
survives a period. We aggregate in the warehouse and push the result, so:

- ``sum`` and ``count`` become pre-aggregated totals (a count is a sum of ones) sent as deltas to a
  ``sum`` meter;
- ``last_during_period``, ``max`` (the period's running peak) and ``last_ever`` (the value carried
  forward, re-sent in each new period) become a value sent to a ``last`` meter, where the latest
  event wins.

A ``count`` meter cannot take our pushes: it counts events, so a delta of 40 would bill as 1.
"""

from __future__ import annotations

from typing import Literal, get_args

AggregationMode = Literal["sum", "count", "max", "last_during_period", "last_ever"]
MeterFormula = Literal["sum", "count", "last"]
PushFormula = Literal["sum", "last"]

AGGREGATION_MODES: tuple[AggregationMode, ...] = get_args(AggregationMode)

_PUSH_FORMULA: dict[str, PushFormula] = {
    "sum": "sum",
    "count": "sum",
    "max": "last",
    "last_during_period": "last",
    "last_ever": "last",
}
_DEFAULT_MODE: dict[str, AggregationMode] = {
    "sum": "sum",
    "count": "sum",
    "last": "last_during_period",
}


def push_formula(mode: str) -> PushFormula:
    """The meter formula that bills what ``mode`` computes: ``sum`` (we send deltas) or ``last``."""
    try:
        return _PUSH_FORMULA[mode]
    except KeyError:
        raise ValueError(
            f"aggregation mode {mode!r} is unknown; choose one of {', '.join(AGGREGATION_MODES)}"
        ) from None


def default_mode(formula: str) -> AggregationMode:
    """Our mode for a meter when ``METERING_METER_MODES`` names none (architecture.md)."""
    try:
        return _DEFAULT_MODE[formula]
    except KeyError:
        raise ValueError(
            f"meter formula {formula!r} is unknown; Stripe has sum, count and last"
        ) from None


def meter_mismatch(
    event_name: str, mode: str, formula: str, event_time_window: str | None = None
) -> str | None:
    """Why usage in ``mode`` cannot be pushed to this meter, or None when it can.

    A ``sum`` meter with an ``event_time_window`` keeps only the last event of each window, so two
    deltas landing in one window would replace each other instead of adding up.
    """
    wanted = push_formula(mode)
    if formula == wanted == "sum" and event_time_window:
        return (
            f"meter {event_name!r} has event_time_window={event_time_window!r}: Stripe keeps one "
            f"event per window, so our deltas would overwrite each other; push to a sum meter "
            f"without an event time window"
        )
    if formula == wanted:
        return None
    return (
        f"meter {event_name!r} aggregates with formula {formula!r}, but its usage is in mode "
        f"{mode!r}, which must be pushed to a {wanted!r} meter; create a {wanted!r} meter for it "
        f"or change its mode in METERING_METER_MODES"
    )
