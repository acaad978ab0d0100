"""Catalog corrections: billed rows the catalog now rejects stay billed until an operator
confirms taking them back; until then every push run fails, naming them."""

import dagster as dg

from metering_pipeline.defs.automation.jobs import WAREHOUSE_TAGS
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.push.assets import stripe_meter_events
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.resources import WarehouseResource
from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline.quality.corrections import CORRECTIONS, Correction, pending_corrections

confirm_corrections = dg.define_asset_job(
    "confirm_corrections",
    selection=dg.AssetSelection.assets(validated_usage_events, usage_models, stripe_meter_events),
    partitions_def=hourly_partitions,
    tags=WAREHOUSE_TAGS,
    description="Apply confirmed catalog corrections: launch over the hours the correction names "
    "with run config ops.validated_usage_events.config.confirm_corrections = [ids]; the rows "
    "go to quarantine and the push sends the negative delta through the ledger.",
)


def how_to_confirm(corrections: list[Correction]) -> str:
    """The run that applies them, and the way to withdraw them instead."""
    first = min(c.first_hour for c in corrections)
    last = max(c.last_hour for c in corrections)
    ids = ", ".join(c.correction_id for c in corrections)
    return (
        f"To take the usage back, launch job confirm_corrections for partitions "
        f"{hourly_partitions.get_partition_key_for_timestamp(first.timestamp())} to "
        f"{hourly_partitions.get_partition_key_for_timestamp(last.timestamp())} with run config "
        f"`ops: {{validated_usage_events: {{config: {{confirm_corrections: [{ids}]}}}}}}`. "
        "If the catalog change was a mistake, put it right in Stripe (the customer's metadata, "
        "the meter), sync the catalog and re-run those hours: the correction is withdrawn."
    )


@dg.asset_check(
    asset=stripe_meter_events,
    blocking=True,
    description=f"Fails while {CORRECTIONS} holds a pending correction: billed rows the catalog "
    "now rejects (unknown_meter, unmapped_customer) stay billed until an operator confirms "
    "taking them back, so the push cannot silently un-bill them.",
)
def catalog_corrections_confirmed(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    with warehouse.database.connect() as conn:
        corrections = pending_corrections(conn)
    table = "\n".join(
        f"| {c.correction_id} | {c.stripe_customer_id} ({c.customer_id}) | {c.meter} | "
        f"{c.reason_code} | {c.events} | {c.quantity.normalize():f} | "
        f"{', '.join(f'{a:f} {cur}' for cur, a in c.amounts().items()) or 'unknown'} |"
        for c in corrections
    )
    return dg.AssetCheckResult(
        passed=not corrections,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(corrections)} catalog correction(s) wait for confirmation; their rows stay "
            "billed meanwhile. "
            + " ".join(c.describe() for c in corrections)
            + " "
            + how_to_confirm(corrections)
            if corrections
            else "no pending catalog correction"
        ),
        metadata={
            "pending_corrections": len(corrections),
            "corrections": dg.MetadataValue.md(
                "| correction | customer | meter | reason | events | quantity | money (minor) |\n"
                "|---|---|---|---|---|---|---|\n" + table
                if corrections
                else "none"
            ),
        },
    )


defs = dg.Definitions(jobs=[confirm_corrections], asset_checks=[catalog_corrections_confirmed])
