"""The extract tables of docs/architecture.md, created on first use so any warehouse works."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from metering_pipeline.warehouse import Connection

RAW_COLUMNS = (
    "event_id",
    "customer_id",
    "meter",
    "quantity",
    "occurred_at",
    "received_at",
    "reason",
    "properties",
)
REQUIRED_SOURCE_COLUMNS = ("event_id", "customer_id", "meter", "quantity", "occurred_at")
OPTIONAL_SOURCE_COLUMNS = ("received_at", "reason", "properties")
# What makes two rows that no timestamp places the same row (received_at aside: without a
# received_at column it is the extraction time, which changes with every extract).
HELD_ROW_COLUMNS = ("event_id", "customer_id", "meter", "quantity", "occurred_at", "reason",
    "properties")  # fmt: skip

_DDL = (
    """
    create table if not exists metering.raw_usage_events (
        event_id text,
        customer_id text,
        meter text,
        quantity text,
        occurred_at timestamptz,
        received_at timestamptz,
        reason text,
        properties text,
        partition_hour timestamptz not null,
        extracted_at timestamptz not null,
        placed_by text
    )
    """,
    """
    create table if not exists metering.extraction_watermarks (
        partition_hour timestamptz not null primary key,
        max_received_at timestamptz,
        row_count bigint not null,
        extracted_at timestamptz not null
    )
    """,
)


def sql_literal(value: object) -> str:
    """A SQL literal both engines read alike; only for values the pipeline itself produced."""
    if isinstance(value, datetime):
        return f"cast('{value.isoformat()}' as timestamptz)"
    if isinstance(value, Decimal):
        return f"cast('{value}' as decimal(38, 12))"
    return "'" + str(value).replace("'", "''") + "'"


# DuckDB would take up to 80% of RAM for a month's window functions; with a cap it spills to
# disk instead, which keeps a 10M-row single-run backfill inside the ~2 GB budget.
DUCKDB_MEMORY_LIMIT = "512MB"


def use_utc(connection: Connection) -> None:
    """Naive timestamps are UTC (DESIGN §4.1), so every session reads and writes in UTC;
    DuckDB sessions also get the memory cap and no progress bar on the console."""
    connection.execute("set timezone = 'UTC'")
    if connection.kind == "duckdb":
        connection.execute(f"set memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
        connection.execute("set enable_progress_bar = false")


def ensure_extract_tables(connection: Connection) -> None:
    connection.ensure_schema()
    for statement in _DDL:
        connection.execute(statement)
    # Warehouses created before placed_by existed. Only when missing: on PostgreSQL an ALTER
    # waits for every reader of the table, even when the column is already there.
    if not connection.fetchone(
        "select count(*) from information_schema.columns where table_schema = 'metering' "
        "and table_name = 'raw_usage_events' and column_name = 'placed_by'"
    )[0]:
        connection.execute("alter table metering.raw_usage_events add column placed_by text")
