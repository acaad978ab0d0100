"""``metering seed``: repeatable synthetic usage, with the hostile cases the pipeline survives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from metering_pipeline.cli import main
from metering_pipeline.sources.seed import customer_id, seed_usage
from metering_pipeline_tests.integration.test_extract import add_catalog, query, run

START = datetime(2026, 10, 1, tzinfo=UTC)
FINGERPRINT = (
    "select count(*), sum(quantity), count(distinct event_id), "
    "min(occurred_at), max(occurred_at), "
    "sum(length(customer_id) + length(meter) + length(event_id)) from usage_events"
)


def test_same_seed_same_rows_other_seed_other_rows(tmp_path) -> None:
    urls = [f"duckdb:///{tmp_path / name}.duckdb" for name in ("a", "b", "c")]
    for url, seed in zip(urls, (1, 1, 2), strict=True):
        seed_usage(url, customers=10, start=START, days=3, events=20_000, seed=seed, hostile=True)
    a, b, c = (query(url, FINGERPRINT)[0] for url in urls)
    assert a == b
    assert a != c


def test_regular_rows_follow_the_arguments(tmp_path) -> None:
    url = f"duckdb:///{tmp_path / 'source.duckdb'}"
    summary = seed_usage(
        url,
        customers=12,
        meters=["api_calls", "storage_gb", "seats"],
        start=START,
        days=2,
        events=30_000,
    )
    assert summary.rows == 30_000 and summary.end == START + timedelta(days=2)
    rows = query(
        url,
        "select count(*), count(distinct event_id), min(occurred_at), max(occurred_at), "
        "min(quantity), count(*) filter (where received_at < occurred_at), "
        "count(*) filter (where reason is not null) from usage_events",
    )[0]
    assert rows[:2] == (30_000, 30_000)
    assert rows[2] >= START and rows[3] < START + timedelta(days=2)
    assert rows[4] > 0 and rows[5] == 0 and rows[6] == 0
    meters = {m for (m,) in query(url, "select distinct meter from usage_events")}
    assert meters == {"api_calls", "storage_gb", "seats"}
    customers = {c for (c,) in query(url, "select distinct customer_id from usage_events")}
    assert customers <= {customer_id(n, 12) for n in range(1, 13)}
    assert "customer_0001" in customers and len(customers) >= 10
    # storage is fractional, counts are whole
    fractional = query(
        url,
        "select meter, count(*) filter (where quantity <> floor(quantity)) from usage_events "
        "group by meter order by meter",
    )
    assert dict(fractional)["api_calls"] == 0 and dict(fractional)["storage_gb"] > 0


def test_hostile_cases_are_present(tmp_path) -> None:
    url = f"duckdb:///{tmp_path / 'source.duckdb'}"
    summary = seed_usage(url, customers=5, start=START, days=1, events=10_000, hostile=True)
    assert summary.rows == 10_000 + sum(summary.hostile_rows.values())
    conflicts = query(
        url,
        "select count(*) from (select event_id from usage_events group by event_id "
        "having count(distinct quantity) > 1)",
    )[0][0]
    duplicates = query(
        url,
        "select count(*) from (select event_id from usage_events group by event_id "
        "having count(*) > count(distinct quantity))",
    )[0][0]
    assert conflicts >= 1 and duplicates >= 1
    refunds = query(
        url, "select count(*), min(reason) from usage_events where event_id like '%refund%'"
    )[0]
    assert refunds[0] == summary.hostile_rows["refunds"] and refunds[1] in ("correction", "refund")
    assert (
        query(url, "select max(quantity) from usage_events where event_id like '%refund%'")[0][0]
        < 0
    )
    late = query(
        url,
        "select min(received_at - occurred_at) from usage_events where event_id like '%late%'",
    )[0][0]
    assert late >= timedelta(days=2)
    edges = query(
        url,
        "select count(*) filter (where date_trunc('hour', occurred_at) = occurred_at), "
        "count(*) filter (where extract(microsecond from occurred_at) = 59999999) "
        "from usage_events where event_id like '%edge%'",
    )[0]
    assert edges[0] >= 1 and edges[1] >= 1
    malformed = query(
        url,
        "select count(*) filter (where customer_id is null), "
        "count(*) filter (where meter is null), count(*) filter (where quantity is null) "
        "from usage_events where event_id like '%bad%'",
    )[0]
    assert all(count >= 1 for count in malformed)


def test_seeded_hostile_usage_runs_through_extract_and_validation(tmp_path, warehouse_url):
    source = f"duckdb:///{tmp_path / 'source.duckdb'}"
    summary = seed_usage(
        source, customers=2, start=START, days=1, events=20_000, seed=3, hostile=True
    )
    add_catalog(warehouse_url)
    result = run(warehouse_url, source, START, START + timedelta(hours=23))
    assert result.success
    by_reason = dict(
        query(
            warehouse_url,
            "select reason_code, count(*) from metering.quarantined_usage_events group by 1",
        )
    )
    assert set(by_reason) >= {
        "conflicting_duplicate",
        "missing_field",
        "unknown_meter",
        "unmapped_customer",
        "quantity_out_of_bounds",
        "negative_without_reason",
    }
    extracted, accepted, quarantined = query(
        warehouse_url,
        "select sum(extracted), sum(accepted), sum(quarantined) from metering.partition_quality",
    )[0]
    # boundary rows one microsecond before midnight stay in the window; rows at the end belong
    # to the next day, and late rows are in their occurred_at hour: every seeded row in the day
    in_window = query(
        source,
        f"select count(*) from usage_events where occurred_at < "
        f"cast('{(START + timedelta(days=1)).isoformat()}' as timestamptz) or occurred_at is null",
    )[0][0]
    assert extracted == in_window and extracted == accepted + quarantined
    assert summary.rows >= extracted
    refunds = query(
        warehouse_url,
        "select count(*), sum(quantity) from metering.accepted_usage_events where quantity < 0",
    )[0]
    assert refunds[0] == summary.hostile_rows["refunds"] and Decimal(refunds[1]) < 0


def test_seed_into_postgres(postgres_url) -> None:
    summary = seed_usage(postgres_url, customers=3, start=START, days=1, events=5_000, hostile=True)
    count, distinct_customers, negative = query(
        postgres_url,
        "select count(*), count(distinct customer_id), "
        "count(*) filter (where quantity < 0 and reason is not null) from usage_events",
    )[0]
    assert count == summary.rows
    assert distinct_customers >= 3
    assert negative >= summary.hostile_rows["refunds"]


def test_cli_prints_rows_and_speed(tmp_path, capsys) -> None:
    url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    args = ["seed", "--url", url, "--events", "1000", "--customers", "3", "--days", "1"]
    main([*args, "--start", "2026-10-01T00:00:00+00:00", "--meters", "api_calls,seats"])
    out = capsys.readouterr().out
    assert "wrote 1,000 rows" in out and "rows/s" in out
    main([*args, "--start", "2026-10-01T00:00:00+00:00", "--replace", "--hostile"])
    out = capsys.readouterr().out
    assert "hostile rows: duplicates" in out
    # --replace dropped the first 1,000; the hostile run adds 4 duplicates, 1 conflict, 5 late,
    # 2 malformed, 2 refunds and 1 boundary row (its shares of 1,000, at least one each)
    assert query(url, "select count(*) from usage_events")[0][0] == 1000 + 15
