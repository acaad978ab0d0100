"""Our aggregation modes against Stripe's meter formulas."""

from __future__ import annotations

import pytest

from metering_pipeline.billing.modes import (
    AGGREGATION_MODES,
    default_mode,
    meter_mismatch,
    push_formula,
)
from metering_pipeline.settings import AGGREGATION_MODES as SETTINGS_MODES


@pytest.mark.parametrize(
    ("mode", "formula"),
    [
        ("sum", "sum"),
        ("count", "sum"),
        ("max", "last"),
        ("last_during_period", "last"),
        ("last_ever", "last"),
    ],
)
def test_push_formula(mode: str, formula: str) -> None:
    assert push_formula(mode) == formula
    assert meter_mismatch("api_calls", mode, formula) is None


@pytest.mark.parametrize(
    ("formula", "mode"), [("sum", "sum"), ("count", "sum"), ("last", "last_during_period")]
)
def test_default_mode(formula: str, mode: str) -> None:
    assert default_mode(formula) == mode


def test_modes_agree_with_settings() -> None:
    assert set(AGGREGATION_MODES) == set(SETTINGS_MODES)


@pytest.mark.parametrize(
    ("mode", "formula", "window", "says"),
    [
        ("sum", "count", None, "formula 'count'"),
        ("sum", "last", None, "must be pushed to a 'sum' meter"),
        ("max", "sum", None, "must be pushed to a 'last' meter"),
        ("count", "sum", "hour", "event_time_window='hour'"),
    ],
)
def test_mismatch_explains_what_to_change(mode, formula, window, says) -> None:
    reason = meter_mismatch("api_calls", mode, formula, window)
    assert reason is not None
    assert says in reason
    assert "'api_calls'" in reason


def test_last_meter_with_a_window_still_takes_values() -> None:
    assert meter_mismatch("seats", "max", "last", "day") is None


@pytest.mark.parametrize("call", [lambda: push_formula("median"), lambda: default_mode("avg")])
def test_unknown_names_are_rejected(call) -> None:
    with pytest.raises(ValueError, match="unknown"):
        call()
