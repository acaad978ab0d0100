"""Asset checks on the extract: the GX suite, and the two blocking checks that guard dbt."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.resources import SourceResource, WarehouseResource
from metering_pipeline.quality.report import (
    UNPARSEABLE,
    raw_schema_problems,
    source_recount,
    window_counts,
)
from metering_pipeline.quality.suite import run_suite, sample_window
from metering_pipeline.settings import load_settings

WORST_HOURS_SHOWN = 10


@dg.asset_check(
    asset=raw_usage_events,
    partitions_def=hourly_partitions,
    description="Great Expectations 1.x suite over a stratified sample of the window: columns, "
    "not-null keys, numeric quantity within bounds, occurred_at in the window and not in the "
    "future. Row expectations allow the configured quarantine share (mostly).",
)
def great_expectations_suite(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    settings = load_settings()
    window = context.partition_time_window
    with warehouse.database.connect() as connection:
        frame, window_rows = sample_window(connection, window.start, window.end)
    result = run_suite(
        frame,
        window_rows=window_rows,
        start=window.start,
        end=window.end,
        now=datetime.now(UTC),
        quantity_min=settings.quantity_min,
        quantity_max=settings.quantity_max,
        max_quarantine_share=settings.max_quarantine_share,
    )
    table = "\n".join(
        f"| {o.expectation} | {o.column or ''} | {'pass' if o.success else 'FAIL'} | "
        f"{o.element_count} | {o.unexpected_count} | {o.unexpected_percent:.3f} |"
        for o in result.outcomes
    )
    return dg.AssetCheckResult(
        passed=result.success,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "sample_rows": dg.MetadataValue.int(result.sample_rows),
            "window_rows": dg.MetadataValue.int(result.window_rows),
            "failed_expectations": dg.MetadataValue.int(
                sum(not o.success for o in result.outcomes)
            ),
            "expectations": dg.MetadataValue.md(
                "| expectation | column | result | rows | unexpected | unexpected % |\n"
                "|---|---|---|---|---|---|\n" + table
            ),
        },
    )


@dg.asset_check(
    asset=validated_usage_events,
    partitions_def=hourly_partitions,
    blocking=True,
    description="Fails (and stops dbt) when the window itself is broken: raw schema not as "
    "contracted, nothing parseable, or a quarantine share above METERING_MAX_QUARANTINE_SHARE. "
    "Row-level problems alone only show up as counts by reason.",
)
def partition_level_quality(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    limit = float(load_settings().max_quarantine_share)
    window = context.partition_time_window
    with warehouse.database.connect() as connection:
        problems = raw_schema_problems(connection)
        counts = window_counts(connection, window.start, window.end)
    unparseable = sum(counts.by_reason.get(code, 0) for code in UNPARSEABLE)
    if counts.extracted and unparseable == counts.extracted:
        problems.append(f"none of the {counts.extracted} rows has the required fields parseable")
    if counts.quarantine_share > limit:
        problems.append(
            f"{counts.quarantined} of {counts.extracted} rows quarantined "
            f"({counts.quarantine_share:.2%}), above METERING_MAX_QUARANTINE_SHARE={limit:.2%}; "
            "read metering.quarantined_usage_events for this window, fix the source, re-run"
        )
    worst = sorted(
        (h for h in counts.hours if h.quarantined),
        key=lambda h: h.quarantined / max(h.extracted, 1),
        reverse=True,
    )[:WORST_HOURS_SHOWN]
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "partition is usable",
        metadata={
            "extracted": dg.MetadataValue.int(counts.extracted),
            "accepted": dg.MetadataValue.int(counts.accepted),
            "quarantined": dg.MetadataValue.int(counts.quarantined),
            "quarantine_share": dg.MetadataValue.float(round(counts.quarantine_share, 6)),
            "max_quarantine_share": dg.MetadataValue.float(limit),
            "quarantined_by_reason": dg.MetadataValue.json(counts.by_reason),
            "problems": dg.MetadataValue.json(problems),
            "worst_hours": dg.MetadataValue.md(
                "| hour | extracted | quarantined |\n|---|---|---|\n"
                + "\n".join(
                    f"| {h.partition_hour.isoformat()} | {h.extracted} | {h.quarantined} |"
                    for h in worst
                )
            ),
        },
    )


@dg.asset_check(
    asset=validated_usage_events,
    partitions_def=hourly_partitions,
    blocking=True,
    description="Nothing lost, nothing doubled: the source rows the window owns, recounted from "
    "the source by their own query, are all in the extract; and per hour, extracted = accepted "
    "+ quarantined, recounted from the tables.",
)
def counts_add_up(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource, source: SourceResource
) -> dg.AssetCheckResult:
    window = context.partition_time_window
    with warehouse.database.connect() as connection:
        recount = source_recount(
            connection,
            source_url=source.url,
            source_dir=Path(source.directory) if source.directory else None,
            start=window.start,
            end=window.end,
            first_hour=hourly_partitions.start,
        )
        counts = window_counts(connection, window.start, window.end)
    wrong = [h for h in counts.hours if not h.adds_up]
    problems = []
    if recount.extracted_at is None:
        problems.append("the window was never extracted; materialize raw_usage_events for it")
    elif recount.missing:
        problems.append(
            f"the source gives {recount.arrived} rows to the window that had landed before the "
            f"extract of {recount.extracted_at.isoformat()}, the extract holds "
            f"{recount.extracted}: {recount.missing} source row(s) were never extracted; re-run "
            "raw_usage_events and validated_usage_events for the window"
        )
    elif recount.surplus:
        problems.append(
            f"the extract holds {recount.extracted} rows, the source gives the window only "
            f"{recount.total}: {recount.surplus} row(s) are counted twice or no longer in the "
            "source; re-run raw_usage_events and validated_usage_events for the window"
        )
    if wrong:
        problems.append(
            f"{len(wrong)} hour(s) where extracted != accepted + quarantined, first "
            f"{wrong[0].partition_hour.isoformat()}: {wrong[0].extracted} extracted, "
            f"{wrong[0].accepted} accepted, {wrong[0].quarantined} quarantined; re-run "
            "validated_usage_events for those hours"
        )
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems)
        or "every source row of the window was extracted, and extracted = accepted + "
        "quarantined in every hour",
        metadata={
            "source_rows": dg.MetadataValue.int(recount.total),
            "source_rows_landed_before_extract": dg.MetadataValue.int(recount.arrived),
            "extracted": dg.MetadataValue.int(counts.extracted),
            "accepted": dg.MetadataValue.int(counts.accepted),
            "quarantined": dg.MetadataValue.int(counts.quarantined),
            "hours_not_adding_up": dg.MetadataValue.int(len(wrong)),
        },
    )
