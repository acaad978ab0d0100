"""The catalog tables of docs/architecture.md: created on first use, replaced whole on each sync.

The catalog is small (customers, meters, prices, items), so a sync rewrites every table in one
transaction: readers never see half a catalog. History lives in the intervals, which the sync
rebuilds from the previous table plus Stripe's events (see ``intervals.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from metering_pipeline.billing.catalog import Catalog, Price
from metering_pipeline.billing.modes import default_mode
from metering_pipeline.catalog_sync.intervals import ItemInterval
from metering_pipeline.catalog_sync.plausibility import (
    CatalogIds,
    customer_label,
    subscription_label,
)
from metering_pipeline.warehouse import Connection

DDL = (
    """
    create table if not exists metering.stripe_customers (
        stripe_customer_id text primary key,
        metering_customer_id text,
        test_clock text,
        email text,
        synced_at timestamptz not null
    )
    """,
    """
    create table if not exists metering.stripe_meters (
        meter_id text primary key,
        event_name text not null,
        display_name text,
        formula text not null,
        event_time_window text,
        status text not null,
        aggregation_mode text not null,
        synced_at timestamptz not null
    )
    """,
    """
    create table if not exists metering.stripe_prices (
        price_id text primary key,
        product_id text,
        meter_id text,
        currency text not null,
        billing_scheme text not null,
        tiers_mode text,
        unit_amount_decimal text,
        tiers text,
        transform_divide_by bigint,
        transform_round text,
        interval text not null,
        interval_count integer not null,
        synced_at timestamptz not null
    )
    """,
    """
    create table if not exists metering.stripe_subscription_items (
        subscription_item_id text not null,
        subscription_id text not null,
        stripe_customer_id text not null,
        price_id text not null,
        meter_event_name text,
        billing_mode text not null,
        billing_cycle_anchor timestamptz not null,
        valid_from timestamptz not null,
        valid_to timestamptz,
        current_period_start timestamptz not null,
        current_period_end timestamptz not null,
        synced_at timestamptz not null,
        primary key (subscription_item_id, valid_from)
    )
    """,
    """
    create table if not exists metering.billing_periods (
        subscription_item_id text not null,
        period_start timestamptz not null,
        period_end timestamptz not null,
        primary key (subscription_item_id, period_start)
    )
    """,
)

COLUMNS = {
    "stripe_customers": (
        "stripe_customer_id",
        "metering_customer_id",
        "test_clock",
        "email",
        "synced_at",
    ),
    "stripe_meters": (
        "meter_id",
        "event_name",
        "display_name",
        "formula",
        "event_time_window",
        "status",
        "aggregation_mode",
        "synced_at",
    ),
    "stripe_prices": (
        "price_id",
        "product_id",
        "meter_id",
        "currency",
        "billing_scheme",
        "tiers_mode",
        "unit_amount_decimal",
        "tiers",
        "transform_divide_by",
        "transform_round",
        "interval",
        "interval_count",
        "synced_at",
    ),
    "stripe_subscription_items": (
        "subscription_item_id",
        "subscription_id",
        "stripe_customer_id",
        "price_id",
        "meter_event_name",
        "billing_mode",
        "billing_cycle_anchor",
        "valid_from",
        "valid_to",
        "current_period_start",
        "current_period_end",
        "synced_at",
    ),
    "billing_periods": ("subscription_item_id", "period_start", "period_end"),
}


@dataclass(frozen=True)
class SyncCounts:
    customers: int
    unmapped_customers: int
    meters: int
    prices: int
    intervals: int
    closed_intervals: int
    billing_periods: int


def ensure_catalog_tables(conn: Connection) -> None:
    conn.ensure_schema()
    for statement in DDL:
        conn.execute(statement)


def read_intervals(conn: Connection) -> list[ItemInterval]:
    """The intervals the last sync wrote, with each price's interval for period maths."""
    rows = conn.fetchall(
        """
        select items.subscription_item_id, items.subscription_id, items.stripe_customer_id,
               items.price_id, items.meter_event_name, items.billing_mode,
               items.billing_cycle_anchor, coalesce(prices.interval, 'month'),
               coalesce(prices.interval_count, 1), items.valid_from, items.valid_to,
               items.current_period_start, items.current_period_end
        from metering.stripe_subscription_items as items
        left join metering.stripe_prices as prices on prices.price_id = items.price_id
        """
    )
    return [ItemInterval(*row) for row in rows]


def read_catalog_ids(conn: Connection) -> tuple[CatalogIds, datetime | None]:
    """The last good catalog's customers, meters and active subscriptions, and when it was
    synced: what a new read from Stripe is compared with before it may replace them."""
    customers = conn.fetchall(
        "select stripe_customer_id, metering_customer_id from metering.stripe_customers"
    )
    meters = conn.fetchall("select meter_id, event_name from metering.stripe_meters")
    subscriptions = conn.fetchall(
        "select distinct subscription_id, stripe_customer_id "
        "from metering.stripe_subscription_items where valid_to is null"
    )
    synced = conn.fetchone(
        "select max(synced_at) from (select synced_at from metering.stripe_customers "
        "union all select synced_at from metering.stripe_meters) as synced"
    )
    ids = CatalogIds(
        customers={id_: customer_label(id_, key) for id_, key in customers},
        meters=dict(meters),
        subscriptions={id_: subscription_label(id_, customer) for id_, customer in subscriptions},
    )
    return ids, synced[0] if synced else None


def write_catalog(
    conn: Connection,
    catalog: Catalog,
    intervals: Sequence[ItemInterval],
    periods: Sequence[tuple[str, datetime, datetime]],
    *,
    metadata_key: str,
    meter_modes: Mapping[str, str],
    synced_at: datetime,
) -> SyncCounts:
    """Replace every catalog table with this sync's view, in the caller's transaction."""
    customers = [
        (
            customer.id,
            customer.metadata.get(metadata_key),
            customer.test_clock,
            customer.email,
            synced_at,
        )
        for customer in catalog.customers
    ]
    meters = [
        (
            meter.id,
            meter.event_name,
            meter.display_name,
            meter.formula,
            meter.event_time_window,
            meter.status,
            meter_modes.get(meter.event_name) or default_mode(meter.formula),
            synced_at,
        )
        for meter in catalog.meters
    ]
    prices = [_price_row(price, synced_at) for price in catalog.prices]
    items = [
        (
            row.subscription_item_id,
            row.subscription_id,
            row.stripe_customer_id,
            row.price_id,
            row.meter_event_name,
            row.billing_mode,
            row.billing_cycle_anchor,
            row.valid_from,
            row.valid_to,
            row.current_period_start,
            row.current_period_end,
            synced_at,
        )
        for row in intervals
    ]
    for table, rows in (
        ("stripe_customers", customers),
        ("stripe_meters", meters),
        ("stripe_prices", prices),
        ("stripe_subscription_items", items),
        ("billing_periods", list(periods)),
    ):
        columns = COLUMNS[table]
        conn.execute(f"delete from metering.{table}")
        conn.executemany(
            f"insert into metering.{table} ({', '.join(columns)}) "
            f"values ({', '.join('?' * len(columns))})",
            rows,
        )
    return SyncCounts(
        customers=len(customers),
        unmapped_customers=sum(1 for row in customers if row[1] is None),
        meters=len(meters),
        prices=len(prices),
        intervals=len(items),
        closed_intervals=sum(1 for row in intervals if row.valid_to is not None),
        billing_periods=len(periods),
    )


def _price_row(price: Price, synced_at: datetime) -> tuple:
    tiers = (
        json.dumps(
            [
                {
                    "up_to": tier.up_to,
                    "unit_amount_decimal": str(tier.unit_amount_decimal),
                    "flat_amount_decimal": str(tier.flat_amount_decimal),
                }
                for tier in price.tiers
            ]
        )
        if price.tiers
        else None
    )
    return (
        price.id,
        price.product_id,
        price.meter_id,
        price.currency,
        price.billing_scheme,
        price.tiers_mode,
        None if price.unit_amount_decimal is None else str(price.unit_amount_decimal),
        tiers,
        price.transform_divide_by,
        price.transform_round,
        price.interval,
        price.interval_count,
        synced_at,
    )
