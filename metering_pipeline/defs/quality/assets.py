"""``validated_usage_events``: each raw row routed to accepted or to quarantine, with a reason."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.resources import WarehouseResource
from metering_pipeline.quality.corrections import (
    CorrectionError,
    confirm_corrections,
    held_rows,
)
from metering_pipeline.quality.rules import LOCK_KEY, ValidationRules, validate_window
from metering_pipeline.settings import load_settings


def validation_rules() -> ValidationRules:
    settings = load_settings()
    return ValidationRules(
        quantity_min=settings.quantity_min,
        quantity_max=settings.quantity_max,
        customer_metadata_key=settings.customer_metadata_key,
        event_id_max_length=settings.event_id_max_length,
    )


class ValidationConfig(dg.Config):
    confirm_corrections: list[str] = Field(
        default_factory=list,
        description="Ids of pending catalog corrections (check catalog_corrections_confirmed) "
        "to apply: their billed rows go to quarantine in this run, and the push sends the "
        "negative delta. The run's hours must cover every hour of each correction.",
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
    context: dg.AssetExecutionContext, config: ValidationConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    window = context.partition_time_window
    now = datetime.now(UTC)
    with warehouse.database.connect() as connection, connection.advisory_lock(LOCK_KEY):
        try:
            confirm_corrections(
                connection, config.confirm_corrections, window.start, window.end, now
            )
        except CorrectionError as error:
            raise dg.Failure(description=str(error)) from None
        summary = validate_window(connection, window.start, window.end, now, validation_rules())
        held = held_rows(connection, window.start, window.end)
    if held:
        context.log.warning(
            f"{held} row(s) accepted before are now rejected by the catalog and stay billed "
            "until their correction is confirmed; see check catalog_corrections_confirmed"
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
            "held_for_correction": dg.MetadataValue.int(held),
            "quarantine_share": dg.MetadataValue.float(round(share, 6)),
            "quarantined_by_reason": dg.MetadataValue.json(summary.by_reason),
            "window_start": dg.MetadataValue.text(window.start.isoformat()),
            "window_end": dg.MetadataValue.text(window.end.isoformat()),
        }
    )
