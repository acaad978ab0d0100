"""Benchmark: seed a month into DuckDB, then extract + validate it as one single-run backfill.

    python -m metering_pipeline.defs.extract.benchmark --events 1000000

Prints seed rows/s, then per step wall time, rows/s and the pipeline process's peak RSS. The
pipeline runs in a child process so its peak memory is its own, not the seed's.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.quality.checks import (
    counts_add_up,
    great_expectations_suite,
    partition_level_quality,
)
from metering_pipeline.defs.resources import SourceResource, WarehouseResource
from metering_pipeline.quality.tables import ensure_quality_tables
from metering_pipeline.sources.seed import customer_id, seed_usage
from metering_pipeline.warehouse import Database

START = datetime(2026, 10, 1, tzinfo=UTC)


def _catalog(warehouse_url: str, customers: int, meters: list[str]) -> None:
    now = datetime.now(UTC)
    with Database(warehouse_url).connect() as connection:
        ensure_quality_tables(connection)
        connection.executemany(
            "insert into metering.stripe_meters (meter_id, event_name, display_name, formula, "
            "status, aggregation_mode, synced_at) values (?, ?, ?, 'sum', 'active', 'sum', ?)",
            [(f"mtr_{n}", name, name, now) for n, name in enumerate(meters)],
        )
        connection.executemany(
            "insert into metering.stripe_customers (stripe_customer_id, metering_customer_id, "
            "synced_at) values (?, ?, ?)",
            [(f"cus_{n}", customer_id(n, customers), now) for n in range(1, customers + 1)],
        )


def _pipeline(args: argparse.Namespace) -> None:
    """The measured part: one run over every hour of the seeded days."""
    _catalog(args.warehouse, args.customers, args.meters.split(","))
    last = START + timedelta(days=args.days) - timedelta(hours=1)
    began = time.perf_counter()
    result = dg.materialize(
        [
            raw_usage_events,
            validated_usage_events,
            great_expectations_suite,
            partition_level_quality,
            counts_add_up,
        ],
        resources={
            "warehouse": WarehouseResource(url=args.warehouse),
            "source": SourceResource(url=args.source),
        },
        tags={
            "dagster/asset_partition_range_start": START.strftime("%Y-%m-%d-%H:%M"),
            "dagster/asset_partition_range_end": last.strftime("%Y-%m-%d-%H:%M"),
        },
        raise_on_error=False,
    )
    wall = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    raw_meta = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == raw_usage_events.key
    )
    rows = raw_meta["rows"].value
    print(f"run success: {result.success}; {args.days * 24} hourly partitions in one run")
    for event in result.get_step_success_events():
        seconds = event.event_specific_data.duration_ms / 1000
        print(f"  step {event.step_key:<48} {seconds:8.2f} s")
    print(f"extract: {rows:,} rows at {raw_meta['rows_per_second'].value:,.0f} rows/s")
    print(
        f"extract + validate + checks: {wall:.2f} s wall, {rows / wall:,.0f} rows/s, "
        f"peak RSS {peak_mb:,.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--customers", type=int, default=100)
    parser.add_argument("--meters", default="api_calls,storage_gb,seats")
    parser.add_argument("--hostile", action="store_true")
    parser.add_argument("--pipeline-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline_only:
        _pipeline(args)
        return
    with tempfile.TemporaryDirectory(prefix="metering-bench-") as folder:
        source = f"duckdb:///{Path(folder) / 'source.duckdb'}"
        warehouse = f"duckdb:///{Path(folder) / 'warehouse.duckdb'}"
        summary = seed_usage(
            source,
            customers=args.customers,
            meters=args.meters.split(","),
            start=START,
            days=args.days,
            events=args.events,
            hostile=args.hostile,
        )
        print(
            f"seed: {summary.rows:,} rows in {summary.seconds:.2f} s "
            f"({summary.rows_per_second:,.0f} rows/s) into DuckDB"
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "metering_pipeline.defs.extract.benchmark",
                "--pipeline-only",
                "--source",
                source,
                "--warehouse",
                warehouse,
                "--days",
                str(args.days),
                "--customers",
                str(args.customers),
                "--meters",
                args.meters,
            ],
            check=True,
        )


if __name__ == "__main__":
    main()
