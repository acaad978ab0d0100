"""The jobs that schedules and sensors launch, with the tags that keep runs from overlapping.

Ops that talk to Stripe's meters sit in the ``stripe_push`` pool (shared with the push asset and
``repair``); the run tags let a run queue cap one reconciliation per period and, on a DuckDB
warehouse (a single-writer file), one warehouse run at a time.
"""

from datetime import timedelta

import dagster as dg

from metering_pipeline.billing.units import meter_units
from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.partitions import billing_periods, hourly_partitions
from metering_pipeline.defs.push.assets import stripe_meter_events
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.reconcile.assets import RECONCILIATION
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.defs.stripe_catalog.assets import CATALOG_TABLES
from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline.push import push_usage
from metering_pipeline.settings import load_settings

WAREHOUSE_TAG = "metering/warehouse"
PERIOD_TAG = "metering/billing_period"
TRIGGER_TAG = "metering/trigger"
WAREHOUSE_TAGS = {WAREHOUSE_TAG: "writer"}

hourly_usage = dg.define_asset_job(
    "hourly_usage",
    selection=dg.AssetSelection.assets(
        raw_usage_events, validated_usage_events, usage_models, stripe_meter_events
    ),
    partitions_def=hourly_partitions,
    tags=WAREHOUSE_TAGS,
    description="Extract, validate, model and push a range of hours as one run "
    "(every asset has a single-run backfill policy).",
)

stripe_catalog_sync = dg.define_asset_job(
    "stripe_catalog_sync",
    selection=dg.AssetSelection.assets(*CATALOG_TABLES),
    tags=WAREHOUSE_TAGS,
    description="Re-read Stripe's catalog after a subscription changed.",
)

period_reconciliation = dg.define_asset_job(
    "period_reconciliation",
    selection=dg.AssetSelection.assets(RECONCILIATION),
    partitions_def=billing_periods,
    tags=WAREHOUSE_TAGS,
    description="Reconcile one billing period, e.g. in its invoice's finalization grace window.",
)


class FinalPushConfig(dg.Config):
    customer: str


@dg.op(pool="stripe_push")
def push_customer(
    context: dg.OpExecutionContext,
    config: FinalPushConfig,
    stripe: StripeResource,
    warehouse: WarehouseResource,
) -> dg.Output[int]:
    """Everything we hold for one customer, sent now: before a replaced item's usage or an
    ended period's invoice is final. The pool and the ledger lock keep it from racing the
    hourly push; the ledger's identifiers make a repeat harmless."""
    settings = load_settings()
    gateway = stripe.gateway()
    report = push_usage(
        warehouse.database,
        gateway,
        late_usage_policy=settings.late_usage_policy,
        finalization_grace=timedelta(hours=settings.finalization_grace_hours),
        meter_units=meter_units(settings.meter_units),
        customer=config.customer,
        log=context.log.warning,
    )
    failure = report.money_at_risk()
    if failure:
        raise dg.Failure(description=failure)
    return dg.Output(
        report.events_sent,
        metadata={
            "customer": config.customer,
            "keys": report.keys,
            "events_sent": report.events_sent,
            "resent_pending": report.resent,
            "failed": report.failed,
            "pending": report.pending,
            "late_usage_count": report.late_usage_count,
            **gateway.stats.as_metadata(),
            "problems": dg.MetadataValue.md(
                "\n".join(f"- {problem}" for problem in report.problems) or "none"
            ),
        },
    )


@dg.job(tags=WAREHOUSE_TAGS)
def customer_final_push() -> None:
    """Push one customer's usage now (launched by the Stripe events sensor)."""
    push_customer()
