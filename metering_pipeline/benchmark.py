"""Benchmark: a 30-day month of N seeded events, backfilled in one run through extract, validate,
dbt and push against the Stripe sandbox at test mode's rate limit.

    python -m metering_pipeline.benchmark --events 1000000
    python -m metering_pipeline.benchmark --events 10000000

Prints the seed rate, then per stage the wall time and rows/s, the peak RSS of the pipeline
process and of its largest child (dbt), the Stripe API calls of the push against the floor (the
distinct subscription-item x price x period keys with usage: one call each), and the push time.
The pipeline runs in a child process so its memory is its own, not the seed's; the sandbox stays
in this process, serving it over loopback HTTP like a remote Stripe.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

START = datetime(2026, 10, 1, tzinfo=UTC)
METERS = ("api_calls", "messages")
TEST_MODE_RPS = 25.0  # Stripe's test-mode budget, enforced by the sandbox with 429s
STAGES = ("raw_usage_events", "validated_usage_events", "usage_models")  # rows/s is theirs
STRIPE_ID = re.compile(r"^[a-z]+_[A-Za-z0-9]{14,}$")
GRADUATED = (
    (100_000, "0.04"),
    (1_000_000, "0.025"),
    (None, "0.01"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--customers", type=int, default=50)
    parser.add_argument("--pipeline", help=argparse.SUPPRESS)  # JSON: the child's arguments
    args = parser.parse_args()
    if args.pipeline:
        _pipeline(json.loads(args.pipeline))
    else:
        _bench(args)


def _bench(args: argparse.Namespace) -> None:
    from metering_pipeline.settings import SANDBOX_API_KEY
    from metering_pipeline.sources.seed import customer_id, seed_usage
    from metering_pipeline.stripe_io.provision import Provisioner
    from metering_pipeline.stripe_sandbox import run_sandbox
    from metering_pipeline.stripe_setup.spec import TierSpec

    end = START + timedelta(days=args.days)
    with (
        tempfile.TemporaryDirectory(prefix="metering-bench-") as folder,
        run_sandbox(requests_per_second=TEST_MODE_RPS) as sandbox,
    ):
        source = f"duckdb:///{Path(folder) / 'source.duckdb'}"
        warehouse = f"duckdb:///{Path(folder) / 'warehouse.duckdb'}"
        summary = seed_usage(
            source,
            customers=args.customers,
            meters=list(METERS),
            start=START,
            days=args.days,
            events=args.events,
            hostile=True,
        )
        print(
            f"seed: {summary.rows:,} rows ({args.events:,} + hostile) in {summary.seconds:.1f} s, "
            f"{summary.rows_per_second:,.0f} rows/s into DuckDB; {args.customers} customers, "
            f"{args.days} days from {START:%Y-%m-%d}"
        )

        began = time.perf_counter()
        stripe = Provisioner(SANDBOX_API_KEY, sandbox.url, requests_per_second=TEST_MODE_RPS - 2)
        tiers = tuple(TierSpec(up_to, Decimal(amount)) for up_to, amount in GRADUATED)
        prices = {
            meter: stripe.tiered_price(stripe.meter(meter, meter), meter, "graduated", tiers)
            for meter in METERS
        }
        customers = [
            stripe.subscribed_customer(
                f"bench {n}",
                {"metering_customer_id": customer_id(n, args.customers)},
                START,
                prices,
            )
            for n in range(1, args.customers + 1)
        ]
        # Stripe's clock just before the period ends: every hour of usage is sendable.
        stripe.advance([c.clock_id for c in customers], end - timedelta(hours=1))
        print(
            f"Stripe catalog staged through the SDK in {time.perf_counter() - began:.1f} s: "
            f"{len(customers)} customers x {len(METERS)} metered items on test clocks"
        )
        child = {
            "source": source,
            "warehouse": warehouse,
            "sandbox": sandbox.url,
            "first": START.isoformat(),
            "last": (end - timedelta(hours=1)).isoformat(),
        }
        env = {**os.environ, "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true"}
        subprocess.run(
            [sys.executable, "-m", "metering_pipeline.benchmark", "--pipeline", json.dumps(child)],
            check=True,
            env=env,
        )


def _pipeline(args: dict) -> None:
    """The measured part, in its own process: catalog sync, then one run over every hour."""
    import dagster as dg

    from metering_pipeline.defs.resources import SourceResource, StripeResource, WarehouseResource
    from metering_pipeline.defs.transform.project import dbt_resource
    from metering_pipeline.stripe_sandbox import SandboxControl
    from metering_pipeline.tools.runs import hour_range_tags, run_job
    from metering_pipeline.warehouse import Database

    resources = {
        "warehouse": WarehouseResource(url=args["warehouse"]),
        "source": SourceResource(url=args["source"]),
        "dbt": dbt_resource(),
        "stripe": StripeResource(api_base=args["sandbox"]),
    }
    control = SandboxControl(args["sandbox"])
    first, last = datetime.fromisoformat(args["first"]), datetime.fromisoformat(args["last"])
    with dg.DagsterInstance.ephemeral() as instance:
        began = time.perf_counter()
        sync = run_job(instance, "stripe_catalog_sync", resources=resources)
        print(f"catalog sync: {time.perf_counter() - began:.1f} s, success {sync.success}")

        before = control.stats()["by_path"]
        began = time.perf_counter()
        result = run_job(
            instance, "hourly_usage", resources=resources, tags=hour_range_tags(first, last)
        )
        wall = time.perf_counter() - began
        after = control.stats()["by_path"]

    hours = int((last - first).total_seconds() // 3600) + 1
    meta = {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    rows = meta["raw_usage_events"]["rows"].value
    print(f"single-run backfill: {hours} hourly partitions in one run, success {result.success}")
    for event in result.get_step_success_events():
        seconds = event.event_specific_data.duration_ms / 1000
        rate = f"{rows / seconds:>12,.0f} rows/s" if event.step_key in STAGES else ""
        print(f"  {event.step_key:<50} {seconds:8.1f} s {rate}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"  whole run: {wall:.1f} s wall, {rows / wall:,.0f} rows/s; peak RSS {peak_mb:,.0f} MB "
        "(the pipeline process; dbt runs as its own process against the same 1 GB-capped DuckDB)"
    )

    with Database(args["warehouse"]).connect() as conn:
        floor = conn.fetchall(
            "select count(*) from (select distinct subscription_item_id, price_id, period_start "
            "from analytics.fct_usage_by_period where quantity <> 0) as keys"
        )[0][0]
        ledger = conn.fetchall(
            "select status, count(*) from metering.meter_event_ledger group by status"
        )
    calls = _diff(before, after)
    push = meta.get("stripe_meter_events", {})
    push_seconds = next(
        (
            e.event_specific_data.duration_ms / 1000
            for e in result.get_step_success_events()
            if e.step_key == "stripe_meter_events"
        ),
        float("nan"),
    )
    meter_events = sum(n for path, n in calls.items() if path.endswith("/billing/meter_events"))
    print(
        f"push: {meter_events} meter events for a floor of {floor} keys "
        f"(subscription item x price x period with usage); ledger {dict(ledger)}"
    )
    print(
        f"  Stripe API calls during the run: {sum(calls.values())} "
        + ", ".join(f"{path} {n}" for path, n in sorted(calls.items()))
    )
    print(
        f"  push step {push_seconds:.1f} s against the sandbox's {TEST_MODE_RPS:.0f} requests/s; "
        f"client retries {_value(push, 'stripe_retries')}, rate-limit wait "
        f"{_value(push, 'stripe_rate_limit_wait_seconds')} s"
    )


def _diff(before: dict, after: dict) -> dict[str, int]:
    """Requests per route during the run, with object ids folded into ``{id}``."""
    counts: dict[str, int] = {}
    for path, statuses in after.items():
        done = sum(statuses.values()) - sum(before.get(path, {}).values())
        if done:
            route = "/".join("{id}" if STRIPE_ID.match(part) else part for part in path.split("/"))
            counts[route] = counts.get(route, 0) + done
    return counts


def _value(metadata: dict, name: str):
    entry = metadata.get(name)
    return "n/a" if entry is None else entry.value


if __name__ == "__main__":
    main()
