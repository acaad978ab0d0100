"""Rows that landed in the source after their hour was extracted, found and re-run.

An hour's extraction watermark (``metering.extraction_watermarks.max_received_at``) is the latest
``received_at`` it copied; a source row of that hour received later was not in the extract. The
sensor asks the source only for rows received since its cursor (minus an overlap), so a tick
stays cheap on a large source, and the run keys make a re-detected hour launch nothing new.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import dagster as dg

from metering_pipeline.defs.automation.jobs import TRIGGER_TAG, hourly_usage
from metering_pipeline.defs.automation.schedules import hour_range_request
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.resources import SourceResource, StripeResource, WarehouseResource
from metering_pipeline.settings import load_settings
from metering_pipeline.sources.reader import SOURCE_TABLE, placed_source_sql, redact
from metering_pipeline.sources.tables import use_utc
from metering_pipeline.warehouse import Connection, Database, WarehouseBusyError

_HOUR = timedelta(hours=1)
# Rows whose hour was being extracted while the previous tick read the source are looked at
# again; the run keys keep the second sighting from launching a second run.
OVERLAP = timedelta(hours=1)
# A sensor tick must stay short: a DuckDB file held by a run is simply looked at next tick.
SENSOR_LOCK_WAIT_SECONDS = 5.0
PERIOD_STATE_TAG = "metering/period_state"


@dataclass(frozen=True)
class LateHour:
    hour: datetime
    rows: int
    max_received_at: datetime


def _source_rows_since(
    source: Database, since: datetime | None
) -> tuple[list[tuple], datetime | None]:
    """Per hour a row belongs to (as the extract places it), the rows received after
    ``since``: their count and latest ``received_at``; and the latest overall."""
    where = "where received_at > ?" if since else "where received_at is not null"
    params = (since,) if since else ()
    with source.connect() as conn:
        use_utc(conn)
        _require_received_at(conn, source)
        placed = placed_source_sql(conn, source.url, hourly_partitions.start, datetime.now(UTC))
        hours = conn.fetchall(
            f"""
            with source_rows as (
                select partition_hour, received_at from ({placed}) as placed {where}
            )
            select partition_hour, count(*) as row_count, max(received_at) as max_received_at
            from source_rows
            group by partition_hour
            order by partition_hour
            """,
            params,
        )
    latest = max((row[2] for row in hours), default=None)
    return hours, latest


class SourceUnsuitable(ValueError):
    """The source cannot tell late rows apart; the message says why and what still covers them."""


def _require_received_at(conn: Connection, source: Database) -> None:
    columns = {
        name.lower()
        for (name,) in conn.fetchall(
            "select column_name from information_schema.columns where table_name = ?",
            (SOURCE_TABLE,),
        )
    }
    if not columns:
        raise SourceUnsuitable(f"no {SOURCE_TABLE} table in the source {redact(source.url)} yet")
    if "received_at" not in columns:
        raise SourceUnsuitable(
            f"{SOURCE_TABLE} at {redact(source.url)} has no received_at column, so rows that "
            "arrive late cannot be told apart; only the hourly schedule's lookback re-runs "
            "recent hours. Add received_at (when the row landed) to the source."
        )


def _watermarks(
    conn: Connection, first: datetime, last: datetime
) -> dict[datetime, datetime | None]:
    if not conn.table_exists("metering.extraction_watermarks"):
        return {}
    rows = conn.fetchall(
        "select partition_hour, max_received_at from metering.extraction_watermarks "
        "where partition_hour >= ? and partition_hour <= ?",
        (first, last),
    )
    return {_utc(hour): _utc(mark) if mark else None for hour, mark in rows}


def _periods(conn: Connection) -> list[tuple[datetime, datetime, str | None]]:
    """Every billing period we know, with the test clock of its customer (None: real time)."""
    if not conn.table_exists("metering.billing_periods"):
        return []
    clock = (
        "customers.test_clock"
        if conn.table_exists("metering.stripe_customers")
        else "cast(null as text)"
    )
    join = (
        "left join metering.stripe_customers as customers "
        "on customers.stripe_customer_id = items.stripe_customer_id"
        if conn.table_exists("metering.stripe_customers")
        else ""
    )
    rows = conn.fetchall(
        f"""
        with periods as (
            select * from metering.billing_periods
        ),
        items as (
            select distinct subscription_item_id, stripe_customer_id
            from metering.stripe_subscription_items
        )
        select distinct periods.period_start, periods.period_end, {clock}
        from periods
        inner join items on items.subscription_item_id = periods.subscription_item_id
        {join}
        """
    )
    return [(_utc(start), _utc(end), test_clock) for start, end, test_clock in rows]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def find_late_hours(
    source: Database, warehouse: Database, since: datetime | None
) -> tuple[list[LateHour], datetime | None, list[tuple[datetime, datetime, str | None]]]:
    """Extracted hours with source rows received after their watermark, the new cursor, and
    the billing periods known to the warehouse (to judge which hours are still open)."""
    received, latest = _source_rows_since(source, since)
    if not received:
        return [], latest, []
    with warehouse.connect() as conn:
        marks = _watermarks(conn, _utc(received[0][0]), _utc(received[-1][0]))
        periods = _periods(conn)
    late = []
    for hour, rows, max_received_at in received:
        hour, max_received_at = _utc(hour), _utc(max_received_at)
        if hour not in marks:
            continue  # never extracted: the schedule (or a backfill) will take it whole
        mark = marks[hour]
        if mark is None or max_received_at > mark:
            late.append(LateHour(hour, rows, max_received_at))
    return late, latest, periods


def _ranges(hours: list[LateHour]) -> list[list[LateHour]]:
    """Consecutive hours together: one single-run range each."""
    runs: list[list[LateHour]] = []
    for late in sorted(hours, key=lambda late: late.hour):
        if runs and late.hour - runs[-1][-1].hour == _HOUR:
            runs[-1].append(late)
        else:
            runs.append([late])
    return runs


def _open_state(
    hours: list[LateHour],
    periods: list[tuple[datetime, datetime, str | None]],
    grace: timedelta,
    stripe: StripeResource,
) -> dict[datetime, str]:
    """``open`` while some billing period holding the hour has not passed its invoice's
    finalization grace window on its customer's clock; ``closed`` after; ``no_period`` when
    no synced item has a period there (the run still routes the rows to quarantine or to
    unattributed usage, where they are counted)."""
    gateway = stripe.gateway() if any(clock for _, _, clock in periods) else None
    clocks: dict[str | None, datetime] = {}

    def now(clock: str | None) -> datetime:
        if clock not in clocks:
            clocks[clock] = gateway.clock_time(clock) if clock and gateway else datetime.now(UTC)
        return clocks[clock]

    states = {}
    for late in hours:
        holding = [p for p in periods if p[0] < late.hour + _HOUR and late.hour < p[1]]
        if not holding:
            states[late.hour] = "no_period"
        elif any(now(clock) < end + grace for _, end, clock in holding):
            states[late.hour] = "open"
        else:
            states[late.hour] = "closed"
    return states


@dg.sensor(
    job=hourly_usage,
    minimum_interval_seconds=300,
    description="Re-runs extracted hours whose source rows arrived after the hour's extraction "
    "watermark, one single-run range per block of consecutive hours.",
)
def late_usage_rows(
    context: dg.SensorEvaluationContext,
    warehouse: WarehouseResource,
    source: SourceResource,
    stripe: StripeResource,
) -> dg.SensorResult | dg.SkipReason:
    """Hours of an open period are re-run so the push can still reach Stripe. Hours whose
    period is closed are re-run too, tagged ``closed``: the push then queues their usage in
    ``metering.late_usage`` with its amount, instead of it never being seen."""
    if source.directory:
        return dg.SkipReason(
            "the source is a folder of files (METERING_SOURCE_DIR); late files are picked up by "
            "the hourly schedule's lookback or a backfill of their hours"
        )
    cursor = datetime.fromisoformat(context.cursor) if context.cursor else None
    since = cursor - OVERLAP if cursor else None
    try:
        late, latest, periods = find_late_hours(
            replace(source.database, lock_wait_seconds=SENSOR_LOCK_WAIT_SECONDS),
            replace(warehouse.database, lock_wait_seconds=SENSOR_LOCK_WAIT_SECONDS),
            since,
        )
    except SourceUnsuitable as problem:
        return dg.SkipReason(str(problem))
    except WarehouseBusyError as error:
        return dg.SkipReason(f"{error} Looking again next tick.")
    new_cursor = max(filter(None, [cursor, latest]), default=None)
    cursor_text = new_cursor.isoformat() if new_cursor else None
    if not late:
        return dg.SensorResult(
            skip_reason=f"no source rows received after their hour's watermark since {since}",
            cursor=cursor_text,
        )
    grace = timedelta(hours=load_settings().finalization_grace_hours)
    states = _open_state(late, periods, grace, stripe)
    by_state: dict[str, list[LateHour]] = defaultdict(list)
    for hour in late:
        by_state[states[hour.hour]].append(hour)
    requests = []
    for state, hours in sorted(by_state.items()):
        for block in _ranges(hours):
            first, last = block[0].hour, block[-1].hour
            newest = max(hour.max_received_at for hour in block)
            rows = sum(hour.rows for hour in block)
            context.log.info(
                f"{rows} source rows for hours {first:%Y-%m-%d %H:00}..{last:%Y-%m-%d %H:00} "
                f"UTC arrived after extraction (period {state}); requesting those hours again"
            )
            requests.append(
                hour_range_request(
                    first,
                    last,
                    run_key=f"late_rows:{first.isoformat()}/{last.isoformat()}:{newest.isoformat()}",
                    tags={TRIGGER_TAG: "late_rows", PERIOD_STATE_TAG: state},
                )
            )
    return dg.SensorResult(run_requests=requests, cursor=cursor_text)
