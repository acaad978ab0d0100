"""Stream the source's usage rows for a time window as bounded Arrow batches.

Memory stays at about one batch whatever the window: DuckDB hands out a record-batch reader,
PostgreSQL a server-side cursor, and a folder of files is scanned by DuckDB file by file.
Every value leaves as text except the two timestamps, so a malformed quantity survives to be
quarantined with its reason instead of failing the extract. Files are read with explicit text
columns, never with types DuckDB guesses from a sample.

Which hour owns a row (``placement_sql``) is decided here, once, for the extract and for the
independent recount of ``counts_add_up``: every source row lands in exactly one hour.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from metering_pipeline.sources.tables import (
    HELD_ROW_COLUMNS,
    RAW_COLUMNS,
    REQUIRED_SOURCE_COLUMNS,
    sql_literal,
    use_utc,
)
from metering_pipeline.warehouse import Connection, Database

SOURCE_TABLE = "usage_events"
TIMESTAMP = pa.timestamp("us", tz="UTC")
# How a row found its hour (``raw_usage_events.placed_by``).
PLACED_BY_OCCURRED = "occurred_at"
PLACED_BY_RECEIVED = "received_at"
PLACED_BY_FIRST_EXTRACT = "first_extract"
# A device clock may run a little ahead of the landing system's; beyond this, occurred_at after
# received_at is not a time we believe (the same tolerance validation gives "in the future").
CLOCK_SKEW = timedelta(minutes=5)
END_OF_TIME = datetime(9999, 1, 1, tzinfo=UTC)
RAW_SCHEMA = pa.schema(
    [
        (name, TIMESTAMP if name in ("occurred_at", "received_at") else pa.string())
        for name in RAW_COLUMNS
    ]
)
SOURCE_SCHEMA = RAW_SCHEMA.append(pa.field("partition_hour", TIMESTAMP)).append(
    pa.field("placed_by", pa.string())
)
TEXT_COLUMNS = [name for name in RAW_COLUMNS if RAW_SCHEMA.field(name).type == pa.string()]
# PostgreSQL text cannot hold NUL; the byte is shown as U+FFFD, and validation quarantines the
# row when it is in a billed field (unreadable_text), so one such row never blocks the hour.
NUL = "\x00"
REPLACEMENT = "\ufffd"
_CSV_OPTIONS = (
    "header = true, auto_detect = false, strict_mode = true, "
    "delim = ',', quote = '\"', escape = '\"'"
)


class SourceSchemaError(ValueError):
    """The source lacks a column the contract requires; the message names where and what."""


class SourceFileError(ValueError):
    """A source file cannot be read (truncated, malformed); the message names it and where."""


@dataclass(frozen=True)
class Placement:
    """The window an extract owns, and the bounds a believable timestamp lies in.

    A row belongs to the hour of ``occurred_at`` when that is believable: readable, not before
    ``first_hour`` (the first partition) and not after the row's ``received_at`` (or, without a
    believable one, the extraction time ``as_of``) plus ``CLOCK_SKEW``. Otherwise it belongs to
    the hour of ``received_at`` when that is believable (readable, from ``first_hour`` to
    ``as_of`` plus the skew). A row with neither is kept in the window's first hour by the
    first extract that sees it, and stays there (``extract._swap`` skips it when another hour
    already holds it).
    """

    start: datetime
    end: datetime
    as_of: datetime
    first_hour: datetime


def redact(url: str) -> str:
    """The URL without its password, fit for messages and metadata."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:****@", url)


def placement_sql(projected: str, placement: Placement, *, with_arrival: bool = False) -> str:
    """The projected rows with ``partition_hour`` and ``placed_by``, restricted to the window,
    and with ``arrived`` (received by ``as_of``, or no landing time to tell) when asked.

    ``projected`` yields the raw columns plus ``received_given`` (false when the source had no
    received_at column and the extraction time stands in for it)."""
    floor, as_of = sql_literal(placement.first_hour), sql_literal(placement.as_of)
    start, end = sql_literal(placement.start), sql_literal(placement.end)
    skew = f"interval '{int(CLOCK_SKEW.total_seconds())} seconds'"
    arrival = (
        f", (not received_given or received_at is null or received_at <= {as_of}) as arrived"
        if with_arrival
        else ""
    )
    received_ok = (
        f"received_given and received_at is not null and received_at >= {floor} "
        f"and received_at <= {as_of} + {skew}"
    )
    occurred_ok = (
        f"occurred_at is not null and occurred_at >= {floor} and occurred_at <= "
        f"(case when received_ok then received_at else {as_of} end) + {skew}"
    )
    return f"""
        select {", ".join(RAW_COLUMNS)},
            case when occurred_ok then date_trunc('hour', occurred_at)
                when received_ok then date_trunc('hour', received_at)
                else {start} end as partition_hour,
            case when occurred_ok then '{PLACED_BY_OCCURRED}'
                when received_ok then '{PLACED_BY_RECEIVED}'
                else '{PLACED_BY_FIRST_EXTRACT}' end as placed_by{arrival}
        from (
            select checked.*, {occurred_ok} as occurred_ok
            from (select projected.*, {received_ok} as received_ok from ({projected}) as projected)
                as checked
        ) as placed
        where (occurred_ok and occurred_at >= {start} and occurred_at < {end})
            or (not occurred_ok and received_ok and received_at >= {start} and received_at < {end})
            or (not occurred_ok and not received_ok)
    """


def placed_source_sql(
    connection: Connection, url: str, first_hour: datetime, as_of: datetime
) -> str:
    """Every row of the source table with the hour it belongs to, for queries that group the
    source by hour (the late-row sensor) the way the extract places it."""
    every_hour = Placement(start=first_hour, end=END_OF_TIME, as_of=as_of, first_hour=first_hour)
    return placement_sql(_table_projection(connection, url), every_hour)


def read_usage_batches(
    *, url: str, directory: Path | None, placement: Placement, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Rows the window owns, from the folder when one is given, else from ``usage_events``:
    the raw columns plus ``partition_hour`` and ``placed_by``."""
    if directory is not None:
        batches = _read_files(directory, placement, batch_rows)
    elif Database(url).kind == "duckdb":
        batches = _read_duckdb(url, placement, batch_rows)
    else:
        batches = _read_postgres(url, placement, batch_rows)
    for batch in batches:
        yield _without_nul(batch)


@dataclass(frozen=True)
class OwnedRows:
    """The source's rows a window owns, recounted independently of the extract.

    ``arrived`` rows had landed when the extract began, so the extract must hold at least
    those; it can hold at most ``total``. Rows placed by the first extract are listed (their
    ``HELD_ROW_COLUMNS`` and whether they had arrived), since only the warehouse knows whether
    another hour already holds them."""

    placed_arrived: int
    placed_total: int
    first_extract: tuple[tuple[tuple, bool], ...]


def count_owned_rows(*, url: str, directory: Path | None, placement: Placement) -> OwnedRows:
    """Recount, straight from the source, the rows ``placement`` gives to its window."""
    first = sql_literal(PLACED_BY_FIRST_EXTRACT)
    count_sql = (
        "select coalesce(sum(case when arrived then 1 else 0 end), 0), count(*) "
        f"from ({{owned}}) as owned where placed_by <> {first}"
    )
    rows_sql = (
        f"select {', '.join(HELD_ROW_COLUMNS)}, arrived from ({{owned}}) as owned "
        f"where placed_by = {first}"
    )
    if directory is not None:
        connection = duckdb.connect()
        try:
            connection.execute("set timezone = 'UTC'")
            owned = _files_sql(connection, directory, placement, with_arrival=True)
            if owned is None:
                return OwnedRows(0, 0, ())
            return _owned(
                lambda sql: connection.execute(sql).fetchall(), owned, count_sql, rows_sql
            )
        finally:
            connection.close()
    with Database(url).connect() as connection:
        use_utc(connection)
        projected = _table_projection(connection, url)
        owned = placement_sql(projected, placement, with_arrival=True)
        return _owned(connection.fetchall, owned, count_sql, rows_sql)


def _owned(
    fetchall: Callable[[str], list[tuple]], owned: str, count_sql: str, rows_sql: str
) -> OwnedRows:
    arrived, total = fetchall(count_sql.format(owned=owned))[0]
    listed = tuple(
        (tuple(_readable(value) for value in row[:-1]), bool(row[-1]))
        for row in fetchall(rows_sql.format(owned=owned))
    )
    return OwnedRows(int(arrived), int(total), listed)


def _readable(value: object) -> object:
    """A value as the extract stores it (NUL shown as U+FFFD)."""
    return value.replace(NUL, REPLACEMENT) if isinstance(value, str) else value


def _projection(columns: dict[str, str], where: str, dialect: str = "duckdb") -> str:
    """Select the raw columns as text and timestamptz; absent optional columns become null."""
    missing = [name for name in REQUIRED_SOURCE_COLUMNS if name not in columns]
    if missing:
        raise SourceSchemaError(
            f"{where} has no column {', '.join(missing)}; the source contract needs "
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
    given = "received_at" in columns
    if not given:
        # Without a landing time the extraction time is the best watermark we have; it does
        # not place rows, since it changes with every extract.
        parts[RAW_COLUMNS.index("received_at")] = "current_timestamp as received_at"
    parts.append(f"{'true' if given else 'false'} as received_given")
    return "select " + ", ".join(parts)


def _timestamp(name: str, type_name: str, dialect: str) -> str:
    """Text timestamps from files may be garbage: DuckDB's try_cast keeps the row (as null)."""
    if dialect == "duckdb" and type_name.lower() in ("varchar", "text", "character varying"):
        return f"try_cast({name} as timestamptz)"
    return f"cast({name} as timestamptz)"


def _table_projection(connection: Connection, url: str) -> str:
    rows = connection.fetchall(
        "select column_name, data_type from information_schema.columns "
        "where table_name = ? and table_schema = current_schema()",
        (SOURCE_TABLE,),
    )
    columns = {name.lower(): type_name for name, type_name in rows}
    if not columns:
        raise _no_table(url)
    where = f"{SOURCE_TABLE} at {redact(url)}"
    return _projection(columns, where, connection.kind) + f" from {SOURCE_TABLE}"


def _read_duckdb(url: str, placement: Placement, batch_rows: int) -> Iterator[pa.RecordBatch]:
    with Database(url).connect() as connection:
        use_utc(connection)
        sql = placement_sql(_table_projection(connection, url), placement)
        reader = connection.raw.sql(sql).to_arrow_reader(batch_rows)
        for batch in reader:
            yield _conform(batch)


def _read_postgres(url: str, placement: Placement, batch_rows: int) -> Iterator[pa.RecordBatch]:
    with Database(url).connect() as connection:
        use_utc(connection)
        sql = placement_sql(_table_projection(connection, url), placement)
        with connection.raw.cursor(name="metering_extract") as cursor:
            cursor.itersize = batch_rows
            cursor.execute(sql)
            while rows := cursor.fetchmany(batch_rows):
                arrays = [
                    pa.array(values, type=field.type)
                    for values, field in zip(zip(*rows, strict=True), SOURCE_SCHEMA, strict=True)
                ]
                yield pa.RecordBatch.from_arrays(arrays, schema=SOURCE_SCHEMA)


def _files_sql(
    connection, directory: Path, placement: Placement, *, with_arrival: bool = False
) -> str | None:
    """One query over every file of the folder, each read with explicit text columns."""
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in _FILE_SCANS)
    if not files:
        return None
    selects = []
    for path in files:
        scan, columns = _FILE_SCANS[path.suffix.lower()](connection, path)
        selects.append(f"{_projection(columns, f'file {path}')} from {scan}")
    return placement_sql(" union all ".join(selects), placement, with_arrival=with_arrival)


def _read_files(directory: Path, placement: Placement, batch_rows: int) -> Iterator[pa.RecordBatch]:
    connection = duckdb.connect()
    try:
        connection.execute("set timezone = 'UTC'")
        sql = _files_sql(connection, directory, placement)
        if sql is None:
            return
        try:
            reader = connection.sql(sql).to_arrow_reader(batch_rows)
            for batch in reader:
                yield _conform(batch)
        except duckdb.Error as error:
            raise _file_error(directory, error) from None
    finally:
        connection.close()


def _parquet_scan(connection, path: Path) -> tuple[str, dict[str, str]]:
    """Parquet carries its own schema in the footer: its types are declared, not guessed."""
    scan = f"read_parquet({_literal(str(path))})"
    try:
        described = connection.execute(f"describe select * from {scan}").fetchall()
    except duckdb.Error as error:
        raise _file_error(path, error) from None
    return scan, {row[0].lower(): row[1] for row in described}


def _csv_scan(connection, path: Path) -> tuple[str, dict[str, str]]:
    """A comma-separated file with a header: the header names the columns, all read as text."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    names = [name.strip() for name in header]
    if not any(names):
        raise SourceFileError(
            f"file {path} has no header line (line 1 is empty); re-export it with a header "
            f"naming the columns ({', '.join(REQUIRED_SOURCE_COLUMNS)}, ...), then re-run"
        )
    columns = ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in names)
    scan = f"read_csv({_literal(str(path))}, {_CSV_OPTIONS}, columns = {{{columns}}})"
    return scan, {name.lower(): "VARCHAR" for name in names}


def _json_scan(connection, path: Path, layout: str) -> tuple[str, dict[str, str]]:
    """JSON objects: each contract column read as text (a number and a quoted number alike),
    a key an object lacks is null in that row."""
    columns = ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in RAW_COLUMNS)
    scan = f"read_json({_literal(str(path))}, format = '{layout}', columns = {{{columns}}})"
    return scan, {name: "VARCHAR" for name in RAW_COLUMNS}


_FILE_SCANS = {
    ".parquet": _parquet_scan,
    ".csv": _csv_scan,
    ".jsonl": lambda connection, path: _json_scan(connection, path, "newline_delimited"),
    ".ndjson": lambda connection, path: _json_scan(connection, path, "newline_delimited"),
    ".json": lambda connection, path: _json_scan(connection, path, "auto"),
}


def _file_error(where: Path, error: Exception) -> SourceFileError:
    """DuckDB's reason names the line or byte (and the file); keep that, drop its option dump."""
    text = str(error)
    named = re.search(r"^\s*file = (.+)$", text, re.MULTILINE)
    detail = text.split("Possible fixes:", 1)[0].split("\n\n  file =", 1)[0].strip()
    detail = re.sub(r"\s*\n\s*", "; ", detail).rstrip(".")
    source = f"source file {named.group(1).strip()}" if named else f"the source files under {where}"
    return SourceFileError(
        f"cannot read {source}: {detail}. The "
        "file looks truncated or malformed: re-export it, or move it out of METERING_SOURCE_DIR, "
        "then re-run the hour. Nothing of this window was extracted."
    )


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [batch.column(field.name).cast(field.type) for field in SOURCE_SCHEMA],
        schema=SOURCE_SCHEMA,
    )


def _without_nul(batch: pa.RecordBatch) -> pa.RecordBatch:
    """NUL bytes become U+FFFD: the warehouse can store the row, validation quarantines it."""
    columns = []
    for field in batch.schema:
        column = batch.column(field.name)
        if field.name in TEXT_COLUMNS and pc.any(pc.match_substring(column, NUL)).as_py():
            column = pc.replace_substring(column, NUL, REPLACEMENT)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _no_table(url: str) -> SourceSchemaError:
    return SourceSchemaError(
        f"no table {SOURCE_TABLE} in the source database {redact(url)}; run `metering seed`, or "
        "point METERING_SOURCE_URL at the database that holds it (or METERING_SOURCE_DIR at files)"
    )
