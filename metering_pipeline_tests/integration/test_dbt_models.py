"""The dbt models through Dagster, on DuckDB and PostgreSQL: exact quantities per subscription
item for refunds, duplicates, period boundaries, plan changes, every aggregation mode,
unattributed usage, and re-running an hour.

One world is built and materialized once per engine (a run of the 134 hours it spans); each
test then reads what a data engineer would check in the warehouse.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

import dagster as dg
import psycopg
import pytest

from metering_pipeline_tests.integration.usage_world import (
    NOV,
    OCT,
    Item,
    at,
    insert_events,
    query,
    run_models,
    write_catalog_rows,
)

FIRST_HOUR, LAST_HOUR = "2026-11-04-23:00", "2026-11-10-12:00"
PLAN_CHANGE = at("2026-11-10 12:30:00")
D_ANCHOR = at("2026-10-05 10:30:00")  # Stripe anchors carry the subscription's time of day

METERS = {
    "api_calls": "sum",
    "seats": "max",
    "storage_gb": "last_during_period",
    "licenses": "last_ever",
    "builds": "count",
}
ITEMS = [
    Item("si_a", "cus_a", "api_calls", at("2026-10-01 00:00:00")),
    Item("si_b_old", "cus_b", "api_calls", at("2026-10-01 00:00:00"), PLAN_CHANGE),
    Item("si_b_new", "cus_b", "api_calls", PLAN_CHANGE),
    Item("si_c_seats", "cus_c", "seats", at("2026-10-01 00:00:00")),
    Item("si_c_storage", "cus_c", "storage_gb", at("2026-10-01 00:00:00")),
    Item("si_c_licenses", "cus_c", "licenses", at("2026-10-01 00:00:00")),
    Item("si_c_builds", "cus_c", "builds", at("2026-10-01 00:00:00")),
    Item("si_d", "cus_d", "api_calls", at("2026-10-01 00:00:00"), anchor=D_ANCHOR),
]
EVENTS = [
    # cus_a: a period boundary, a refund and a harmless duplicate
    ("a-before-boundary", "cus_a", "api_calls", 3, at("2026-11-04 23:59:59.999999")),
    ("a-at-boundary", "cus_a", "api_calls", 5, at("2026-11-05 00:00:00")),
    ("a-1", "cus_a", "api_calls", 100, at("2026-11-06 10:00:00")),
    ("a-2", "cus_a", "api_calls", 50, at("2026-11-06 10:20:00")),
    ("a-refund", "cus_a", "api_calls", -30, at("2026-11-06 10:40:00"), "refund"),
    ("a-dup", "cus_a", "api_calls", 7, at("2026-11-06 11:05:00"), None, at("2026-11-06 11:06:00")),
    ("a-dup", "cus_a", "api_calls", 7, at("2026-11-06 11:05:00"), None, at("2026-11-06 11:09:00")),
    # cus_b: the 12:00 hour is cut by a plan change at 12:30
    ("b-1", "cus_b", "api_calls", 10, at("2026-11-10 12:10:00")),
    ("b-2", "cus_b", "api_calls", 1, at("2026-11-10 12:29:59.999999")),
    ("b-3", "cus_b", "api_calls", 4, at("2026-11-10 12:30:00")),
    ("b-4", "cus_b", "api_calls", 20, at("2026-11-10 12:50:00")),
    # cus_c: one meter per aggregation mode
    ("c-seats-1", "cus_c", "seats", 5, at("2026-11-06 10:00:00")),
    ("c-seats-2", "cus_c", "seats", 9, at("2026-11-07 10:00:00")),
    ("c-seats-3", "cus_c", "seats", 3, at("2026-11-08 10:00:00")),
    ("c-storage-1", "cus_c", "storage_gb", 10, at("2026-11-06 10:00:00")),
    ("c-storage-2", "cus_c", "storage_gb", 12, at("2026-11-07 10:00:00")),
    ("c-storage-3", "cus_c", "storage_gb", 7, at("2026-11-08 10:00:00")),
    ("c-licenses-oct", "cus_c", "licenses", 4, at("2026-11-04 23:30:00")),
    ("c-builds-1", "cus_c", "builds", 1, at("2026-11-06 10:00:00")),
    ("c-builds-2", "cus_c", "builds", 1, at("2026-11-06 10:01:00")),
    ("c-builds-3", "cus_c", "builds", 1, at("2026-11-07 10:00:00")),
    ("c-builds-fix", "cus_c", "builds", -1, at("2026-11-07 10:05:00"), "correction"),
    # cus_d: a period boundary at 10:30 cuts the 10:00 hour
    ("d-1", "cus_d", "api_calls", 2, at("2026-11-05 10:10:00")),
    ("d-2", "cus_d", "api_calls", 5, at("2026-11-05 10:30:00")),
    ("d-3", "cus_d", "api_calls", 1, at("2026-11-05 10:45:00")),
    # cus_x has no subscription item: visible, never billed, never dropped
    ("x-1", "cus_x", "api_calls", 42, at("2026-11-06 10:00:00")),
]


@pytest.fixture(
    scope="module", params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def world(request, tmp_path_factory) -> Iterator[tuple[str, dg.ExecuteInProcessResult]]:
    """A warehouse holding the world above after one materialization of its hours."""
    if request.param == "duckdb":
        url = f"duckdb:///{tmp_path_factory.mktemp('dbt') / 'warehouse.duckdb'}"
        admin, name = None, None
    else:
        admin = request.getfixturevalue("postgres_admin_url")
        name = f"metering_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        url = f"{admin.rpartition('/')[0]}/{name}"
    try:
        write_catalog_rows(url, METERS, ITEMS)
        insert_events(url, EVENTS)
        yield url, run_models(url, FIRST_HOUR, LAST_HOUR)
    finally:
        if admin:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')


def period_quantities(url: str) -> dict[tuple[str, object], Decimal]:
    rows = query(
        url,
        "select subscription_item_id, period_start, quantity from analytics.fct_usage_by_period",
    )
    return {(item, start): quantity for item, start, quantity in rows}


def test_one_run_materializes_every_model_for_every_hour(world):
    url, result = world
    assert result.success
    hours = 134
    for model in ("stg_usage_events", "int_usage_attributed", "fct_usage_hourly"):
        materialized = result.asset_materializations_for_node("usage_models")
        keys = {m.partition for m in materialized if m.asset_key == dg.AssetKey(model)}
        assert len(keys) == hours, f"{model} materialized {len(keys)} of {hours} hours"


def test_refund_and_duplicate_give_the_exact_period_total(world):
    url, _ = world
    # 5 at the boundary + 100 + 50 - 30 (refund) + 7 (sent twice, counted once)
    assert period_quantities(url)[("si_a", NOV[0])] == Decimal(132)
    staged = query(url, "select count(*) from analytics.stg_usage_events where event_id = 'a-dup'")
    assert staged == [(1,)]


def test_event_at_period_end_belongs_to_the_next_period(world):
    url, _ = world
    quantities = period_quantities(url)
    assert quantities[("si_a", OCT[0])] == Decimal(3)
    periods = query(
        url,
        "select period_start, period_end from analytics.int_usage_attributed "
        "where event_id = 'a-at-boundary'",
    )
    assert periods == [NOV]


def test_an_hour_cut_by_a_period_boundary_splits_at_the_instant(world):
    url, _ = world
    hourly = query(
        url,
        "select period_start, quantity from analytics.fct_usage_hourly "
        "where subscription_item_id = 'si_d' order by period_start",
    )
    assert hourly == [
        (at("2026-10-05 10:30:00"), Decimal(2)),
        (at("2026-11-05 10:30:00"), Decimal(6)),
    ]


def test_an_hour_cut_by_a_plan_change_splits_at_the_instant(world):
    url, _ = world
    hourly = query(
        url,
        "select subscription_item_id, quantity, event_count from analytics.fct_usage_hourly "
        "where stripe_customer_id = 'cus_b' order by subscription_item_id",
    )
    assert hourly == [("si_b_new", Decimal(24), 2), ("si_b_old", Decimal(11), 2)]
    windows = query(
        url,
        "select subscription_item_id, window_start, window_end, quantity "
        "from analytics.fct_usage_by_period where stripe_customer_id = 'cus_b' "
        "and period_start = ? order by subscription_item_id",
        (NOV[0],),
    )
    assert windows == [
        ("si_b_new", PLAN_CHANGE, NOV[1], Decimal(24)),
        ("si_b_old", NOV[0], PLAN_CHANGE, Decimal(11)),
    ]


@pytest.mark.parametrize(
    ("item", "period", "expected", "why"),
    [
        ("si_c_seats", NOV, 9, "max: the period's peak"),
        ("si_c_storage", NOV, 7, "last_during_period: the latest reading, not the largest"),
        ("si_c_licenses", OCT, 4, "last_ever: the reading itself"),
        ("si_c_licenses", NOV, 4, "last_ever: carried into a period without readings"),
        ("si_c_builds", NOV, 2, "count: three builds, one corrected away"),
    ],
)
def test_each_aggregation_mode(world, item, period, expected, why):
    url, _ = world
    assert period_quantities(url)[(item, period[0])] == Decimal(expected), why


def test_unattributed_usage_stays_visible_and_unbilled(world):
    url, result = world
    status = query(
        url, "select attribution_status from analytics.int_usage_attributed where event_id = 'x-1'"
    )
    assert status == [("no_active_item",)]
    billed = query(
        url, "select count(*) from analytics.fct_usage_hourly where stripe_customer_id = 'cus_x'"
    )
    assert billed == [(0,)]
    check = next(
        evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.check_name == "unattributed_usage"
    )
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN


def test_every_item_window_of_the_run_has_a_mart_row_used_or_not(world):
    """int_item_period_windows is the one definition of item windows: the mart has exactly its
    windows for the periods the run touched, and reconciliation reads the same view."""
    url, _ = world
    columns = "subscription_item_id, price_id, period_start, window_start, window_end"
    windows = query(
        url,
        f"select {columns} from analytics.int_item_period_windows "
        "where period_end > ? and period_start < ?",
        (at("2026-11-04 23:00:00"), at("2026-11-10 13:00:00")),
    )
    assert sorted(windows) == sorted(
        query(url, f"select {columns} from analytics.fct_usage_by_period")
    )
    assert ("si_b_old", "price_si_b_old", NOV[0], NOV[0], PLAN_CHANGE) in windows


def test_other_dbt_tests_pass_as_asset_checks(world):
    _, result = world
    failed = [
        e.check_name
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.check_name != "unattributed_usage"
    ]
    assert failed == []
    assert len(result.get_asset_check_evaluations()) >= 20


def test_re_running_an_hour_twice_changes_nothing(world):
    url, _ = world
    before = (
        query(url, "select count(*) from analytics.stg_usage_events"),
        query(url, "select * from analytics.fct_usage_hourly order by 1, 2, 3, 4, 5, 6, 7"),
        period_quantities(url),
    )
    for _ in range(2):
        assert run_models(url, "2026-11-06-10:00", "2026-11-06-10:00").success
    after = (
        query(url, "select count(*) from analytics.stg_usage_events"),
        query(url, "select * from analytics.fct_usage_hourly order by 1, 2, 3, 4, 5, 6, 7"),
        period_quantities(url),
    )
    assert after == before
    assert period_quantities(url)[("si_a", NOV[0])] == Decimal(132)
