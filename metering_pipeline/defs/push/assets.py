"""The push to Stripe: hourly partitions of usage become meter events, exactly once."""

from datetime import UTC, timedelta

import dagster as dg

from metering_pipeline.billing.units import meter_units
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.push import PushReport, push_usage
from metering_pipeline.push.tables import LEDGER, ensure_push_tables
from metering_pipeline.settings import load_settings


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=["fct_usage_by_period", "stripe_subscription_items"],
    pool="stripe_push",
    group_name="stripe_push",
    kinds={"stripe"},
)
def stripe_meter_events(
    context: dg.AssetExecutionContext, stripe: StripeResource, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    """Sends, per subscription item and billing period touched by these hours, the difference
    between our usage and what the ledger says Stripe already counts: one event per key per run,
    however many hours the run covers, so a backfill of pushed hours sends nothing. The pool
    keeps two pushes from overlapping; the ledger lock makes it safe even if they do.

    Fails (after the ledger has recorded every answer) when anything is left undelivered,
    unpushable or unexplained: the run-failure alert then names the keys and what to do."""
    settings = load_settings()
    gateway = stripe.gateway()
    before = gateway.stats
    window = context.partition_time_window
    report = push_usage(
        warehouse.database,
        gateway,
        late_usage_policy=settings.late_usage_policy,
        finalization_grace=timedelta(hours=settings.finalization_grace_hours),
        meter_units=meter_units(settings.meter_units),
        window=(window.start.astimezone(UTC), window.end.astimezone(UTC)),
        log=context.log.warning,
    )
    metadata = _metadata(report, (gateway.stats - before).as_metadata())
    failure = report.money_at_risk()
    if failure:
        raise dg.Failure(description=failure, metadata=metadata)
    return dg.MaterializeResult(metadata=metadata)


def _metadata(report: PushReport, stripe_stats: dict[str, float | int]) -> dict:
    amounts = report.late_usage_amount
    return {
        "keys": report.keys,
        "events_sent": report.events_sent,
        "already_delivered": report.already_delivered,
        "resent_pending": report.resent,
        "failed": report.failed,
        "undelivered": report.undelivered,
        "pending": report.pending,
        "oldest_pending_age_seconds": report.oldest_pending_seconds or 0.0,
        "verified_by_summaries": report.verified_delivered,
        "superseded_expired": report.superseded,
        "waiting_for_stripe_clock": report.waiting,
        "late_usage_count": report.late_usage_count,
        "late_usage_amount": dg.MetadataValue.json(amounts),
        **{f"late_usage_amount_{currency}": amount for currency, amount in amounts.items()},
        **stripe_stats,
        "problems": dg.MetadataValue.md(
            "\n".join(f"- {problem}" for problem in report.problems) or "none"
        ),
    }


@dg.asset_check(asset=stripe_meter_events)
def meter_events_delivered(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Every ledger entry is acknowledged by Stripe (``expired`` ones were superseded by a new
    entry and never count). ``pending`` entries are re-sent by the next push; ``failed`` ones
    were refused, ``rejected`` ones reported invalid after a 200 (Stripe's error reports): they
    need the fix their error names. Any of them is money Stripe does not hold."""
    with warehouse.database.connect() as conn:
        ensure_push_tables(conn)
        rows = conn.fetchall(
            f"select status, count(*), min(created_at) from {LEDGER} "
            "where status not in ('sent', 'expired') group by status"
        )
        examples = conn.fetchall(
            f"select stripe_customer_id, meter, period_start, sequence, status, last_error "
            f"from {LEDGER} where status not in ('sent', 'expired') order by created_at limit 20"
        )
    counts = {status: count for status, count, _ in rows}
    table = "\n".join(
        f"| {customer} | {meter} | {start:%Y-%m-%d} | {sequence} | {status} | {error or ''} |"
        for customer, meter, start, sequence, status, error in examples
    )
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "pending": counts.get("pending", 0),
            "failed": counts.get("failed", 0),
            "rejected": counts.get("rejected", 0),
            "undelivered": dg.MetadataValue.md(
                "| customer | meter | period | seq | status | last error |\n"
                "|---|---|---|---|---|---|\n" + table
                if table
                else "none"
            ),
        },
    )


# The ``stripe`` and ``warehouse`` resources come from the stripe_catalog domain and
# defs/resources.py: one instance per key, so the domains merge.
defs = dg.Definitions(assets=[stripe_meter_events], asset_checks=[meter_events_delivered])
