"""The hourly run: the hour that just ended plus a short lookback, as one single-run range."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from metering_pipeline.defs.automation.jobs import TRIGGER_TAG, hourly_usage
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.settings import load_settings

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
_HOUR = timedelta(hours=1)


def hour_range_request(
    first: datetime, last: datetime, *, run_key: str, tags: dict[str, str]
) -> dg.RunRequest:
    """One run for the hours ``first``..``last`` (inclusive): the assets' single-run backfill
    policy turns the range into one extract, one dbt build and one push."""
    return dg.RunRequest(
        run_key=run_key,
        tags={
            RANGE_START_TAG: hourly_partitions.get_partition_key_for_timestamp(first.timestamp()),
            RANGE_END_TAG: hourly_partitions.get_partition_key_for_timestamp(last.timestamp()),
            **tags,
        },
    )


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dg.schedule(
    job=hourly_usage,
    # A lag of 75 runs at minute 15 and covers the hours that ended at least 75 minutes before.
    cron_schedule=f"{load_settings().schedule_lag_minutes % 60} * * * *",
    execution_timezone="UTC",
    description="METERING_SCHEDULE_LAG_MINUTES after each hour, runs that hour and the "
    "METERING_LATE_LOOKBACK_HOURS before it in one run, so rows that landed late are picked up.",
)
def hourly_usage_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Re-running the lookback hours is safe: each asset replaces its window, and the push only
    sends what the ledger does not yet count."""
    settings = load_settings()
    scheduled = context.scheduled_execution_time
    end = _floor_hour(scheduled - timedelta(minutes=settings.schedule_lag_minutes))
    first_partition = hourly_partitions.start.astimezone(UTC)
    start = max(end - (settings.late_lookback_hours + 1) * _HOUR, first_partition)
    if start >= end:
        return dg.SkipReason(
            f"no complete hour yet: partitions start at {first_partition.isoformat()}"
        )
    return hour_range_request(
        start,
        end - _HOUR,
        run_key=f"hourly_usage:{start.isoformat()}/{end.isoformat()}",
        tags={TRIGGER_TAG: "schedule"},
    )
