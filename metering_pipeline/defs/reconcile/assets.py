"""Reconciliation per billing period, its blocking check, and the repair job."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
from pydantic import Field

from metering_pipeline.billing.units import meter_units
from metering_pipeline.defs.partitions import billing_periods, parse_period_key
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.reconcile.grid import RULE
from metering_pipeline.reconcile.period import reconcile_period, write_results
from metering_pipeline.reconcile.repair import RepairStep, apply_repair, plan_repair
from metering_pipeline.reconcile.variance import flagged_summary, markdown_table, totals
from metering_pipeline.settings import load_settings

RECONCILIATION = dg.AssetKey("billing_period_reconciliation")
AGREEMENT_CHECK = "stripe_agrees_with_usage"


@dg.asset(
    key=RECONCILIATION,
    partitions_def=billing_periods,
    group_name="reconcile",
    kinds={"stripe"},
    deps=[
        dg.AssetDep("fct_usage_by_period", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("stripe_meter_events", partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep("stripe_subscription_items"),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            AGREEMENT_CHECK,
            asset=RECONCILIATION,
            blocking=True,
            description="Fails while what Stripe bills for any item (its meter, read on "
            "Stripe's minute grid, plus the invoice items that bill the item's window) differs "
            "from our usage by more than METERING_RECONCILIATION_THRESHOLD (default 1%); names "
            "the items.",
        )
    ],
)
def billing_period_reconciliation(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Ours vs the ledger vs Stripe, per metered item of the period, before the invoice closes.

    Run while the period is open and again in the finalization grace window: a flag then still
    leaves time to repair before Stripe freezes the invoice. Results replace the period's rows in
    metering.reconciliation_results.
    """
    settings = load_settings()
    threshold = settings.reconciliation_threshold
    period = parse_period_key(context.partition_key)
    gateway = stripe.gateway()
    rows = reconcile_period(
        warehouse.database, gateway, period, threshold, meter_units(settings.meter_units)
    )
    with warehouse.database.connect() as conn:
        write_results(conn, period, rows, datetime.now(UTC))
    summary = totals(rows)
    flagged = [row for row in rows if row.flagged]
    return dg.MaterializeResult(
        metadata={
            "reconciliation": dg.MetadataValue.md(markdown_table(rows)),
            "items": summary.items,
            "ours_total": float(summary.ours),
            "stripe_total": float(summary.stripe),
            "accounted_total": float(summary.accounted),
            "compared": RULE,
            "flagged_count": summary.flagged,
            "max_variance": float(summary.max_variance),
            "threshold": float(threshold),
            **gateway.stats.as_metadata(),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=AGREEMENT_CHECK,
                passed=not flagged,
                severity=dg.AssetCheckSeverity.ERROR,
                description=flagged_summary(rows, threshold),
                metadata={
                    "flagged_count": len(flagged),
                    "flagged_items": dg.MetadataValue.json(
                        [row.subscription_item_id for row in flagged]
                    ),
                    "max_variance": float(summary.max_variance),
                    "compared": RULE,
                    "compared_per_item": dg.MetadataValue.json(
                        {
                            row.subscription_item_id + " " + row.price_id: row.compared
                            for row in rows
                        }
                    ),
                },
            )
        ],
    )


class RepairConfig(dg.Config):
    dry_run: bool = Field(
        default=True, description="Show the deltas without sending them (the default)."
    )
    settle_minutes: float = Field(
        default=5.0,
        description="Items with an event sent this recently wait: Stripe's meter event "
        "summaries are eventually consistent and may not show it yet.",
    )


@dg.op(pool="stripe_push")
def repair_billing_period(
    context: dg.OpExecutionContext,
    config: RepairConfig,
    stripe: StripeResource,
    warehouse: WarehouseResource,
) -> dg.Output[int]:
    """Shows (dry run) or sends the deltas that bring Stripe back to our usage for the period.

    Shares the push's pool, so it never interleaves with a push of the same keys.
    """
    settings = load_settings()
    period = parse_period_key(context.partition_key)
    gateway = stripe.gateway()
    units = meter_units(settings.meter_units)
    steps = plan_repair(
        warehouse.database, gateway, period, units, timedelta(minutes=config.settle_minutes)
    )
    for step in steps:
        context.log.info(_describe(step, config.dry_run))
    report = None
    if not config.dry_run:
        report = apply_repair(
            warehouse.database,
            gateway,
            period,
            steps,
            late_usage_policy=settings.late_usage_policy,
            finalization_grace=timedelta(hours=settings.finalization_grace_hours),
            meter_units=units,
        )
        failure = report.money_at_risk()
        if failure:
            raise dg.Failure(description=f"the repair's push left money at risk:\n{failure}")
    sent = report.events_sent if report else 0
    return dg.Output(
        sent,
        metadata={
            "dry_run": config.dry_run,
            "deltas": dg.MetadataValue.md(_steps_table(steps)),
            "items_differing": len(steps),
            "items_skipped": sum(1 for step in steps if step.skipped),
            "events_sent": sent,
            "late_usage_queued": report.late_usage_count if report else 0,
            **gateway.stats.as_metadata(),
        },
    )


@dg.job(partitions_def=billing_periods)
def repair() -> None:
    """Bring Stripe back to our numbers for one billing period, through the push's ledger.
    Run with ``dry_run: true`` (the default) to see the deltas, then ``false`` to send them."""
    repair_billing_period()


def _describe(step: RepairStep, dry_run: bool) -> str:
    item = step.item
    what = (
        f"item {item.subscription_item_id} (customer {item.stripe_customer_id}, meter "
        f"{item.meter}): ours {item.ours.normalize():f}, Stripe {step.stripe.normalize():f}"
    )
    if step.skipped:
        return f"{what}; left alone: {step.skipped}"
    verb = "would send" if dry_run else "sending"
    return f"{what}; {verb} {step.send.normalize():f} through the ledger and the push"


def _steps_table(steps: list[RepairStep]) -> str:
    if not steps:
        return "Stripe already matches our usage for every item; nothing to send."
    lines = [
        "| subscription item | customer | meter | ours | Stripe | ledger | adopted | send | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for step in steps:
        cells = (
            step.item.subscription_item_id,
            step.item.stripe_customer_id,
            step.item.meter,
            _number(step.item.ours),
            _number(step.stripe),
            _number(step.ledger),
            _number(step.adopt),
            _number(step.send),
            step.skipped or "",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: Decimal | None) -> str:
    return "–" if value is None else f"{value.normalize():f}"


defs = dg.Definitions(assets=[billing_period_reconciliation], jobs=[repair])
