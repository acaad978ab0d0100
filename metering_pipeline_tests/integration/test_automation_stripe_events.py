"""The Stripe events sensor against the sandbox with a test clock: a plan change asks for a
catalog sync and a final push of that customer; the period's invoice asks for a final push, adds
the period's partition, and, once the push has run, the reconciliation of the ended period."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import dagster as dg

from metering_pipeline.defs.automation.jobs import (
    customer_final_push,
    period_reconciliation,
    stripe_catalog_sync,
)
from metering_pipeline.defs.automation.stripe_events import stripe_events
from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.partitions import billing_periods
from metering_pipeline.defs.push.assets import stripe_meter_events
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.reconcile.assets import billing_period_reconciliation
from metering_pipeline.defs.resources import SourceResource, StripeResource, WarehouseResource
from metering_pipeline.defs.stripe_catalog.assets import stripe_catalog
from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline.defs.transform.project import dbt_resource
from metering_pipeline_tests.integration.usage_world import insert_events, run_models
from metering_pipeline_tests.sandbox.support import (
    advance,
    clocked_customer,
    meter,
    metered_price,
    subscribe,
    ts,
)

PERIOD_KEY = "2026-11-05T00:00:00Z/2026-12-05T00:00:00Z"


def code_location(resources: dict) -> dg.Definitions:
    """The sensor with the jobs it launches and their assets, as the code location holds them."""
    return dg.Definitions(
        assets=[
            raw_usage_events, validated_usage_events, usage_models, stripe_meter_events,
            stripe_catalog, billing_period_reconciliation,
        ],
        jobs=[stripe_catalog_sync, customer_final_push, period_reconciliation],
        sensors=[stripe_events],
        resources=resources,
    )  # fmt: skip


def tick(instance, resources, cursor=None) -> dg.SensorExecutionData:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources=resources,
        definitions=code_location(resources),
    )
    # the daemon checks a dynamic partition key against the instance; so does this test
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        return stripe_events.evaluate_tick(context)


def by_job(data: dg.SensorExecutionData) -> dict[str, list[dg.RunRequest]]:
    jobs: dict[str, list[dg.RunRequest]] = {}
    for request in data.run_requests:
        jobs.setdefault(request.job_name, []).append(request)
    return jobs


def test_plan_change_and_invoice_become_sync_push_and_reconciliation(
    duckdb_url, stripe_sandbox, stripe_client
):
    api_calls = meter(stripe_client, "api_calls")
    basic = metered_price(stripe_client, api_calls.id, unit_amount_decimal="2")
    pro = metered_price(stripe_client, api_calls.id, unit_amount_decimal="1")
    customer, clock = clocked_customer(
        stripe_client, ts(2026, 11, 5), metadata={"metering_customer_id": "app_0"}
    )
    subscription = subscribe(stripe_client, customer.id, basic.id)
    advance(stripe_client, clock.id, ts(2026, 11, 12))
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "stripe": StripeResource(api_base=stripe_sandbox.url),
        "warehouse": WarehouseResource(url=duckdb_url),
        "source": SourceResource(url=duckdb_url),
        "dbt": dbt_resource(),
    }

    # 1. First tick: the subscription's creation asks for a catalog sync, no push.
    first = tick(instance, resources)
    assert list(by_job(first)) == [stripe_catalog_sync.name]
    cursor = json.loads(first.cursor)
    assert cursor["after"].startswith("evt_") and cursor["waiting"] == {}
    assert not tick(instance, resources, first.cursor).run_requests  # nothing new since

    # 2. The metered item changes price: sync the catalog, then push that customer now.
    item = subscription["items"]["data"][0]
    stripe_client.v1.subscriptions.update(
        subscription.id, {"items": [{"id": item.id, "price": pro.id}]}
    )
    change = tick(instance, resources, first.cursor)
    jobs = by_job(change)
    assert set(jobs) == {stripe_catalog_sync.name, customer_final_push.name}
    [push] = jobs[customer_final_push.name]
    assert push.run_config == {"ops": {"push_customer": {"config": {"customer": customer.id}}}}
    assert change.run_requests[0].job_name == stripe_catalog_sync.name  # sync queued first

    # 3. The clock crosses the period's end: the invoice is created (a draft, in its grace).
    advance(stripe_client, clock.id, ts(2026, 12, 5, 0, 10))
    invoiced = tick(instance, resources, change.cursor)
    jobs = by_job(invoiced)
    [final_push] = jobs[customer_final_push.name]
    assert final_push.run_config["ops"]["push_customer"]["config"]["customer"] == customer.id
    assert period_reconciliation.name not in jobs  # not before the push has run
    [added] = invoiced.dynamic_partitions_requests
    assert added.partitions_def_name == billing_periods.name
    assert PERIOD_KEY in added.partition_keys
    waiting = json.loads(invoiced.cursor)["waiting"]
    assert waiting[PERIOD_KEY]["pushes"] == [final_push.run_key]
    instance.add_dynamic_partitions(billing_periods.name, list(added.partition_keys))

    # Still waiting while the push has not run.
    assert not tick(instance, resources, invoiced.cursor).run_requests

    # 4. The final push runs (as the launched run would, with its run key), for real.
    assert dg.materialize([stripe_catalog], instance=instance, resources=resources).success
    insert_events(duckdb_url, [
        ("after-change", customer.id, "api_calls", 40, datetime(2026, 11, 20, 10, 5, tzinfo=UTC)),
    ])  # fmt: skip
    assert run_models(duckdb_url, "2026-11-20-10:00", "2026-11-20-10:00", instance).success
    pushed = customer_final_push.execute_in_process(
        run_config=final_push.run_config,
        instance=instance,
        resources=resources,
        tags={"dagster/run_key": final_push.run_key},
    )
    assert pushed.success
    assert pushed.output_for_node("push_customer") == 1  # one meter event: the new item's usage

    # 5. Now the ended period is reconciled, once.
    after_push = tick(instance, resources, invoiced.cursor)
    [reconcile] = by_job(after_push)[period_reconciliation.name]
    assert reconcile.partition_key == PERIOD_KEY
    assert reconcile.tags["metering/billing_period"] == PERIOD_KEY
    assert json.loads(after_push.cursor)["waiting"] == {}
    assert not tick(instance, resources, after_push.cursor).run_requests

    # 6. The requested reconciliation runs: Stripe agrees with us on the ended period.
    job = code_location(resources).resolve_job_def(period_reconciliation.name)
    reconciled = job.execute_in_process(
        instance=instance, partition_key=reconcile.partition_key, tags=reconcile.tags
    )
    assert reconciled.success
    [materialization] = reconciled.asset_materializations_for_node("billing_period_reconciliation")
    assert materialization.metadata["flagged_count"].value == 0
    assert materialization.metadata["ours_total"].value == 40
    assert materialization.metadata["stripe_total"].value == 40


def test_invoice_and_plan_change_in_one_tick_wait_for_the_one_push_requested(
    duckdb_url, stripe_sandbox, stripe_client
):
    api_calls = meter(stripe_client, "api_calls")
    basic = metered_price(stripe_client, api_calls.id, unit_amount_decimal="2")
    pro = metered_price(stripe_client, api_calls.id, unit_amount_decimal="1")
    customer, clock = clocked_customer(stripe_client, ts(2026, 11, 5))
    subscription = subscribe(stripe_client, customer.id, basic.id)
    resources = {
        "stripe": StripeResource(api_base=stripe_sandbox.url),
        "warehouse": WarehouseResource(url=duckdb_url),
        "source": SourceResource(url=duckdb_url),
        "dbt": dbt_resource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    start = tick(instance, resources)

    advance(stripe_client, clock.id, ts(2026, 12, 5, 0, 10))  # invoice for Nov 5 - Dec 5
    item = subscription["items"]["data"][0]
    stripe_client.v1.subscriptions.update(
        subscription.id, {"items": [{"id": item.id, "price": pro.id}]}
    )
    both = tick(instance, resources, start.cursor)
    [push] = by_job(both)[customer_final_push.name]
    assert json.loads(both.cursor)["waiting"][PERIOD_KEY]["pushes"] == [push.run_key]
