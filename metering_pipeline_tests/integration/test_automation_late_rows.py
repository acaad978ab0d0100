"""The late-rows sensor: source rows received after their hour's extraction watermark send that
hour back through the pipeline, one range run per block of hours, tagged with its period's state
on the customer's (test) clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from metering_pipeline.defs.automation.late_rows import late_usage_rows
from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.resources import SourceResource, StripeResource, WarehouseResource
from metering_pipeline.defs.stripe_catalog.assets import stripe_catalog
from metering_pipeline.sources.extract import extract_window
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.sandbox.support import (
    advance,
    clocked_customer,
    meter,
    metered_price,
    subscribe,
    ts,
)

RANGE = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
NOV_HOUR = datetime(2026, 11, 18, 10, tzinfo=UTC)  # in the open period Nov 5 - Dec 5
OCT_HOUR = datetime(2026, 10, 20, 10, tzinfo=UTC)  # in the period closed on Nov 5
_HOUR = timedelta(hours=1)


def add_rows(source_url: str, rows: list[tuple]) -> None:
    """``(event_id, quantity, occurred_at, received_at)`` for customer app_0 on api_calls."""
    with Database(source_url).connect() as conn:
        conn.execute(
            "create table if not exists usage_events (event_id text, customer_id text, "
            "meter text, quantity decimal(38, 12), occurred_at timestamptz, "
            "received_at timestamptz, reason text, properties json)"
        )
        conn.executemany(
            "insert into usage_events values (?, 'app_0', 'api_calls', ?, ?, ?, null, null)",
            rows,
        )


def extract(source_url: str, warehouse_url: str, hour: datetime) -> None:
    extract_window(
        source_url=source_url, source_dir=None, warehouse=Database(warehouse_url),
        start=hour, end=hour + _HOUR, batch_rows=1000, first_hour=hourly_partitions.start,
    )  # fmt: skip


@pytest.fixture
def world(warehouse_url, tmp_path, stripe_sandbox, stripe_client):
    """A customer on a test clock at Nov 20 2026, subscribed since Oct 5; catalog synced; two
    hours extracted from a DuckDB source, one in each period."""
    api_calls = meter(stripe_client, "api_calls")
    price = metered_price(stripe_client, api_calls.id, unit_amount_decimal="1")
    customer, clock = clocked_customer(
        stripe_client, ts(2026, 10, 5), metadata={"metering_customer_id": "app_0"}
    )
    subscribe(stripe_client, customer.id, price.id)
    advance(stripe_client, clock.id, ts(2026, 11, 20))
    resources = {
        "warehouse": WarehouseResource(url=warehouse_url),
        "source": SourceResource(url=f"duckdb:///{tmp_path / 'source.duckdb'}"),
        "stripe": StripeResource(api_base=stripe_sandbox.url),
    }
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([stripe_catalog], instance=instance, resources=resources).success
    source_url = resources["source"].url
    add_rows(source_url, [
        ("nov-1", 5, NOV_HOUR + timedelta(minutes=10), NOV_HOUR + timedelta(minutes=11)),
        ("oct-1", 7, OCT_HOUR + timedelta(minutes=20), OCT_HOUR + timedelta(minutes=21)),
    ])  # fmt: skip
    extract(source_url, warehouse_url, NOV_HOUR)
    extract(source_url, warehouse_url, OCT_HOUR)
    return instance, resources, source_url


def tick(instance, resources, cursor=None) -> dg.SensorExecutionData:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return late_usage_rows.evaluate_tick(context)


def test_rows_after_the_watermark_request_their_hours_again_once(world, warehouse_url):
    instance, resources, source_url = world
    first = tick(instance, resources)
    assert not first.run_requests  # everything in the source was extracted
    assert first.cursor == (NOV_HOUR + timedelta(minutes=11)).isoformat()  # latest received_at

    landed = datetime(2026, 11, 19, 9, tzinfo=UTC)
    add_rows(source_url, [
        ("nov-late-a", 2, NOV_HOUR + timedelta(minutes=30), landed),
        ("nov-next-hour", 3, NOV_HOUR + _HOUR + timedelta(minutes=5), landed),
        ("oct-late", 4, OCT_HOUR + timedelta(minutes=40), landed),
        ("never-extracted", 1, datetime(2026, 11, 18, 14, 5, tzinfo=UTC), landed),
    ])  # fmt: skip
    # 11:00 is extracted after its row landed (not late); 14:00 was never extracted (the
    # schedule's job, not the sensor's)
    extract(source_url, warehouse_url, NOV_HOUR + _HOUR)
    second = tick(instance, resources, first.cursor)
    requests = {request.tags["metering/period_state"]: request for request in second.run_requests}
    assert set(requests) == {"open", "closed"}
    assert (requests["open"].tags[RANGE[0]], requests["open"].tags[RANGE[1]]) == (
        "2026-11-18-10:00",
        "2026-11-18-10:00",
    )
    assert (requests["closed"].tags[RANGE[0]], requests["closed"].tags[RANGE[1]]) == (
        "2026-10-20-10:00",
        "2026-10-20-10:00",
    )
    assert all(r.tags["metering/trigger"] == "late_rows" for r in second.run_requests)
    assert second.cursor == landed.isoformat()

    # Seen again before the runs ran: the same run keys, so Dagster launches nothing new.
    again = tick(instance, resources, second.cursor)
    assert {r.run_key for r in again.run_requests} == {r.run_key for r in second.run_requests}

    # Once the hours are extracted again, their watermarks cover the late rows.
    extract(source_url, warehouse_url, NOV_HOUR)
    extract(source_url, warehouse_url, OCT_HOUR)
    assert not tick(instance, resources, second.cursor).run_requests


def test_consecutive_late_hours_are_one_range_run(world, warehouse_url):
    instance, resources, source_url = world
    for offset in (1, 2):
        extract(source_url, warehouse_url, NOV_HOUR + offset * _HOUR)
    cursor = tick(instance, resources).cursor
    landed = datetime(2026, 11, 19, 9, tzinfo=UTC)
    add_rows(source_url, [
        (f"late-{offset}", 1, NOV_HOUR + offset * _HOUR + timedelta(minutes=1), landed)
        for offset in (0, 1, 2)
    ])  # fmt: skip
    [request] = tick(instance, resources, cursor).run_requests
    assert (request.tags[RANGE[0]], request.tags[RANGE[1]]) == (
        "2026-11-18-10:00",
        "2026-11-18-12:00",
    )
    assert request.tags["metering/period_state"] == "open"


def test_a_source_without_received_at_is_named_in_the_skip_reason(duckdb_url, tmp_path):
    source_url = f"duckdb:///{tmp_path / 'source.duckdb'}"
    resources = {
        "warehouse": WarehouseResource(url=duckdb_url),
        "source": SourceResource(url=source_url),
        "stripe": StripeResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    assert "no usage_events table" in tick(instance, resources).skip_message
    with Database(source_url).connect() as conn:
        conn.execute(
            "create table usage_events (event_id text, customer_id text, meter text, "
            "quantity decimal(38, 12), occurred_at timestamptz)"
        )
    skipped = tick(instance, resources)
    assert not skipped.run_requests
    assert "has no received_at column" in skipped.skip_message
    assert "Add received_at" in skipped.skip_message
