"""Copy one window of source rows into ``metering.raw_usage_events``, replacing what was there.

The delete, the inserts and the watermarks are one warehouse transaction, so re-running an hour
(or a month) never appends twice, and a run killed half-way leaves the previous extract intact.
"""

from __future__ import annotations

import time
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
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    rows = batches = 0
    # Two runs over overlapping hours would each delete, then each insert: one lock serialises
    # them (PostgreSQL; a DuckDB file has a single writer anyway).
    with warehouse.connect() as connection, connection.advisory_lock(LOCK_KEY):
        use_utc(connection)
        ensure_extract_tables(connection)
        connection.execute(f"delete from metering.raw_usage_events where {window}")
        for batch in read_usage_batches(
            url=source_url, directory=source_dir, start=start, end=end, batch_rows=batch_rows
        ):
            hour_of = pc.coalesce(batch.column("occurred_at"), batch.column("received_at"))
            batch = batch.append_column(
                "partition_hour", pc.floor_temporal(hour_of, unit="hour")
            ).append_column(
                "extracted_at", pa.array([extracted_at] * batch.num_rows, type=TIMESTAMP)
            )
            connection.insert_arrow("metering.raw_usage_events", batch)
            rows += batch.num_rows
            batches += 1
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
    return ExtractSummary(
        rows=rows,
        batches=batches,
        hours=int(latest[1]) if latest else 0,
        seconds=time.perf_counter() - began,
        max_received_at=latest[0] if latest else None,
    )
