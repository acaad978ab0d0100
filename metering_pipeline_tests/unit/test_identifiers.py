"""Identifiers Stripe deduplicates on: deterministic, distinct per key and sequence, short, safe."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from metering_pipeline.billing.identifiers import idempotency_key, meter_event_identifier

START = datetime(2026, 11, 5, tzinfo=UTC)
KEY = ("si_old", "cus_1", "api_calls", START)


def test_same_inputs_give_the_same_identifier_across_runs() -> None:
    assert meter_event_identifier(*KEY, 3) == meter_event_identifier(*KEY, 3)


def test_identifier_is_short_safe_and_readable() -> None:
    identifier = meter_event_identifier(
        "si_" + "x" * 200, "cus_" + "y" * 200, "m" * 200, START, 10**9
    )
    assert len(identifier) <= 100
    assert re.fullmatch(r"[a-z0-9_]+", identifier)
    assert identifier.endswith("_202611050000_1000000000")


@pytest.mark.parametrize(
    "other",
    [
        ("si_new", "cus_1", "api_calls", START, 1),  # the replacing item in the same period
        ("si_old", "cus_2", "api_calls", START, 1),
        ("si_old", "cus_1", "storage", START, 1),
        ("si_old", "cus_1", "api_calls", START + timedelta(days=30), 1),
        ("si_old", "cus_1", "api_calls", START, 2),
        ("si_ol", "dcus_1", "api_calls", START, 1),  # parts do not run into each other
    ],
)
def test_any_difference_in_the_key_changes_the_identifier(other) -> None:
    assert meter_event_identifier(*other) != meter_event_identifier(*KEY, 1)


def test_period_start_in_another_zone_is_the_same_instant() -> None:
    shifted = START.astimezone(timezone(timedelta(hours=-5)))
    assert meter_event_identifier(*KEY[:3], shifted, 1) == meter_event_identifier(*KEY, 1)


@pytest.mark.parametrize(
    ("period_start", "sequence", "message"),
    [(START, 0, "start at 1"), (datetime(2026, 11, 5), 1, "no time zone")],
)
def test_bad_identifier_inputs(period_start, sequence, message) -> None:
    with pytest.raises(ValueError, match=message):
        meter_event_identifier("si", "cus", "m", period_start, sequence)


def test_idempotency_key_is_deterministic_and_parameter_sensitive() -> None:
    key = idempotency_key("invoice_item", "cus_1", "si_old", START, 1234)
    assert key == idempotency_key("invoice_item", "cus_1", "si_old", START, 1234)
    assert key != idempotency_key("invoice_item", "cus_1", "si_old", START, 1235)
    assert key != idempotency_key("credit_note", "cus_1", "si_old", START, 1234)
    assert key.startswith("mp-invoice_item-")
    assert len(key) <= 255


def test_idempotency_operation_must_be_a_plain_word() -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        idempotency_key("invoice item", "cus_1")
