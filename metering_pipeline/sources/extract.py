"""Copy one window of source rows into ``metering.raw_usage_events``, replacing what was there.

Rows first land in a temporary stage table, batch by batch, on the one connection the extract
holds; then the delete, one insert from the stage and the watermarks are one warehouse
transaction, so re-running an hour (or a month) never appends twice, and a run killed half-way
leaves the previous extract intact. The stage is a session's temporary table, so the database
drops it when a killed extract's session ends: nothing is left behind. Stage tables that older
versions created in the schema (``metering.raw_usage_stage_*``) are dropped at the start of the
next extract, unless another session still holds them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pyarrow as pa

from metering_pipeline.sources.reader import (
    CLOCK_SKEW,
    PLACED_BY_FIRST_EXTRACT,
    TIMESTAMP,
    Placement,
    read_usage_batches,
)
from metering_pipeline.sources.tables import (
    HELD_ROW_COLUMNS,
    ensure_extract_tables,
    sql_literal,
    use_utc,
)
from metering_pipeline.warehouse import Connection, Database

LOCK_KEY = "metering.raw_usage_events"
STAGE = "_raw_usage_stage"
ABANDONED_STAGE_PREFIX = "raw_usage_stage_"


@dataclass(frozen=True)
class ExtractSummary:
    rows: int
    batches: int
    hours: int
    seconds: float
    max_received_at: datetime | None
    held_elsewhere: int = 0
    dropped_stages: tuple[str, ...] = ()

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
    first_hour: datetime,
) -> ExtractSummary:
    """Replace the rows of ``[start, end)`` with the source rows that window owns (see
    ``reader.Placement``; ``first_hour`` is the first partition's start)."""
    began = time.perf_counter()
    extracted_at = datetime.now(UTC)
    placement = Placement(start=start, end=end, as_of=extracted_at, first_hour=first_hour)
    dropped = drop_abandoned_stages(warehouse)
    with warehouse.connect() as connection:
        use_utc(connection)
        ensure_extract_tables(connection)
        connection.execute(f"drop table if exists {STAGE}")
        connection.execute(
            f"create temporary table {STAGE} as select * from metering.raw_usage_events limit 0"
        )
        staged, batches = _stage(
            connection, source_url, source_dir, placement, batch_rows, extracted_at
        )
        held, hours, max_received_at = _swap(connection, placement, extracted_at)
        connection.execute(f"drop table {STAGE}")
    return ExtractSummary(
        rows=staged - held,
        batches=batches,
        hours=hours,
        seconds=time.perf_counter() - began,
        max_received_at=max_received_at,
        held_elsewhere=held,
        dropped_stages=dropped,
    )


def drop_abandoned_stages(warehouse: Database) -> tuple[str, ...]:
    """Drop ``metering.raw_usage_stage_*`` tables no running extract holds; return their names.

    On PostgreSQL a table another session still uses cannot be locked, and is left alone. A
    DuckDB file has one writer process, and this one holds it, so no other extract is running.
    """
    with warehouse.connect() as connection:
        names = [
            row[0]
            for row in connection.fetchall(
                "select table_name from information_schema.tables "
                "where table_schema = 'metering' and table_name like ?",
                (ABANDONED_STAGE_PREFIX + "%",),
            )
        ]
    dropped = []
    for name in names:
        try:
            with warehouse.connect() as connection:
                if connection.kind == "postgres":
                    connection.execute(
                        f"lock table metering.{name} in access exclusive mode nowait"
                    )
                connection.execute(f"drop table if exists metering.{name}")
        except psycopg.errors.LockNotAvailable:
            continue
        dropped.append(f"metering.{name}")
    return tuple(dropped)


def _stage(
    connection: Connection,
    source_url: str,
    source_dir: Path | None,
    placement: Placement,
    batch_rows: int,
    extracted_at: datetime,
) -> tuple[int, int]:
    """Land the source rows in the stage. DuckDB keeps a transaction's appended rows in memory,
    so it commits each batch here (the stage is private to this connection)."""
    rows = batches = 0
    for batch in read_usage_batches(
        url=source_url, directory=source_dir, placement=placement, batch_rows=batch_rows
    ):
        batch = batch.append_column(
            "extracted_at", pa.array([extracted_at] * batch.num_rows, type=TIMESTAMP)
        )
        connection.insert_arrow(STAGE, batch)
        if connection.kind == "duckdb":
            connection.execute("commit")
            connection.execute("begin")
        rows += batch.num_rows
        batches += 1
    return rows, batches


def _swap(
    connection: Connection, placement: Placement, extracted_at: datetime
) -> tuple[int, int, datetime | None]:
    """Replace the window's rows and watermarks with the stage's, in one transaction.

    A row no timestamp places that another hour already holds stays there: it is taken out of
    the stage (returned as the first number), so it is counted once across runs."""
    start, end = placement.start, placement.end
    # a received_at in the future would hide every later row of the hour from late detection
    believable = f"{sql_literal(extracted_at + CLOCK_SKEW)}"
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    # Two runs over overlapping hours would each delete, then each insert: one lock serialises
    # them (PostgreSQL; a DuckDB file has a single writer anyway).
    with connection.advisory_lock(LOCK_KEY):
        connection.execute(f"delete from metering.raw_usage_events where {window}")
        same_row = " and ".join(
            f"held.{name} is not distinct from {STAGE}.{name}" for name in HELD_ROW_COLUMNS
        )
        first = sql_literal(PLACED_BY_FIRST_EXTRACT)
        held_elsewhere = (
            f"placed_by = {first} and exists (select 1 from metering.raw_usage_events as held "
            f"where held.placed_by = {first} and {same_row})"
        )
        unplaced = connection.fetchone(f"select count(*) from {STAGE} where placed_by = {first}")
        held = (0,)
        if unplaced and unplaced[0]:  # the look-up reads the whole raw table: only when needed
            held = connection.fetchone(f"select count(*) from {STAGE} where {held_elsewhere}")
            connection.execute(f"delete from {STAGE} where {held_elsewhere}")
        connection.execute(f"insert into metering.raw_usage_events select * from {STAGE}")
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
                select partition_hour, max(case when received_at <= {believable}
                    then received_at end) as max_received_at, count(*) as row_count
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
    held_rows = int(held[0]) if held else 0
    return (held_rows, int(latest[1]), latest[0]) if latest else (held_rows, 0, None)
