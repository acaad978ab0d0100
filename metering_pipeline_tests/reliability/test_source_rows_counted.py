"""Every source row is counted: each one lands in exactly one hour, accepted or quarantined.

Before, rows with no usable timestamp, or an ``occurred_at`` outside every partition (1900,
2999), were never extracted and never counted; a JSON Lines file mixing numbers and strings
sent good rows to quarantine; one NUL byte (PostgreSQL warehouse) or one truncated file stopped
the whole window, a truncated CSV "has no column event_id".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metering_pipeline.defs.automation.late_rows import find_late_hours
from metering_pipeline.quality.report import source_recount
from metering_pipeline.quality.rules import ValidationRules, validate_window
from metering_pipeline.sources.extract import extract_window
from metering_pipeline.sources.reader import SourceFileError
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_extract import (
    HOUR,
    SOURCE_DDL,
    add_catalog,
    query,
    run,
)

M = timedelta(minutes=1)
FIRST_HOUR = datetime(2026, 1, 1, tzinfo=UTC)
NEXT = HOUR + timedelta(hours=1)
RULES = ValidationRules(Decimal(-1000), Decimal(1000), "metering_customer_id")
LONG_ID = "e" * 300

# (event_id, customer_id, meter, quantity, occurred_at, received_at) and where each row goes
HOSTILE = [
    ("good", "customer_0001", "api_calls", "5", HOUR + M, HOUR + 2 * M),
    ("no_occurred", "customer_0001", "api_calls", "1", None, HOUR + 3 * M),
    (
        "year_1900",
        "customer_0001",
        "api_calls",
        "1",
        datetime(1900, 1, 1, tzinfo=UTC),
        HOUR + 4 * M,
    ),
    (
        "year_2999",
        "customer_0001",
        "api_calls",
        "1",
        datetime(2999, 1, 1, tzinfo=UTC),
        HOUR + 5 * M,
    ),
    ("no_time_at_all", "customer_0001", "api_calls", "1", None, None),
    ("received_first", "customer_0001", "api_calls", "1", HOUR + 40 * M, HOUR + 10 * M),
    ("small_skew", "customer_0002", "api_calls", "2", HOUR + 12 * M, HOUR + 10 * M),
    (LONG_ID, "customer_0001", "api_calls", "1", HOUR + 13 * M, HOUR + 14 * M),
    ("next_hour", "customer_0002", "api_calls", "3", NEXT + M, NEXT + 2 * M),
]
EXPECTED = {
    "no_occurred": "missing_timestamp",
    "year_1900": "out_of_range",
    "year_2999": "out_of_range",
    "no_time_at_all": "missing_timestamp",
    "received_first": "out_of_range",
    LONG_ID: "event_id_too_long",
}


def source_with(tmp_path: Path, rows: list[tuple], url: str | None = None) -> str:
    """A ``usage_events`` table (text quantity) at ``url``, by default a DuckDB file."""
    url = url or f"duckdb:///{tmp_path / 'source.duckdb'}"
    with Database(url).connect() as connection:
        connection.execute(SOURCE_DDL)
        connection.executemany(
            "insert into usage_events values (?, ?, ?, ?, ?, ?, null, null)", rows
        )
    return url


def extract_and_validate(
    warehouse_url: str, source_url: str, hour: datetime, source_dir: Path | None = None
) -> None:
    """One hour through the two services the hourly assets call."""
    extract_window(
        source_url=source_url, source_dir=source_dir, warehouse=Database(warehouse_url),
        start=hour, end=hour + timedelta(hours=1), batch_rows=1000, first_hour=FIRST_HOUR,
    )  # fmt: skip
    with Database(warehouse_url).connect() as connection:
        validate_window(connection, hour, hour + timedelta(hours=1), datetime.now(UTC), RULES)


def routed(warehouse_url: str) -> list[tuple]:
    """Every raw row with the hour it is in and what validation made of it."""
    return query(
        warehouse_url,
        """
        select raw.event_id, raw.partition_hour, coalesce(q.reason_code, 'accepted')
        from metering.raw_usage_events as raw
        left join metering.quarantined_usage_events as q
            on q.event_id = raw.event_id and q.partition_hour = raw.partition_hour
        order by raw.event_id
        """,
    )


def test_rows_without_a_usable_timestamp_land_in_exactly_one_hour(tmp_path, warehouse_url):
    # the source shares the warehouse's engine (and PostgreSQL database): both readers placed
    source = source_with(tmp_path, HOSTILE, None if "duckdb" in warehouse_url else warehouse_url)
    add_catalog(warehouse_url)
    extract_and_validate(warehouse_url, source, HOUR)
    extract_and_validate(warehouse_url, source, NEXT)
    extract_and_validate(warehouse_url, source, HOUR)  # a re-run neither loses nor doubles

    rows = routed(warehouse_url)
    assert sorted(r[0] for r in rows) == sorted(r[0] for r in HOSTILE)  # each row exactly once
    where = {event_id: (hour, outcome) for event_id, hour, outcome in rows}
    assert {k: v[1] for k, v in where.items() if v[1] != "accepted"} == EXPECTED
    # placed by received_at when occurred_at is not believable; by the first extract (the
    # window's first hour) when neither is; the hour after never takes it again
    assert where["year_2999"][0] == where["no_occurred"][0] == HOUR
    assert where["no_time_at_all"][0] == HOUR
    assert where["small_skew"] == (HOUR, "accepted")  # 2 minutes of clock skew is tolerated
    assert where["next_hour"] == (NEXT, "accepted")
    assert query(
        warehouse_url,
        "select partition_hour, extracted, accepted, quarantined from metering.partition_quality "
        "order by 1",
    ) == [(HOUR, 8, 2, 6), (NEXT, 1, 1, 0)]
    reasons = dict(
        query(
            warehouse_url,
            "select event_id, quarantine_reason from metering.quarantined_usage_events",
        )
    )
    assert "after its received_at" in reasons["received_first"]
    assert "METERING_PARTITIONS_START" in reasons["year_1900"]
    assert "occurred_at and received_at" in reasons["no_time_at_all"]
    assert "longer than 255" in reasons[LONG_ID]


def test_the_source_recount_sees_a_lost_and_a_doubled_row(tmp_path, duckdb_url):
    source = source_with(tmp_path, HOSTILE)
    add_catalog(duckdb_url)
    extract_and_validate(duckdb_url, source, HOUR)

    def recount():
        with Database(duckdb_url).connect() as connection:
            return source_recount(
                connection, source_url=source, source_dir=None, start=HOUR,
                end=NEXT, first_hour=FIRST_HOUR,
            )  # fmt: skip

    assert (recount().arrived, recount().extracted, recount().adds_up) == (8, 8, True)
    with Database(duckdb_url).connect() as connection:
        connection.execute("delete from metering.raw_usage_events where event_id = 'year_2999'")
    assert (recount().missing, recount().adds_up) == (1, False)
    with Database(duckdb_url).connect() as connection:
        for _ in range(2):  # the lost row's place, then one more: a row counted twice
            connection.execute(
                "insert into metering.raw_usage_events select * from metering.raw_usage_events "
                "where event_id = 'good' limit 1"
            )
    assert (recount().surplus, recount().adds_up) == (1, False)


def test_counts_add_up_counts_the_source_side(tmp_path, duckdb_url, monkeypatch):
    """The one Dagster path: the blocking check reports the source's own count."""
    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "1")
    source = source_with(tmp_path, HOSTILE)
    add_catalog(duckdb_url)
    result = run(duckdb_url, source, HOUR)
    assert result.success
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "counts_add_up")
    assert check.passed
    assert check.metadata["source_rows"].value == 8
    assert check.metadata["extracted"].value == 8
    assert check.metadata["quarantined"].value == 6


def test_jsonl_quantity_as_number_or_string_is_read_as_the_number(tmp_path, duckdb_url):
    folder = tmp_path / "landing"
    folder.mkdir()
    lines = [
        {
            "event_id": f"j{i}",
            "customer_id": "customer_0001",
            "meter": "api_calls",
            "quantity": i if i % 2 else f"{i}.5",
            "occurred_at": (HOUR + timedelta(seconds=i)).isoformat(),
            "received_at": (HOUR + timedelta(seconds=i + 1)).isoformat(),
        }
        for i in range(316)
    ]
    (folder / "events.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    add_catalog(duckdb_url)
    extract_and_validate(duckdb_url, "duckdb:///unused.duckdb", HOUR, source_dir=folder)
    assert query(duckdb_url, "select count(*) from metering.quarantined_usage_events") == [(0,)]
    total = query(duckdb_url, "select count(*), sum(quantity) from metering.accepted_usage_events")
    expected = sum(Decimal(i) if i % 2 else Decimal(f"{i}.5") for i in range(316))
    assert (total[0][0], Decimal(total[0][1])) == (316, expected)


def test_a_nul_byte_quarantines_its_row_and_the_hour_flows(tmp_path, warehouse_url):
    rows = [
        ("good", "customer_0001", "api_calls", "5", HOUR + M, HOUR + 2 * M),
        ("nul", "customer\x00_0001", "api_calls", "1", HOUR + 3 * M, HOUR + 4 * M),
    ]
    source = source_with(tmp_path, rows)
    with Database(source).connect() as connection:
        connection.execute(
            "insert into usage_events values ('nul_property', 'customer_0001', 'api_calls', '2', "
            "?, ?, null, ?)",
            (HOUR + 5 * M, HOUR + 6 * M, '{"note": "a\x00b"}'),
        )
    add_catalog(warehouse_url)
    extract_and_validate(warehouse_url, source, HOUR)
    assert routed(warehouse_url) == [
        ("good", HOUR, "accepted"),
        ("nul", HOUR, "unreadable_text"),
        ("nul_property", HOUR, "accepted"),  # properties are never billed: U+FFFD stands in
    ]
    assert query(warehouse_url, "select customer_id from metering.quarantined_usage_events") == [
        ("customer\ufffd_0001",)
    ]


GOOD_CSV = (
    "event_id,customer_id,meter,quantity,occurred_at,received_at\n"
    "c1,customer_0001,api_calls,1,2026-10-01 10:01:00,2026-10-01 10:02:00\n"
)


@pytest.mark.parametrize(
    ("name", "content", "named"),
    [
        ("cut.csv", GOOD_CSV + "c2,customer_0001,api", "Line: 3"),
        ("cut.jsonl", '{"event_id": "j1", "quantity": 1}\n{"event_id": "j2", "quan', "line"),
        ("cut.parquet", None, "cut.parquet"),
    ],
)
def test_a_truncated_file_fails_the_extract_naming_it_and_where(
    tmp_path, duckdb_url, name, content, named
):
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "good.csv").write_text(GOOD_CSV)
    if content is None:
        pq.write_table(
            pa.table({"event_id": ["p"] * 1000, "quantity": ["1"] * 1000}), folder / name
        )
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    else:
        (folder / name).write_text(content)
    with pytest.raises(SourceFileError) as raised:
        extract_and_validate(duckdb_url, "duckdb:///unused.duckdb", HOUR, source_dir=folder)
    message = str(raised.value)
    assert name in message and named in message, message
    assert "no column" not in message
    assert "re-export" in message


def test_a_late_row_with_an_unbelievable_time_requests_the_hour_that_owns_it(tmp_path, duckdb_url):
    """The late-row sensor groups the source the way the extract places it: a row stamped
    2999 that lands after its hour was extracted asks for the hour of its received_at."""
    source = source_with(tmp_path, HOSTILE)
    add_catalog(duckdb_url)
    extract_and_validate(duckdb_url, source, HOUR)
    landed = HOUR + 50 * M
    with Database(source).connect() as connection:
        connection.execute(
            "insert into usage_events values ('late_2999', 'customer_0001', 'api_calls', '1', "
            "?, ?, null, null)",
            (datetime(2999, 1, 1, tzinfo=UTC), landed),
        )
    late, _, _ = find_late_hours(Database(source), Database(duckdb_url), HOUR + 20 * M)
    assert [(h.hour, h.rows, h.max_received_at) for h in late] == [(HOUR, 1, landed)]


def test_a_file_row_with_no_readable_time_is_held_by_one_hour(tmp_path, duckdb_url):
    """Without a received_at column the extraction time stands in for it, so it cannot place a
    row: one whose occurred_at is unreadable stays in the hour that first extracted it."""
    folder = tmp_path / "landing"
    folder.mkdir()
    (folder / "export.csv").write_text(
        "event_id,customer_id,meter,quantity,occurred_at\n"
        "c1,customer_0001,api_calls,1,2026-10-01 10:05:00\n"
        "c2,customer_0001,api_calls,1,yesterday\n"
    )
    add_catalog(duckdb_url)
    for hour in (NEXT, HOUR, NEXT):
        extract_and_validate(duckdb_url, "duckdb:///unused.duckdb", hour, source_dir=folder)
    assert routed(duckdb_url) == [("c1", HOUR, "accepted"), ("c2", NEXT, "missing_timestamp")]
