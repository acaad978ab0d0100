"""One small door to the warehouse (and the source), DuckDB or PostgreSQL behind the same calls.

Pipeline-owned tables live in the ``metering`` schema; dbt models build into ``analytics``.
Callers write one statement for both engines, with ``?`` placeholders; they are translated for
psycopg here (outside quoted text), so ``?`` and ``%`` inside string literals are safe.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
from filelock import FileLock, Timeout

from metering_pipeline.settings import duckdb_path, url_kind

PIPELINE_SCHEMA = "metering"
MODELS_SCHEMA = "analytics"


DUCKDB_LOCK_WAIT_SECONDS = 120.0


def _open_duckdb(path: Path, wait_seconds: float = DUCKDB_LOCK_WAIT_SECONDS) -> Any:
    """Open a DuckDB file, waiting while another process holds it.

    A DuckDB file has one writer process at a time; a sensor tick or a second run may hold it
    for a moment, so wait with backoff instead of failing the run, and say who holds it if the
    wait runs out.
    """
    deadline = time.monotonic() + wait_seconds
    pause = 0.05
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() >= deadline:
                raise WarehouseBusyError(
                    f"The DuckDB file {path} is held by another process ({error}). DuckDB "
                    "allows one writer at a time: wait for the other run, or use PostgreSQL "
                    "(METERING_WAREHOUSE_URL) for concurrent runs."
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


class WarehouseBusyError(RuntimeError):
    """The DuckDB warehouse stayed locked by another process for longer than we wait."""


@contextmanager
def warehouse_lock(url: str, wait_seconds: float = DUCKDB_LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold a DuckDB warehouse for this process; a no-op on PostgreSQL.

    Every pipeline connection and every dbt invocation takes this lock (a file beside the
    database), so overlapping runs queue for the file in turn instead of failing on DuckDB's own
    lock ("Could not set lock on file"), which dbt does not wait for. Re-entrant in a thread.
    """
    if url_kind(url, "database URL") != "duckdb":
        yield
        return
    path = duckdb_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock", is_singleton=True)
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout:
        raise WarehouseBusyError(
            f"The DuckDB file {path} stayed in use by another run for {wait_seconds:.0f} s (lock "
            f"{path}.lock). DuckDB allows one writer at a time: let the other run finish and "
            "retry, or use PostgreSQL (METERING_WAREHOUSE_URL) for concurrent runs."
        ) from None
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class Database:
    """A DuckDB file or a PostgreSQL database, addressed by URL."""

    url: str
    lock_wait_seconds: float = DUCKDB_LOCK_WAIT_SECONDS

    @property
    def kind(self) -> str:
        return url_kind(self.url, "database URL")

    @property
    def postgres_conninfo(self) -> str:
        return re.sub(r"^postgres(ql)?(\+psycopg)?://", "postgresql://", self.url)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection that commits on success and rolls back on error."""
        if self.kind == "duckdb":
            with warehouse_lock(self.url, self.lock_wait_seconds):
                raw = _open_duckdb(duckdb_path(self.url), self.lock_wait_seconds)
                try:
                    raw.execute("begin")
                    yield Connection(raw, "duckdb")
                    raw.execute("commit")
                except BaseException:
                    raw.execute("rollback")
                    raise
                finally:
                    raw.close()
        else:
            with psycopg.connect(self.postgres_conninfo) as raw:
                yield Connection(raw, "postgres")


def psycopg_placeholders(sql: str) -> str:
    """``?`` placeholders to psycopg's ``%s``; quoted text kept, literal ``%`` doubled."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if quote:
            if char == quote:
                quote = None
            out.append("%%" if char == "%" else char)
        elif char in "'\"":
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        else:
            out.append("%%" if char == "%" else char)
    return "".join(out)


class Connection:
    """The few operations the pipeline needs, with one placeholder style for both engines."""

    def __init__(self, raw: Any, kind: str) -> None:
        self.raw = raw
        self.kind = kind

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        if self.kind == "postgres":
            if not params:
                return self.raw.execute(sql)
            return self.raw.execute(psycopg_placeholders(sql), params)
        return self.raw.execute(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(sql, params)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._run(sql, params).fetchall()

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.kind == "postgres":
            with self.raw.cursor() as cursor:
                cursor.executemany(psycopg_placeholders(sql), rows)
        else:
            self.raw.executemany(sql, rows)

    def insert_arrow(self, table: str, batch: pa.Table | pa.RecordBatch) -> None:
        """Append an Arrow batch to ``table`` (columns matched by name), COPY on PostgreSQL."""
        if batch.num_rows == 0:
            return
        columns = ", ".join(batch.schema.names)
        if self.kind == "duckdb":
            self.raw.register("_arrow_batch", batch)
            try:
                self.raw.execute(
                    f"insert into {table} ({columns}) select {columns} from _arrow_batch"
                )
            finally:
                self.raw.unregister("_arrow_batch")
            return
        with (
            self.raw.cursor() as cursor,
            cursor.copy(f"copy {table} ({columns}) from stdin") as copy,
        ):
            for row in (
                batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            ).to_pylist():
                copy.write_row([row[name] for name in batch.schema.names])

    def ensure_schema(self, schema: str = PIPELINE_SCHEMA) -> None:
        self.execute(f"create schema if not exists {schema}")

    def table_exists(self, qualified_name: str) -> bool:
        schema, _, name = qualified_name.rpartition(".")
        row = self.fetchone(
            "select count(*) from information_schema.tables"
            " where table_schema = ? and table_name = ?",
            (schema or ("public" if self.kind == "postgres" else "main"), name),
        )
        return bool(row and row[0])

    @contextmanager
    def advisory_lock(self, key: str) -> Iterator[None]:
        """Serialise writers of one key across processes (PostgreSQL); DuckDB files are
        single-writer already, so the file lock held by this connection is the lock."""
        if self.kind == "postgres":
            self.execute("select pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))
        yield
