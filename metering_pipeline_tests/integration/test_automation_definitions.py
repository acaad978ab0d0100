"""The automation domain loads beside the others, and its jobs keep the concurrency rules."""

from __future__ import annotations

import dagster as dg

from metering_pipeline.defs import automation
from metering_pipeline.defs.automation.jobs import WAREHOUSE_TAG
from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.push.assets import stripe_meter_events
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.reconcile.assets import billing_period_reconciliation
from metering_pipeline.defs.resources import StripeResource, default_resources
from metering_pipeline.defs.stripe_catalog.assets import stripe_catalog
from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline.defs.transform.project import dbt_resource

HOURLY = ["raw_usage_events", "validated_usage_events", "stg_usage_events",
          "int_usage_attributed", "int_item_period_windows", "fct_usage_hourly",
          "fct_usage_by_period", "stripe_meter_events"]  # fmt: skip


def repository() -> dg.RepositoryDefinition:
    assets = dg.Definitions(
        assets=[
            raw_usage_events, validated_usage_events, usage_models, stripe_meter_events,
            stripe_catalog, billing_period_reconciliation,
        ],
        resources={
            **default_resources(),
            "stripe": StripeResource(),
            "dbt": dbt_resource(),
        },
    )  # fmt: skip
    return dg.Definitions.merge(assets, automation.defs).get_repository_def()


def test_the_hourly_job_is_every_hourly_asset_with_a_single_run_backfill_policy():
    job = repository().get_job("hourly_usage")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == set(HOURLY)
    assert job.partitions_def == hourly_partitions
    graph = job.asset_layer.asset_graph
    for key in job.asset_layer.executable_asset_keys:
        assert graph.get(key).backfill_policy == dg.BackfillPolicy.single_run(), key


def test_every_launched_job_is_tagged_for_the_run_queue_and_pushes_share_one_pool():
    repo = repository()
    for name in ("hourly_usage", "stripe_catalog_sync", "period_reconciliation",
                 "customer_final_push"):  # fmt: skip
        assert repo.get_job(name).tags[WAREHOUSE_TAG] == "writer", name
    push_op = repo.get_job("customer_final_push").graph.node_named("push_customer")
    assert push_op.definition.pool == "stripe_push"
    push_asset = repo.get_job("hourly_usage").graph.node_named("stripe_meter_events")
    assert push_asset.definition.pool == "stripe_push"


def test_schedule_and_sensors_target_jobs_of_the_code_location():
    repo = repository()
    assert repo.get_schedule_def("hourly_usage_schedule").job_name == "hourly_usage"
    assert repo.get_sensor_def("late_usage_rows").job_name == "hourly_usage"
    assert {job.name for job in repo.get_sensor_def("stripe_events").jobs} == {
        "stripe_catalog_sync",
        "customer_final_push",
        "period_reconciliation",
    }
    assert repo.has_sensor_def("run_failure_alert")
    assert repo.has_sensor_def("check_failure_alert")
