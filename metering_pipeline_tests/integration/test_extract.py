"""Extract: hourly windows copied from the source table or files, idempotently, on both engines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metering_pipeline.defs.extract import defs as extract_defs
from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.quality import defs as quality_defs
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.quality.checks import (
    counts_add_up,
    great_expectations_suite,
    partition_level_quality,
)
from metering_pipeline.defs.resources import SourceResource, WarehouseResource
from metering_pipeline.quality.tables import ensure_quality_tables
from metering_pipeline.sources.seed import seed_usage
from metering_pipeline.warehouse import Database

HOUR = datetime(2026, 10, 1, 10, tzinfo=UTC)
SOURCE_DDL = """
    create table usage_events (
        event_id varchar, customer_id varchar, meter varchar, quantity varchar,
        occurred_at timestamptz, received_at timestamptz, reason varchar, properties varchar
    )
"""
PIPELINE = [
    raw_usage_events,
    validated_usage_events,
    great_expectations_suite,
    partition_level_quality,
    counts_add_up,
]


def key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d-%H:%M")


def make_source(tmp_path: Path, rows: list[tuple]) -> str:
    """A DuckDB source whose quantity column is text, so malformed values can be written."""
    url = f"duckdb:///{tmp_path / 'source.duckdb'}"
    with Database(url).connect() as connection:
        connection.execute(SOURCE_DDL)
    add_source_rows(url, rows)
    return url


def add_source_rows(url: str, rows: list[tuple]) -> None:
    """Rows as (event_id, customer_id, meter, quantity, occurred_at[, received_at[, reason]])."""
    full = []
    for row in rows:
        event_id, customer, meter, quantity, occurred_at, *rest = row
        received_at = rest[0] if rest else occurred_at + timedelta(seconds=30)
        reason = rest[1] if len(rest) > 1 else None
        full.append((event_id, customer, meter, quantity, occurred_at, received_at, reason, None))
    with Database(url).connect() as connection:
        connection.executemany("insert into usage_events values (?, ?, ?, ?, ?, ?, ?, ?)", full)


def add_catalog(warehouse_url: str) -> None:
    """Two meters and customers as the catalog sync would write them (docs/architecture.md)."""
    now = datetime.now(UTC)
    with Database(warehouse_url).connect() as connection:
        ensure_quality_tables(connection)
        connection.executemany(
            "insert into metering.stripe_meters (meter_id, event_name, display_name, formula, "
            "status, aggregation_mode, synced_at) values (?, ?, ?, 'sum', 'active', 'sum', ?)",
            [("mtr_1", "api_calls", "API calls", now), ("mtr_2", "storage_gb", "Storage", now)],
        )
        connection.executemany(
            "insert into metering.stripe_customers (stripe_customer_id, metering_customer_id, "
            "synced_at) values (?, ?, ?)",
            [
                ("cus_A", "customer_0001", now),
                ("cus_B", "customer_0002", now),
                ("cus_C", None, now),
                ("cus_D1", "customer_0009", now),
                ("cus_D2", "customer_0009", now),
            ],
        )


def run(
    warehouse_url: str,
    source_url: str,
    first: datetime,
    last: datetime | None = None,
    assets: list | None = None,
    source_dir: Path | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize the hours first..last (inclusive) as one run, like a single-run backfill."""
    last = last or first
    return dg.materialize(
        assets or PIPELINE,
        resources={
            "warehouse": WarehouseResource(url=warehouse_url),
            "source": SourceResource(
                url=source_url, directory=str(source_dir) if source_dir else None
            ),
        },
        tags={
            "dagster/asset_partition_range_start": key(first),
            "dagster/asset_partition_range_end": key(last),
        },
        raise_on_error=False,
    )


def query(url: str, sql: str) -> list[tuple]:
    with Database(url).connect() as connection:
        connection.execute("set timezone = 'UTC'")
        return connection.fetchall(sql)


def test_each_domain_exposes_definitions() -> None:
    assert raw_usage_events in extract_defs.assets
    assert validated_usage_events in quality_defs.assets
    assert len(quality_defs.asset_checks) == 3


def test_rerunning_an_hour_replaces_its_rows_and_watermark(tmp_path, warehouse_url) -> None:
    source = make_source(
        tmp_path,
        [
            ("e1", "customer_0001", "api_calls", "5", HOUR + timedelta(minutes=1)),
            ("e2", "customer_0001", "api_calls", "2.5", HOUR + timedelta(minutes=59)),
            ("next", "customer_0001", "api_calls", "9", HOUR + timedelta(hours=1)),
        ],
    )
    add_catalog(warehouse_url)
    assert run(warehouse_url, source, HOUR).success
    assert run(warehouse_url, source, HOUR).success
    rows = query(
        warehouse_url, "select event_id, quantity from metering.raw_usage_events order by 1"
    )
    assert rows == [("e1", "5"), ("e2", "2.5")]

    late_received = HOUR + timedelta(hours=5)
    add_source_rows(
        source,
        [("late", "customer_0001", "api_calls", "1", HOUR + timedelta(minutes=30), late_received)],
    )
    assert run(warehouse_url, source, HOUR).success
    watermark = query(
        warehouse_url,
        "select partition_hour, max_received_at, row_count from metering.extraction_watermarks",
    )
    assert watermark == [(HOUR, late_received, 3)]
    assert query(warehouse_url, "select count(*) from metering.raw_usage_events") == [(3,)]


def test_range_backfill_is_one_run_with_every_row_once(tmp_path, warehouse_url) -> None:
    source = f"duckdb:///{tmp_path / 'seeded.duckdb'}"
    start = datetime(2026, 10, 1, tzinfo=UTC)
    seed_usage(source, customers=2, meters=["api_calls"], start=start, days=2, events=5_000)
    add_catalog(warehouse_url)
    result = run(warehouse_url, source, start, start + timedelta(hours=47))
    assert result.success
    # one step per asset covers all 48 hours: the single-run backfill policy at work
    starts = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert starts.count("raw_usage_events") == 1
    assert starts.count("validated_usage_events") == 1
    assert len(result.get_asset_materialization_events()) == 2 * 48  # two assets x 48 hours

    expected = (
        duckdb.connect(str(tmp_path / "seeded.duckdb"))
        .execute("select count(*), sum(quantity) from usage_events")
        .fetchone()
    )
    got = query(
        warehouse_url,
        "select count(*), sum(cast(quantity as decimal(38, 12))) from metering.raw_usage_events",
    )[0]
    assert (got[0], Decimal(got[1])) == (expected[0], Decimal(expected[1]))
    hours = query(
        warehouse_url, "select count(*), sum(row_count) from metering.extraction_watermarks"
    )
    assert hours == [(48, expected[0])]


def test_extract_reads_a_postgres_source_with_a_server_side_cursor(
    postgres_url, duckdb_url, monkeypatch
) -> None:
    monkeypatch.setenv("METERING_EXTRACT_BATCH_ROWS", "700")
    start = datetime(2026, 10, 1, tzinfo=UTC)
    summary = seed_usage(postgres_url, customers=2, start=start, days=1, events=3_000, seed=7)
    add_catalog(duckdb_url)
    result = run(duckdb_url, postgres_url, start, start + timedelta(hours=23))
    assert result.success
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["rows"].value == summary.rows == 3_000
    assert meta["batches"].value == 5  # 3000 rows in batches of at most 700
    source_total = query(postgres_url, "select sum(quantity) from usage_events")[0][0]
    raw_total = query(
        duckdb_url, "select sum(cast(quantity as decimal(38, 12))) from metering.raw_usage_events"
    )[0][0]
    assert Decimal(raw_total) == Decimal(source_total)


def test_extract_reads_parquet_jsonl_and_csv_files(tmp_path, warehouse_url, monkeypatch) -> None:
    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "1")  # half of these rows are bad
    folder = tmp_path / "landing"
    folder.mkdir()
    pq.write_table(
        pa.table(
            {
                "event_id": ["p1"],
                "customer_id": ["customer_0001"],
                "meter": ["api_calls"],
                "quantity": [Decimal("4.5")],
                "occurred_at": [HOUR + timedelta(minutes=5)],
                "received_at": [HOUR + timedelta(minutes=6)],
                "reason": [None],
                "properties": ['{"region": "eu"}'],
            }
        ),
        folder / "part-0.parquet",
    )
    (folder / "events.jsonl").write_text(
        json.dumps(
            {
                "event_id": "j1",
                "customer_id": "customer_0002",
                "meter": "api_calls",
                "quantity": "abc",
                "occurred_at": (HOUR + timedelta(minutes=7)).isoformat(),
                "received_at": (HOUR + timedelta(minutes=8)).isoformat(),
                "properties": {"region": "us"},
            }
        )
        + "\n"
    )
    # naive timestamps are UTC; a row whose occurred_at is unreadable stays in its received hour
    (folder / "export.csv").write_text(
        "event_id,customer_id,meter,quantity,occurred_at,received_at,reason\n"
        "c1,customer_0001,api_calls,-2,2026-10-01 10:15:00,2026-10-01 10:16:00,refund\n"
        "c2,customer_0001,api_calls,1,yesterday,2026-10-01 10:20:00,\n"
        "c3,customer_0001,api_calls,1,2026-10-01 11:00:00,2026-10-01 11:00:01,\n"
    )
    add_catalog(warehouse_url)
    result = run(warehouse_url, "duckdb:///unused.duckdb", HOUR, source_dir=folder)
    assert result.success
    rows = query(
        warehouse_url,
        "select event_id, quantity, occurred_at, reason, properties "
        "from metering.raw_usage_events order by event_id",
    )
    assert [(r[0], r[1]) for r in rows] == [("c1", "-2"), ("c2", "1"), ("j1", "abc"), ("p1", "4.5")]
    by_id = {r[0]: r for r in rows}
    assert by_id["c1"][2] == HOUR + timedelta(minutes=15)
    assert by_id["c2"][2] is None
    assert json.loads(by_id["j1"][4]) == {"region": "us"}
    quarantined = dict(
        query(warehouse_url, "select event_id, reason_code from metering.quarantined_usage_events")
    )
    assert quarantined == {"c2": "missing_timestamp", "j1": "bad_quantity"}


def test_a_file_without_a_required_column_fails_the_extract_naming_it(tmp_path, duckdb_url) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "broken.csv").write_text(
        "event_id,customer_id,meter,occurred_at\ne1,customer_0001,api_calls,2026-10-01 10:00:00\n"
    )
    result = run(duckdb_url, "duckdb:///unused.duckdb", HOUR, source_dir=folder)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.error.cause or failure.step_failure_data.error)
    assert "broken.csv" in message and "quantity" in message
    downstream = [e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert "validated_usage_events" not in downstream


def test_missing_source_table_says_what_to_do(tmp_path, duckdb_url) -> None:
    empty = f"duckdb:///{tmp_path / 'empty.duckdb'}"
    result = run(duckdb_url, empty, HOUR)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "metering seed" in str(failure.step_failure_data.error.cause)


@pytest.mark.parametrize("batch_rows", ["1", "1000"])
def test_batch_size_does_not_change_the_result(
    tmp_path, duckdb_url, monkeypatch, batch_rows
) -> None:
    monkeypatch.setenv("METERING_EXTRACT_BATCH_ROWS", batch_rows)
    rows = [
        (f"e{i}", "customer_0001", "api_calls", str(i), HOUR + timedelta(seconds=i))
        for i in range(50)
    ]
    source = make_source(tmp_path, rows)
    assert run(duckdb_url, source, HOUR, assets=[raw_usage_events]).success
    assert query(
        duckdb_url, "select count(*), count(distinct event_id) from metering.raw_usage_events"
    ) == [(50, 50)]
