"""The hourly schedule: the hour that just ended plus the lookback, as one range run."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from metering_pipeline.defs.automation.jobs import hourly_usage
from metering_pipeline.defs.automation.schedules import hourly_usage_schedule

RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def tick(at: datetime) -> list[dg.RunRequest]:
    context = dg.build_schedule_context(scheduled_execution_time=at)
    return hourly_usage_schedule.evaluate_tick(context).run_requests or []


def test_runs_fifteen_minutes_after_the_hour_for_that_hour_and_three_before():
    assert hourly_usage_schedule.cron_schedule == "15 * * * *"
    assert hourly_usage_schedule.job_name == hourly_usage.name
    [request] = tick(datetime(2026, 11, 22, 10, 15, tzinfo=UTC))
    assert (request.tags[RANGE[0]], request.tags[RANGE[1]]) == (
        "2026-11-22-06:00",
        "2026-11-22-09:00",
    )
    assert request.partition_key is None  # a range, launched as one run


def test_consecutive_ticks_overlap_by_the_lookback_and_have_distinct_run_keys():
    first = tick(datetime(2026, 11, 22, 10, 15, tzinfo=UTC))[0]
    second = tick(datetime(2026, 11, 22, 11, 15, tzinfo=UTC))[0]
    assert second.tags[RANGE[0]] == "2026-11-22-07:00"
    assert second.tags[RANGE[1]] == "2026-11-22-10:00"
    assert first.run_key != second.run_key


def test_a_day_boundary_is_crossed_inside_one_range():
    [request] = tick(datetime(2026, 11, 22, 1, 15, tzinfo=UTC))
    assert (request.tags[RANGE[0]], request.tags[RANGE[1]]) == (
        "2026-11-21-21:00",
        "2026-11-22-00:00",
    )


@pytest.mark.parametrize(("lag", "lookback", "expected"), [
    ("45", "0", ("2026-11-22-09:00", "2026-11-22-09:00")),
    ("90", "1", ("2026-11-22-07:00", "2026-11-22-08:00")),
])  # fmt: skip
def test_lag_and_lookback_come_from_the_settings(monkeypatch, lag, lookback, expected):
    monkeypatch.setenv("METERING_SCHEDULE_LAG_MINUTES", lag)
    monkeypatch.setenv("METERING_LATE_LOOKBACK_HOURS", lookback)
    # 10:45 with a 45-minute lag is 10:00: the 09:00 hour just ended; with 90 minutes, 09:15
    [request] = tick(datetime(2026, 11, 22, 10, 45, tzinfo=UTC))
    assert (request.tags[RANGE[0]], request.tags[RANGE[1]]) == expected


def test_nothing_before_the_first_partition():
    [request] = tick(datetime(2026, 1, 1, 2, 15, tzinfo=UTC))
    assert (request.tags[RANGE[0]], request.tags[RANGE[1]]) == (
        "2026-01-01-00:00",
        "2026-01-01-01:00",
    )
    result = hourly_usage_schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 1, 0, 15, tzinfo=UTC))
    )
    assert not result.run_requests
    assert "no complete hour yet" in result.skip_message
