"""Validation: every raw row is accepted or quarantined with its reason; counts always add up."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import dagster as dg

from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.quality.rules import ValidationRules, validate_window
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_extract import (
    HOUR,
    PIPELINE,
    add_catalog,
    add_source_rows,
    make_source,
    query,
    run,
)

M = timedelta(minutes=1)

# (event_id, customer_id, meter, quantity, occurred_at, received_at, reason)
HOSTILE_HOUR = [
    ("ok", "customer_0001", "api_calls", "5", HOUR + M, HOUR + 2 * M),
    ("dup", "customer_0001", "api_calls", "2", HOUR + 3 * M, HOUR + 4 * M),
    ("dup", "customer_0001", "api_calls", "2.000", HOUR + 3 * M, HOUR + 30 * M),
    ("conflict", "customer_0002", "api_calls", "7", HOUR + 5 * M, HOUR + 6 * M),
    ("conflict", "customer_0002", "api_calls", "8", HOUR + 5 * M, HOUR + 20 * M),
    ("refund", "customer_0001", "api_calls", "-3", HOUR + 7 * M, HOUR + 8 * M, "refund"),
    ("negative", "customer_0001", "api_calls", "-4", HOUR + 9 * M, HOUR + 10 * M),
    ("nobody", "customer_0404", "api_calls", "1", HOUR + 11 * M, HOUR + 12 * M),
    ("literal", "cus_C", "storage_gb", "0.25", HOUR + 13 * M, HOUR + 14 * M),
    ("bogus", "customer_0001", "bogus_meter", "1", HOUR + 15 * M, HOUR + 16 * M),
    ("no_meter", "customer_0001", None, "1", HOUR + 17 * M, HOUR + 18 * M),
    ("text", "customer_0001", "api_calls", "abc", HOUR + 19 * M, HOUR + 20 * M),
    ("nan", "customer_0001", "api_calls", "NaN", HOUR + 21 * M, HOUR + 22 * M),
    ("huge", "customer_0001", "api_calls", "1e12", HOUR + 23 * M, HOUR + 24 * M),
    ("ambiguous", "customer_0009", "api_calls", "1", HOUR + 25 * M, HOUR + 26 * M),
    ("edge", "customer_0002", "api_calls", "1", HOUR, HOUR + 27 * M),
    ("last_us", "customer_0002", "api_calls", "1", HOUR + 60 * M - timedelta(microseconds=1)),
]
EXPECTED_QUARANTINE = {
    "conflict": "conflicting_duplicate",
    "negative": "negative_without_reason",
    "nobody": "unmapped_customer",
    "bogus": "unknown_meter",
    "no_meter": "missing_field",
    "text": "bad_quantity",
    "nan": "bad_quantity",
    "huge": "quantity_out_of_bounds",
    "ambiguous": "unmapped_customer",
}


def accepted_totals(url: str) -> dict[tuple[str, str], Decimal]:
    rows = query(
        url,
        "select stripe_customer_id, meter, sum(quantity) from metering.accepted_usage_events "
        "group by 1, 2",
    )
    return {(c, m): Decimal(q).normalize() for c, m, q in rows}


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_hostile_hour_routes_every_row_with_its_reason(tmp_path, warehouse_url, monkeypatch):
    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "1")  # this hour is mostly hostile
    source = make_source(tmp_path, HOSTILE_HOUR)
    add_catalog(warehouse_url)
    result = run(warehouse_url, source, HOUR)
    assert result.success

    quarantined = query(
        warehouse_url,
        "select event_id, reason_code, quarantine_reason, quantity "
        "from metering.quarantined_usage_events",
    )
    assert {r[0]: r[1] for r in quarantined} == EXPECTED_QUARANTINE
    reasons = {r[0]: r[2] for r in quarantined}
    # the conflict names the first row, and the later one (quantity 8) is the one held
    assert "customer_0002" in reasons["conflict"] and "quantity 7" in reasons["conflict"]
    assert [r[3] for r in quarantined if r[0] == "conflict"] == ["8"]
    assert "metering_customer_id=customer_0404" in reasons["nobody"]
    assert "matches 2 Stripe customers" in reasons["ambiguous"]
    assert "'abc'" in reasons["text"] and "re-run partition hour" in reasons["text"]

    # harmless duplicate: both rows accepted (staging dedupes); refund accepted as a negative
    assert query(
        warehouse_url,
        "select count(*) from metering.accepted_usage_events where event_id = 'dup'",
    ) == [(2,)]
    assert accepted_totals(warehouse_url) == {
        ("cus_A", "api_calls"): Decimal("5") + 2 * Decimal("2") - 3,
        ("cus_B", "api_calls"): Decimal("7") + 1 + 1,
        ("cus_C", "storage_gb"): Decimal("0.25"),
    }
    assert query(
        warehouse_url,
        "select extracted, accepted, quarantined, duplicates from metering.partition_quality",
    ) == [(17, 8, 9, 1)]
    evaluations = checks(result)
    assert evaluations["counts_add_up"].passed
    assert evaluations["partition_level_quality"].passed
    assert evaluations["partition_level_quality"].metadata["quarantined_by_reason"].data == {
        "bad_quantity": 2,
        "conflicting_duplicate": 1,
        "missing_field": 1,
        "negative_without_reason": 1,
        "quantity_out_of_bounds": 1,
        "unknown_meter": 1,
        "unmapped_customer": 2,
    }


def test_revalidating_the_same_hour_gives_the_same_rows(tmp_path, warehouse_url, monkeypatch):
    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "1")
    source = make_source(tmp_path, HOSTILE_HOUR)
    add_catalog(warehouse_url)
    snapshot_sql = (
        "select 'a', event_id, quantity, null from metering.accepted_usage_events union all "
        "select 'q', event_id, null, reason_code from metering.quarantined_usage_events"
    )
    assert run(warehouse_url, source, HOUR).success
    first = sorted(query(warehouse_url, snapshot_sql), key=str)
    assert run(warehouse_url, source, HOUR).success
    assert run(warehouse_url, source, HOUR, assets=[validated_usage_events]).success
    assert sorted(query(warehouse_url, snapshot_sql), key=str) == first
    assert query(warehouse_url, "select count(*) from metering.partition_quality") == [(1,)]


def test_a_conflict_in_a_later_hour_loses_to_the_first_received(tmp_path, warehouse_url):
    later = HOUR + timedelta(hours=1)
    source = make_source(
        tmp_path,
        [("x", "customer_0001", "api_calls", "1", HOUR + 10 * M, HOUR + 11 * M)]
        + [(f"n{i}", "customer_0001", "api_calls", "1", later + i * M) for i in range(30)]
        + [("x", "customer_0001", "api_calls", "1", later + 5 * M, later + 6 * M)],
    )
    add_catalog(warehouse_url)
    assert run(warehouse_url, source, HOUR).success
    assert run(warehouse_url, source, later).success  # a separate run for the next hour
    rows = query(
        warehouse_url,
        "select partition_hour, reason_code, quarantine_reason "
        "from metering.quarantined_usage_events",
    )
    assert len(rows) == 1 and rows[0][:2] == (later, "conflicting_duplicate")
    assert "partition hour 2026-10-01 10:00:00" in rows[0][2]
    assert accepted_totals(warehouse_url) == {("cus_A", "api_calls"): Decimal(31)}


def test_quarantine_share_above_the_setting_blocks_downstream(tmp_path, warehouse_url, monkeypatch):
    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "0.1")
    ran = []

    @dg.asset(
        deps=[validated_usage_events],
        partitions_def=hourly_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def downstream_usage() -> None:
        ran.append(True)

    source = make_source(
        tmp_path,
        [
            ("good", "customer_0001", "api_calls", "1", HOUR + M),
            ("bad1", "customer_0404", "api_calls", "1", HOUR + 2 * M),
            ("bad2", "customer_0001", "nope", "1", HOUR + 3 * M),
        ],
    )
    add_catalog(warehouse_url)
    result = run(warehouse_url, source, HOUR, assets=[*PIPELINE, downstream_usage])
    assert not result.success
    evaluation = checks(result)["partition_level_quality"]
    assert not evaluation.passed
    assert "2 of 3 rows quarantined" in evaluation.description
    assert "METERING_MAX_QUARANTINE_SHARE" in evaluation.description
    assert ran == []  # the blocking check stopped it
    assert checks(result)["counts_add_up"].passed  # nothing lost even when blocked


def test_nothing_parseable_blocks_even_with_a_lenient_share(tmp_path, warehouse_url, monkeypatch):
    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "1")
    source = make_source(
        tmp_path, [(f"e{i}", "customer_0001", "api_calls", "n/a", HOUR + i * M) for i in range(5)]
    )
    add_catalog(warehouse_url)
    result = run(warehouse_url, source, HOUR)
    evaluation = checks(result)["partition_level_quality"]
    assert not evaluation.passed
    assert "none of the 5 rows" in evaluation.description


def test_great_expectations_reports_each_expectation(tmp_path, warehouse_url, monkeypatch):
    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "1")
    source = make_source(tmp_path, HOSTILE_HOUR)
    add_catalog(warehouse_url)
    result = run(warehouse_url, source, HOUR)
    evaluation = checks(result)["great_expectations_suite"]
    assert evaluation.passed  # mostly = 1 - share = 0: row problems alone do not fail it
    table = evaluation.metadata["expectations"].value
    assert "expect_column_values_to_match_regex | quantity | pass | 17 | 2 |" in table
    assert "expect_column_values_to_not_be_null | meter | pass | 17 | 1 |" in table
    assert "expect_column_values_to_be_of_type | occurred_at | pass |" in table
    assert "expect_table_columns_to_match_set |  | pass |" in table

    monkeypatch.setenv("METERING_MAX_QUARANTINE_SHARE", "0.05")
    result = run(warehouse_url, source, HOUR)
    evaluation = checks(result)["great_expectations_suite"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["failed_expectations"].value >= 1


def test_a_row_in_the_future_is_quarantined(duckdb_url, tmp_path):
    """The clock check only bites when validation runs before the hour is over (clock skew)."""
    source = make_source(
        tmp_path,
        [
            ("now", "customer_0001", "api_calls", "1", HOUR + 5 * M),
            ("later", "customer_0001", "api_calls", "1", HOUR + 50 * M),
        ],
    )
    add_catalog(duckdb_url)
    assert run(duckdb_url, source, HOUR, assets=[PIPELINE[0]]).success
    rules = ValidationRules(Decimal(-100), Decimal(100), "metering_customer_id")
    with Database(duckdb_url).connect() as connection:
        summary = validate_window(connection, HOUR, HOUR + timedelta(hours=1), HOUR + 10 * M, rules)
    assert summary.by_reason == {"in_future": 1}
    assert query(duckdb_url, "select event_id from metering.quarantined_usage_events") == [
        ("later",)
    ]


def test_late_row_added_to_the_source_is_picked_up_on_rerun(tmp_path, warehouse_url):
    source = make_source(
        tmp_path, [(f"e{i}", "customer_0001", "api_calls", "1", HOUR + i * M) for i in range(20)]
    )
    add_catalog(warehouse_url)
    assert run(warehouse_url, source, HOUR).success
    add_source_rows(
        source, [("late", "customer_0002", "api_calls", "4", HOUR + 30 * M, HOUR + 3 * 60 * M)]
    )
    assert run(warehouse_url, source, HOUR).success
    assert accepted_totals(warehouse_url) == {
        ("cus_A", "api_calls"): Decimal(20),
        ("cus_B", "api_calls"): Decimal(4),
    }
    assert query(warehouse_url, "select extracted, accepted from metering.partition_quality") == [
        (21, 21)
    ]
