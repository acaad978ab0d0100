"""Stream the source's usage rows for a time window as bounded Arrow batches.

Memory stays at about one batch whatever the window: DuckDB hands out a record-batch reader,
PostgreSQL a server-side cursor, and a folder of files is scanned by DuckDB file by file.
Every value leaves as text except the two timestamps, so a malformed quantity survives to be
quarantined with its reason instead of failing the extract.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from metering_pipeline.sources.tables import (
    RAW_COLUMNS,
    REQUIRED_SOURCE_COLUMNS,
    use_utc,
)
from metering_pipeline.warehouse import Database

SOURCE_TABLE = "usage_events"
TIMESTAMP = pa.timestamp("us", tz="UTC")
RAW_SCHEMA = pa.schema(
    [
        (name, TIMESTAMP if name in ("occurred_at", "received_at") else pa.string())
        for name in RAW_COLUMNS
    ]
)
FILE_READERS = {
    ".parquet": "read_parquet({path})",
    ".jsonl": "read_json({path}, format = 'newline_delimited')",
    ".ndjson": "read_json({path}, format = 'newline_delimited')",
    ".json": "read_json({path}, format = 'auto')",
    ".csv": "read_csv({path}, header = true, all_varchar = true)",
}

# A row belongs to the hour of occurred_at; a row without a readable occurred_at is kept in the
# hour it was received, so it is quarantined (missing_field) instead of vanishing.
WINDOW_FILTER = """
    (occurred_at >= {start} and occurred_at < {end})
    or (occurred_at is null and received_at >= {start} and received_at < {end})
"""


class SourceSchemaError(ValueError):
    """The source lacks a column the contract requires; the message names where and what."""


def redact(url: str) -> str:
    """The URL without its password, fit for messages and metadata."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:****@", url)


def read_usage_batches(
    *,
    url: str,
    directory: Path | None,
    start: datetime,
    end: datetime,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Rows of ``[start, end)`` from the folder when one is given, else from ``usage_events``."""
    if directory is not None:
        yield from _read_files(directory, start, end, batch_rows)
    elif Database(url).kind == "duckdb":
        yield from _read_duckdb(url, start, end, batch_rows)
    else:
        yield from _read_postgres(url, start, end, batch_rows)


def _projection(columns: dict[str, str], where: str, dialect: str = "duckdb") -> str:
    """Select the raw columns as text and timestamptz; absent optional columns become null."""
    missing = [name for name in REQUIRED_SOURCE_COLUMNS if name not in columns]
    if missing:
        raise SourceSchemaError(
            f"{where} has no column {', '.join(missing)}; the source contract (DESIGN §4.1) needs "
            f"{', '.join(REQUIRED_SOURCE_COLUMNS)}. Add the column or fix the export, then re-run."
        )
    parts = []
    for name in RAW_COLUMNS:
        if name not in columns:
            cast = "timestamptz" if name in ("occurred_at", "received_at") else "text"
            parts.append(f"cast(null as {cast}) as {name}")
        elif name in ("occurred_at", "received_at"):
            parts.append(f"{_timestamp(name, columns[name], dialect)} as {name}")
        elif name == "properties" and columns[name].lower() not in ("varchar", "text", "json"):
            parts.append(f"cast(to_json({name}) as varchar) as {name}")
        else:
            parts.append(f"cast({name} as text) as {name}")
    if "received_at" not in columns:
        # Without a landing time the extraction time is the best watermark we have.
        parts[RAW_COLUMNS.index("received_at")] = "current_timestamp as received_at"
    return ", ".join(parts)


def _timestamp(name: str, type_name: str, dialect: str) -> str:
    """Text timestamps from files may be garbage: DuckDB's try_cast keeps the row (as null)."""
    if dialect == "duckdb" and type_name.lower() in ("varchar", "text", "character varying"):
        return f"try_cast({name} as timestamptz)"
    return f"cast({name} as timestamptz)"


def _table_columns(connection, schema_filter: str) -> dict[str, str]:
    rows = connection.fetchall(
        "select column_name, data_type from information_schema.columns "
        f"where table_name = ? and {schema_filter}",
        (SOURCE_TABLE,),
    )
    return {name.lower(): type_name for name, type_name in rows}


def _read_duckdb(
    url: str, start: datetime, end: datetime, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    with Database(url).connect() as connection:
        use_utc(connection)
        columns = _table_columns(connection, "table_schema = current_schema()")
        if not columns:
            raise _no_table(url)
        sql = (
            f"select * from (select {_projection(columns, f'{SOURCE_TABLE} at {redact(url)}')} "
            f"from {SOURCE_TABLE}) where {WINDOW_FILTER.format(start='$1', end='$2')}"
        )
        reader = connection.raw.sql(sql, params=[start, end]).to_arrow_reader(batch_rows)
        for batch in reader:
            yield _conform(batch)


def _read_postgres(
    url: str, start: datetime, end: datetime, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    with Database(url).connect() as connection:
        use_utc(connection)
        columns = _table_columns(connection, "table_schema = current_schema()")
        if not columns:
            raise _no_table(url)
        projection = _projection(columns, f"{SOURCE_TABLE} at {redact(url)}", "postgres")
        sql = (
            f"select * from (select {projection} from {SOURCE_TABLE}) as source "
            f"where {WINDOW_FILTER.format(start='%(start)s', end='%(end)s')}"
        )
        with connection.raw.cursor(name="metering_extract") as cursor:
            cursor.itersize = batch_rows
            cursor.execute(sql, {"start": start, "end": end})
            while rows := cursor.fetchmany(batch_rows):
                arrays = [
                    pa.array(values, type=field.type)
                    for values, field in zip(zip(*rows, strict=True), RAW_SCHEMA, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=RAW_SCHEMA)


def _read_files(
    directory: Path, start: datetime, end: datetime, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in FILE_READERS)
    if not files:
        return
    connection = duckdb.connect()
    try:
        connection.execute("set timezone = 'UTC'")
        selects = []
        for path in files:
            scan = FILE_READERS[path.suffix.lower()].format(path=_literal(str(path)))
            described = connection.execute(f"describe select * from {scan}").fetchall()
            columns = {row[0].lower(): row[1] for row in described}
            selects.append(f"select {_projection(columns, f'file {path}')} from {scan}")
        sql = (
            f"select * from ({' union all '.join(selects)}) "
            f"where {WINDOW_FILTER.format(start='$1', end='$2')}"
        )
        for batch in connection.sql(sql, params=[start, end]).to_arrow_reader(batch_rows):
            yield _conform(batch)
    finally:
        connection.close()


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [
            batch.column(name).cast(field.type)
            for name, field in zip(RAW_COLUMNS, RAW_SCHEMA, strict=True)
        ],
        schema=RAW_SCHEMA,
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _no_table(url: str) -> SourceSchemaError:
    return SourceSchemaError(
        f"no table {SOURCE_TABLE} in the source database {redact(url)}; run `metering seed`, or "
        "point METERING_SOURCE_URL at the database that holds it (or METERING_SOURCE_DIR at files)"
    )
