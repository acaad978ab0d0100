"""Each meter's pushed unit: the period total, scaled and rounded by the meter's rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering_pipeline.billing.units import MeterUnit, UnpushableQuantity, to_meter_units
from metering_pipeline.settings import SettingsError, load_settings

D = Decimal


@pytest.mark.parametrize(
    ("quantity", "unit", "expected"),
    [
        ("12", MeterUnit(), 12),
        ("12.5", MeterUnit(), 13),  # half_up: halves away from zero
        ("-12.5", MeterUnit(), -13),
        ("12.5", MeterUnit(1, "half_even"), 12),
        ("12.001", MeterUnit(1, "up"), 13),
        ("12.999", MeterUnit(1, "down"), 12),
        ("12.3456", MeterUnit(1000), 12346),  # milli-units
        ("0.001", MeterUnit(1000, "exact"), 1),
        ("3.0", MeterUnit(1, "exact"), 3),
    ],
)
def test_quantities_become_whole_pushed_units(quantity, unit, expected):
    assert to_meter_units(D(quantity), unit) == expected


def test_exact_meters_refuse_a_fraction_naming_the_setting():
    with pytest.raises(UnpushableQuantity, match="METERING_METER_UNITS"):
        to_meter_units(D("0.0005"), MeterUnit(1000, "exact"))


def test_rounding_the_cumulative_total_never_drifts():
    """Hourly runs each push the rounded total minus what was pushed: Stripe ends exact."""
    unit, pushed, total = MeterUnit(), D(0), D(0)
    for hourly in [D("0.4")] * 10:
        total += hourly
        pushed += to_meter_units(total, unit) - pushed
    assert pushed == 4 == to_meter_units(total, unit)  # 10 x round(0.4) would be 0


def test_meter_units_setting():
    settings = load_settings({"METERING_METER_UNITS": "storage_gb=1000, gpu_seconds=1:up"})
    assert settings.meter_units == {"storage_gb": (1000, "half_up"), "gpu_seconds": (1, "up")}
    assert load_settings({}).meter_units == {}
    for bad in ("storage_gb", "storage_gb=0", "storage_gb=1.5", "storage_gb=10:nearest"):
        with pytest.raises(SettingsError, match="METERING_METER_UNITS"):
            load_settings({"METERING_METER_UNITS": bad})
