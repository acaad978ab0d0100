"""A small, hand-checkable world for the dbt tests: catalog rows and accepted events, written
straight into the warehouse through the same table code the pipeline uses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg

from metering_pipeline.billing.catalog import Catalog, Meter
from metering_pipeline.catalog_sync.intervals import ItemInterval, billing_periods
from metering_pipeline.catalog_sync.tables import ensure_catalog_tables, write_catalog
from metering_pipeline.defs.resources import WarehouseResource
from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline.defs.transform.project import dbt_resource
from metering_pipeline.quality.tables import ensure_quality_tables
from metering_pipeline.warehouse import Database

ANCHOR = datetime(2026, 10, 5, tzinfo=UTC)
OCT = (datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))
NOV = (datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 12, 5, tzinfo=UTC))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Item:
    id: str
    customer: str
    meter: str
    valid_from: datetime
    valid_to: datetime | None = None
    anchor: datetime = ANCHOR


def write_catalog_rows(url: str, meters: dict[str, str], items: list[Item]) -> None:
    """``meters`` maps event_name to our aggregation mode."""
    intervals = [
        ItemInterval(
            subscription_item_id=item.id,
            subscription_id=f"sub_{item.customer}",
            stripe_customer_id=item.customer,
            price_id=f"price_{item.id}",
            meter_event_name=item.meter,
            billing_mode="flexible",
            billing_cycle_anchor=item.anchor,
            interval="month",
            interval_count=1,
            valid_from=item.valid_from,
            valid_to=item.valid_to,
            current_period_start=NOV[0],
            current_period_end=NOV[1],
        )
        for item in items
    ]
    catalog = Catalog(
        customers=(),
        meters=tuple(
            Meter(id=f"mtr_{name}", event_name=name, display_name=name, formula="sum")
            for name in meters
        ),
        prices=(),
        subscriptions=(),
    )
    with Database(url).connect() as conn:
        ensure_catalog_tables(conn)
        write_catalog(
            conn,
            catalog,
            intervals,
            billing_periods(intervals),
            metadata_key="metering_customer_id",
            meter_modes=meters,
            synced_at=datetime.now(UTC),
        )


def insert_events(url: str, events: list[tuple]) -> None:
    """``(event_id, stripe_customer_id, meter, quantity, occurred_at[, reason[, received_at]])``."""
    rows = []
    for event in events:
        event_id, customer, meter, quantity, occurred_at, *rest = event
        reason = rest[0] if rest else None
        received_at = rest[1] if len(rest) > 1 else occurred_at
        hour = occurred_at.replace(minute=0, second=0, microsecond=0)
        rows.append(
            (
                event_id,
                f"app_{customer}",
                customer,
                meter,
                Decimal(str(quantity)),
                occurred_at,
                received_at,
                reason,
                hour,
            )
        )
    with Database(url).connect() as conn:
        ensure_quality_tables(conn)
        conn.executemany(
            "insert into metering.accepted_usage_events (event_id, customer_id, "
            "stripe_customer_id, meter, quantity, occurred_at, received_at, reason, "
            "partition_hour) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def run_models(
    url: str, first_hour: str, last_hour: str, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """Materialize the dbt assets for the hour partitions first_hour..last_hour as one run."""
    return dg.materialize(
        [usage_models],
        instance=instance,
        resources={
            "dbt": dbt_resource(),
            "warehouse": WarehouseResource(url=url),
        },
        tags={
            "dagster/asset_partition_range_start": first_hour,
            "dagster/asset_partition_range_end": last_hour,
        },
    )


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with Database(url).connect() as conn:
        return conn.fetchall(sql, params)
