"""The Great Expectations 1.x suite for a window of raw usage, run on a bounded sample.

Row-level problems are expected in real data (they are quarantined), so each row expectation
carries ``mostly = 1 - METERING_MAX_QUARANTINE_SHARE``: the suite fails only when a problem is
common enough to mean the partition itself is broken. GX works on pandas, so it sees a stratified
sample of at most ``SAMPLE_ROWS`` rows (an equal share of every hour); the exact counts per
reason come from the SQL routing, which sees every row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd

from metering_pipeline.quality.rules import NUMBER_PATTERN, dialect_expressions
from metering_pipeline.sources.tables import RAW_COLUMNS, sql_literal, use_utc
from metering_pipeline.warehouse import Connection

SAMPLE_ROWS = 100_000
SAMPLE_COLUMNS = (*RAW_COLUMNS, "partition_hour", "quantity_value")
KEY_COLUMNS = ("event_id", "customer_id", "meter", "quantity", "occurred_at", "received_at")
# pandas' names for the types GX observes; raw values stay text so malformed ones survive
COLUMN_TYPES = {
    "event_id": "str",
    "customer_id": "str",
    "meter": "str",
    "quantity": "str",
    "occurred_at": "Timestamp",
    "received_at": "Timestamp",
    "partition_hour": "Timestamp",
    "quantity_value": "float64",
}


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    element_count: int
    unexpected_count: int
    unexpected_percent: float


@dataclass(frozen=True)
class SuiteResult:
    success: bool
    sample_rows: int
    window_rows: int
    outcomes: tuple[ExpectationOutcome, ...]


def sample_window(
    connection: Connection, start: datetime, end: datetime
) -> tuple[pd.DataFrame, int]:
    """A stratified sample of the window (equal rows per hour) and the window's row count."""
    use_utc(connection)
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    total = connection.fetchone(f"select count(*) from metering.raw_usage_events where {window}")
    hours = max(1, int((end - start) / timedelta(hours=1)))
    per_hour = max(1, SAMPLE_ROWS // hours)
    columns = ", ".join(RAW_COLUMNS)
    sql = f"""
        select {columns}, partition_hour, quantity_value
        from (
            select
                {columns},
                partition_hour,
                {dialect_expressions(connection.kind)["as_double"]} as quantity_value,
                row_number() over (partition by partition_hour order by event_id) as position
            from metering.raw_usage_events
            where {window}
        ) as numbered
        where position <= {per_hour}
    """
    rows = connection.fetchall(sql)
    frame = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    for name in ("occurred_at", "received_at", "partition_hour"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    frame["quantity_value"] = pd.to_numeric(frame["quantity_value"], errors="coerce")
    return frame, int(total[0]) if total else 0


def run_suite(
    frame: pd.DataFrame,
    *,
    window_rows: int,
    start: datetime,
    end: datetime,
    now: datetime,
    quantity_min: Decimal,
    quantity_max: Decimal,
    max_quarantine_share: Decimal,
) -> SuiteResult:
    """Validate the sample with GX and return one outcome per expectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    mostly = float(1 - max_quarantine_share)
    latest = min(end, now + timedelta(minutes=5))
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = context.suites.add(gx.ExpectationSuite(name="raw_usage_events"))
    suite.add_expectation(
        gxe.ExpectTableColumnsToMatchSet(column_set=list(SAMPLE_COLUMNS), exact_match=True)
    )
    for column in KEY_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly))
    for column, type_name in COLUMN_TYPES.items():
        suite.add_expectation(gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_name))
    suite.add_expectation(
        gxe.ExpectColumnValuesToMatchRegex(
            column="quantity", regex=rf"^\s*{NUMBER_PATTERN.replace('(', '(?:')}\s*$", mostly=mostly
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="quantity_value",
            min_value=float(quantity_min),
            max_value=float(quantity_max),
            mostly=mostly,
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="occurred_at",
            min_value=pd.Timestamp(start),
            max_value=pd.Timestamp(latest),
            strict_max=True,
            mostly=mostly,
        )
    )
    if frame.empty:
        return SuiteResult(success=True, sample_rows=0, window_rows=window_rows, outcomes=())
    asset = context.data_sources.add_pandas("raw_usage").add_dataframe_asset("raw_usage_events")
    batch = asset.add_batch_definition_whole_dataframe("window").get_batch(
        batch_parameters={"dataframe": frame}
    )
    result = batch.validate(suite)
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        stats = item.result or {}
        outcomes.append(
            ExpectationOutcome(
                expectation=config.type,
                column=config.kwargs.get("column"),
                success=bool(item.success),
                element_count=int(stats.get("element_count", len(frame))),
                unexpected_count=int(stats.get("unexpected_count", 0) or 0),
                unexpected_percent=float(stats.get("unexpected_percent", 0.0) or 0.0),
            )
        )
    return SuiteResult(
        success=bool(result.success),
        sample_rows=len(frame),
        window_rows=window_rows,
        outcomes=tuple(outcomes),
    )
