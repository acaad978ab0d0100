"""``raw_usage_events``: one hour (or a backfilled range, in one run) copied from the source."""

from pathlib import Path

import dagster as dg

from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.resources import SourceResource, WarehouseResource
from metering_pipeline.settings import load_settings
from metering_pipeline.sources.extract import extract_window
from metering_pipeline.sources.reader import redact


@dg.asset(
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="extract",
    kinds={"python", "sql"},
    description="Source usage rows of the partition window, as delivered (values as text), "
    "replacing any earlier extract of the same hours in one transaction.",
)
def raw_usage_events(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, source: SourceResource
) -> dg.MaterializeResult:
    window = context.partition_time_window
    summary = extract_window(
        source_url=source.url,
        source_dir=Path(source.directory) if source.directory else None,
        warehouse=warehouse.database,
        start=window.start,
        end=window.end,
        batch_rows=load_settings().extract_batch_rows,
        first_hour=hourly_partitions.start,
    )
    if summary.dropped_stages:
        context.log.warning(
            f"dropped stage tables a killed extract left: {', '.join(summary.dropped_stages)}"
        )
    context.log.info(
        f"extracted {summary.rows} rows for [{window.start}, {window.end}) in "
        f"{summary.seconds:.1f} s ({summary.rows_per_second:,.0f} rows/s)"
    )
    return dg.MaterializeResult(
        metadata={
            "rows": dg.MetadataValue.int(summary.rows),
            "rows_per_second": dg.MetadataValue.float(round(summary.rows_per_second, 1)),
            "seconds": dg.MetadataValue.float(round(summary.seconds, 3)),
            "window_start": dg.MetadataValue.text(window.start.isoformat()),
            "window_end": dg.MetadataValue.text(window.end.isoformat()),
            "hours": dg.MetadataValue.int(summary.hours),
            "batches": dg.MetadataValue.int(summary.batches),
            "held_by_other_hours": dg.MetadataValue.int(summary.held_elsewhere),
            "abandoned_stages_dropped": dg.MetadataValue.json(list(summary.dropped_stages)),
            "max_received_at": dg.MetadataValue.text(
                summary.max_received_at.isoformat() if summary.max_received_at else "none"
            ),
            "source": dg.MetadataValue.text(
                source.directory or f"usage_events at {redact(source.url)}"
            ),
        }
    )
