"""30 days of hourly partitions (720) backfill as one run and one ``dbt build``.

The single-run policy is Dagster's, the same on either warehouse; the models' window on
PostgreSQL is covered by the dbt model tests, which run on both engines."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import dagster as dg

from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline_tests.integration.usage_world import (
    OCT,
    Item,
    at,
    insert_events,
    query,
    run_models,
    write_catalog_rows,
)

MODELS = ("stg_usage_events", "int_usage_attributed", "fct_usage_hourly", "fct_usage_by_period")


def test_720_hours_backfill_as_one_run_and_one_dbt_build(duckdb_url):
    warehouse_url = duckdb_url
    write_catalog_rows(
        warehouse_url,
        {"api_calls": "sum"},
        [Item("si_a", "cus_a", "api_calls", at("2026-09-01 00:00:00"))],
    )
    # One event in each hour of the billing period, at a quarter past.
    insert_events(
        warehouse_url,
        [
            (f"e-{hour}", "cus_a", "api_calls", 2, OCT[0] + timedelta(hours=hour, minutes=15))
            for hour in range(720)
        ],
    )
    instance = dg.DagsterInstance.ephemeral()

    result = run_models(warehouse_url, "2026-10-05-00:00", "2026-11-03-23:00", instance)

    assert result.success
    assert usage_models.backfill_policy == dg.BackfillPolicy.single_run()
    assert len(instance.get_runs()) == 1
    materializations = result.asset_materializations_for_node("usage_models")
    for model in MODELS:
        hours = {m.partition for m in materializations if m.asset_key == dg.AssetKey(model)}
        assert len(hours) == 720, f"{model}: {len(hours)} of 720 hours"
    invocations = {m.metadata["invocation_id"].value for m in materializations}
    assert len(invocations) == 1, f"expected one dbt invocation, saw {len(invocations)}"
    assert query(
        warehouse_url,
        "select quantity, event_count from analytics.fct_usage_by_period "
        "where subscription_item_id = 'si_a' and period_start = ?",
        (OCT[0],),
    ) == [(Decimal(1440), 720)]
