"""The Stripe catalog in the warehouse, refreshed on a schedule, and billing-period partitions."""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from metering_pipeline.catalog_sync.intervals import (
    SUBSCRIPTION_EVENTS,
    billing_periods,
    build_intervals,
)
from metering_pipeline.catalog_sync.plausibility import (
    KINDS,
    catalog_ids,
    catalog_loss,
    refusal_message,
)
from metering_pipeline.catalog_sync.tables import (
    ensure_catalog_tables,
    read_catalog_ids,
    read_intervals,
    write_catalog,
)
from metering_pipeline.defs.partitions import billing_periods as billing_period_partitions
from metering_pipeline.defs.partitions import period_key
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.settings import load_settings

CATALOG_TABLES = (
    "stripe_customers",
    "stripe_meters",
    "stripe_prices",
    "stripe_subscription_items",
    "billing_periods",
)


class CatalogSyncConfig(dg.Config):
    accept_catalog_loss: bool = Field(
        default=False,
        description="Replace the catalog even though Stripe no longer lists more than "
        "METERING_CATALOG_MAX_LOSS of the customers, meters or subscriptions of the last sync. "
        "Set it for one run, only after checking the loss is deliberate.",
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            table,
            group_name="stripe_catalog",
            kinds={"stripe"},
            description=f"metering.{table}, rewritten from Stripe by each catalog sync.",
        )
        for table in CATALOG_TABLES
    ],
    pool="stripe_catalog",
)
def stripe_catalog(
    context: dg.AssetExecutionContext,
    config: CatalogSyncConfig,
    stripe: StripeResource,
    warehouse: WarehouseResource,
) -> Iterator[dg.MaterializeResult]:
    """One read of Stripe's catalog and subscription events, written as one transaction.

    The five tables only make sense together (intervals name prices, periods name items), so
    they are one multi-asset; the lock keeps two syncs from interleaving their writes. A read
    that lost most of a kind at once is refused (``catalog_sync/plausibility.py``) and the last
    good catalog stays, unless the run config accepts the loss.
    """
    settings = load_settings()
    gateway = stripe.gateway()
    catalog = gateway.fetch_catalog()
    events = gateway.list_events(None, list(SUBSCRIPTION_EVENTS))
    synced_at = datetime.now(UTC)
    with warehouse.database.connect() as conn, conn.advisory_lock("metering.catalog_sync"):
        ensure_catalog_tables(conn)
        previous, last_synced_at = read_catalog_ids(conn)
        loss = catalog_loss(
            previous,
            catalog_ids(catalog, settings.customer_metadata_key),
            settings.catalog_max_loss,
        )
        if loss.refused and not config.accept_catalog_loss:
            raise dg.Failure(
                description=refusal_message(loss, last_synced_at),
                metadata={f"lost_{kind}": loss.lost_count(kind) for kind in KINDS},
            )
        if loss.losses:
            context.log.warning(
                f"Stripe no longer lists {loss.describe()}"
                + ("; replaced anyway: accept_catalog_loss is set" if loss.refused else "")
            )
        intervals = build_intervals(catalog, events, read_intervals(conn), synced_at)
        periods = billing_periods(intervals)
        counts = write_catalog(
            conn,
            catalog,
            intervals,
            periods,
            metadata_key=settings.customer_metadata_key,
            meter_modes=settings.meter_modes,
            synced_at=synced_at,
        )

    keys = sorted({period_key(start, end) for _, start, end in periods})
    known = set(context.instance.get_dynamic_partitions(billing_period_partitions.name))
    new_keys = [key for key in keys if key not in known]
    if new_keys:
        context.instance.add_dynamic_partitions(billing_period_partitions.name, new_keys)

    common = {"synced_at": dg.MetadataValue.timestamp(synced_at), **gateway.stats.as_metadata()}
    yield dg.MaterializeResult(
        asset_key="stripe_customers",
        metadata={
            **common,
            "customers": counts.customers,
            "unmapped_customers": counts.unmapped_customers,
            "metadata_key": settings.customer_metadata_key,
            **{f"lost_{kind}": loss.lost_count(kind) for kind in KINDS},
        },
    )
    yield dg.MaterializeResult(
        asset_key="stripe_meters", metadata={**common, "meters": counts.meters}
    )
    yield dg.MaterializeResult(
        asset_key="stripe_prices", metadata={**common, "prices": counts.prices}
    )
    yield dg.MaterializeResult(
        asset_key="stripe_subscription_items",
        metadata={
            **common,
            "intervals": counts.intervals,
            "closed_intervals": counts.closed_intervals,
        },
    )
    yield dg.MaterializeResult(
        asset_key="billing_periods",
        metadata={
            **common,
            "billing_periods": counts.billing_periods,
            "new_partition_keys": dg.MetadataValue.md(
                "\n".join(f"- `{key}`" for key in new_keys) or "none"
            ),
        },
    )


@dg.asset_check(asset="stripe_subscription_items", blocking=True)
def one_active_item_per_meter(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    """Two items of one customer active on the same meter at once: Stripe bills the usage on
    both, and attribution cannot choose. Fix the subscription in Stripe, then sync again."""
    with warehouse.database.connect() as conn:
        rows = conn.fetchall(
            """
            select a.stripe_customer_id, a.meter_event_name, a.subscription_item_id,
                   b.subscription_item_id, greatest(a.valid_from, b.valid_from)
            from metering.stripe_subscription_items as a
            inner join metering.stripe_subscription_items as b
                on a.stripe_customer_id = b.stripe_customer_id
                and a.meter_event_name = b.meter_event_name
                and a.subscription_item_id < b.subscription_item_id
                and a.valid_from < coalesce(b.valid_to, cast('9999-12-31' as timestamptz))
                and b.valid_from < coalesce(a.valid_to, cast('9999-12-31' as timestamptz))
            order by 1, 2
            """
        )
    table = "\n".join(
        f"| {customer} | {meter} | {first} | {second} | {since.isoformat()} |"
        for customer, meter, first, second, since in rows
    )
    return dg.AssetCheckResult(
        passed=not rows,
        metadata={
            "overlapping_pairs": len(rows),
            "overlaps": dg.MetadataValue.md(
                "| customer | meter | item | item | overlap from |\n|---|---|---|---|---|\n" + table
                if rows
                else "none"
            ),
        },
    )


catalog_refresh = dg.ScheduleDefinition(
    name="stripe_catalog_refresh",
    target=stripe_catalog,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    description="Refreshes the Stripe catalog at five past each hour, before the hourly usage run.",
)

defs = dg.Definitions(
    assets=[stripe_catalog],
    asset_checks=[one_active_item_per_meter],
    schedules=[catalog_refresh],
)
