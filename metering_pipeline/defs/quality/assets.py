"""``validated_usage_events``: each raw row routed to accepted or to quarantine, with a reason."""

from datetime import UTC, datetime

import dagster as dg

from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.resources import WarehouseResource
from metering_pipeline.quality.rules import ValidationRules, validate_window
from metering_pipeline.settings import load_settings


def validation_rules() -> ValidationRules:
    settings = load_settings()
    return ValidationRules(
        quantity_min=settings.quantity_min,
        quantity_max=settings.quantity_max,
        customer_metadata_key=settings.customer_metadata_key,
        event_id_max_length=settings.event_id_max_length,
    )


@dg.asset(
    deps=[raw_usage_events],
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="extract",
    kinds={"sql"},
    description="Raw rows of the window routed, in SQL, to metering.accepted_usage_events or "
    "metering.quarantined_usage_events (reason code and an actionable sentence per row).",
)
def validated_usage_events(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    window = context.partition_time_window
    with warehouse.database.connect() as connection:
        summary = validate_window(
            connection, window.start, window.end, datetime.now(UTC), validation_rules()
        )
    share = summary.quarantined / summary.extracted if summary.extracted else 0.0
    context.log.info(
        f"[{window.start}, {window.end}): {summary.extracted} extracted, {summary.accepted} "
        f"accepted, {summary.quarantined} quarantined {summary.by_reason}"
    )
    return dg.MaterializeResult(
        metadata={
            "extracted": dg.MetadataValue.int(summary.extracted),
            "accepted": dg.MetadataValue.int(summary.accepted),
            "quarantined": dg.MetadataValue.int(summary.quarantined),
            "duplicates": dg.MetadataValue.int(summary.duplicates),
            "quarantine_share": dg.MetadataValue.float(round(share, 6)),
            "quarantined_by_reason": dg.MetadataValue.json(summary.by_reason),
            "window_start": dg.MetadataValue.text(window.start.isoformat()),
            "window_end": dg.MetadataValue.text(window.end.isoformat()),
        }
    )
