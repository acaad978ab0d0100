"""Copy one window of source rows into ``metering.raw_usage_events``, replacing what was there.

Rows first land in a private stage table, batch by batch; then the delete, one insert from the
stage and the watermarks are one warehouse transaction, so re-running an hour (or a month) never
appends twice, and a run killed half-way leaves the previous extract intact (at worst a stage
table named ``metering.raw_usage_stage_*`` remains, which nothing reads).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from metering_pipeline.sources.reader import TIMESTAMP, read_usage_batches
from metering_pipeline.sources.tables import ensure_extract_tables, sql_literal, use_utc
from metering_pipeline.warehouse import Database

LOCK_KEY = "metering.raw_usage_events"


@dataclass(frozen=True)
class ExtractSummary:
    rows: int
    batches: int
    hours: int
    seconds: float
    max_received_at: datetime | None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def extract_window(
    *,
    source_url: str,
    source_dir: Path | None,
    warehouse: Database,
    start: datetime,
    end: datetime,
    batch_rows: int,
) -> ExtractSummary:
    began = time.perf_counter()
    extracted_at = datetime.now(UTC)
    stage = f"metering.raw_usage_stage_{uuid.uuid4().hex[:12]}"
    with warehouse.connect() as connection:
        use_utc(connection)
        ensure_extract_tables(connection)
        connection.execute(
            f"create table {stage} as select * from metering.raw_usage_events limit 0"
        )
    try:
        rows, batches = _stage(
            warehouse, stage, source_url, source_dir, start, end, batch_rows, extracted_at
        )
        summary = _swap(warehouse, stage, start, end, extracted_at)
    finally:
        with warehouse.connect() as connection:
            connection.execute(f"drop table if exists {stage}")
    hours, max_received_at = summary
    return ExtractSummary(
        rows=rows,
        batches=batches,
        hours=hours,
        seconds=time.perf_counter() - began,
        max_received_at=max_received_at,
    )


def _stage(
    warehouse: Database,
    stage: str,
    source_url: str,
    source_dir: Path | None,
    start: datetime,
    end: datetime,
    batch_rows: int,
    extracted_at: datetime,
) -> tuple[int, int]:
    """Land the source rows in a private table. DuckDB keeps a transaction's appended rows in
    memory, so it commits each batch here (the stage is invisible to readers of the raw table)."""
    rows = batches = 0
    with warehouse.connect() as connection:
        use_utc(connection)
        for batch in read_usage_batches(
            url=source_url, directory=source_dir, start=start, end=end, batch_rows=batch_rows
        ):
            hour_of = pc.coalesce(batch.column("occurred_at"), batch.column("received_at"))
            batch = batch.append_column(
                "partition_hour", pc.floor_temporal(hour_of, unit="hour")
            ).append_column(
                "extracted_at", pa.array([extracted_at] * batch.num_rows, type=TIMESTAMP)
            )
            connection.insert_arrow(stage, batch)
            if connection.kind == "duckdb":
                connection.execute("commit")
                connection.execute("begin")
            rows += batch.num_rows
            batches += 1
    return rows, batches


def _swap(
    warehouse: Database, stage: str, start: datetime, end: datetime, extracted_at: datetime
) -> tuple[int, datetime | None]:
    """Replace the window's rows and watermarks with the stage's, in one transaction."""
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    # Two runs over overlapping hours would each delete, then each insert: one lock serialises
    # them (PostgreSQL; a DuckDB file has a single writer anyway).
    with warehouse.connect() as connection, connection.advisory_lock(LOCK_KEY):
        use_utc(connection)
        connection.execute(f"delete from metering.raw_usage_events where {window}")
        connection.execute(f"insert into metering.raw_usage_events select * from {stage}")
        connection.execute(f"delete from metering.extraction_watermarks where {window}")
        connection.execute(
            f"""
            insert into metering.extraction_watermarks
                (partition_hour, max_received_at, row_count, extracted_at)
            with hours as (
                select generate_series as partition_hour
                from generate_series({sql_literal(start)},
                    {sql_literal(end)} - interval '1 hour', interval '1 hour')
            ),
            extracted as (
                select partition_hour, max(received_at) as max_received_at, count(*) as row_count
                from metering.raw_usage_events
                where {window}
                group by partition_hour
            )
            select hours.partition_hour, extracted.max_received_at,
                coalesce(extracted.row_count, 0), {sql_literal(extracted_at)}
            from hours
            left join extracted on extracted.partition_hour = hours.partition_hour
            """
        )
        latest = connection.fetchone(
            f"select max(max_received_at), count(*) from metering.extraction_watermarks "
            f"where {window}"
        )
    return (int(latest[1]), latest[0]) if latest else (0, None)
