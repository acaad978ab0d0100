"""The two time axes: UTC hours of ``occurred_at``, and billing periods discovered from Stripe."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from metering_pipeline.settings import load_settings

hourly_partitions = dg.HourlyPartitionsDefinition(
    start_date=load_settings().partitions_start, timezone="UTC", fmt="%Y-%m-%d-%H:%M"
)

billing_periods = dg.DynamicPartitionsDefinition(name="billing_periods")


def period_key(start: datetime, end: datetime) -> str:
    """``2026-11-05T00:00:00Z/2026-12-05T00:00:00Z``: an ISO 8601 interval the UI shows as is."""
    return f"{_iso(start)}/{_iso(end)}"


def parse_period_key(key: str) -> tuple[datetime, datetime]:
    start, _, end = key.partition("/")
    return _parse(start), _parse(end)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
