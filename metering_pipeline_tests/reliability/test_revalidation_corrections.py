"""A re-validation never silently un-bills. Before, re-validating billed hours after a catalog
change moved the rows to quarantine (``unmapped_customer``, ``unknown_meter``) and the next push
took the usage back from Stripe with no one asked. Now the rows stay billed, the change is a
correction with its quantity and money, every push run fails naming it, and only a confirmation
quarantines the rows and sends the negative delta through the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest

from metering_pipeline.catalog_sync.tables import ensure_catalog_tables
from metering_pipeline.defs.corrections import catalog_corrections_confirmed
from metering_pipeline.defs.extract.assets import raw_usage_events
from metering_pipeline.defs.push.assets import stripe_meter_events
from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.quality.checks import counts_add_up
from metering_pipeline.defs.resources import SourceResource, StripeResource, WarehouseResource
from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline.defs.transform.project import dbt_resource
from metering_pipeline.quality.corrections import (
    CorrectionError,
    confirm_corrections,
    pending_corrections,
)
from metering_pipeline.quality.rules import ValidationRules, validate_window
from metering_pipeline.sources.tables import ensure_extract_tables
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_extract import add_catalog, make_source
from metering_pipeline_tests.integration.test_push_world import PERIOD as PERIOD_SECONDS
from metering_pipeline_tests.integration.test_push_world import build_world, query

HOUR_10 = datetime(2026, 11, 10, 10, tzinfo=UTC)
HOUR_11 = HOUR_10 + timedelta(hours=1)
M = timedelta(minutes=1)
PERIOD = tuple(datetime.fromtimestamp(moment, tz=UTC) for moment in PERIOD_SECONDS)
# app_1 uses 1,800 units over two hours on a graduated price (1 cent to 1,000, then 0.8)
SOURCE_ROWS = [
    ("a0-1", "app_0", "api_calls", "300", HOUR_10 + 5 * M),
    ("a1-1", "app_1", "api_calls", "700", HOUR_10 + 10 * M),
    ("a1-2", "app_1", "api_calls", "500", HOUR_10 + 40 * M),
    ("a0-2", "app_0", "api_calls", "200", HOUR_11 + 5 * M),
    ("a1-3", "app_1", "api_calls", "600", HOUR_11 + 20 * M),
]
PIPELINE = [
    raw_usage_events,
    validated_usage_events,
    counts_add_up,
    usage_models,
    stripe_meter_events,
    catalog_corrections_confirmed,
]


def key(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d-%H:%M")


def run_hours(world, source: str, first: datetime, last: datetime, confirm: list[str] = ()):
    return dg.materialize(
        PIPELINE,
        instance=world.instance,
        resources={
            "warehouse": WarehouseResource(url=world.url),
            "source": SourceResource(url=source),
            "stripe": StripeResource(api_base=world.sandbox_url),
            "dbt": dbt_resource(),
        },
        tags={
            "dagster/asset_partition_range_start": key(first),
            "dagster/asset_partition_range_end": key(last),
        },
        run_config={
            "ops": {"validated_usage_events": {"config": {"confirm_corrections": list(confirm)}}}
        },
        raise_on_error=False,
    )


def check_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "catalog_corrections_confirmed"
    ]
    return evaluation


def invoice_total(world, customer: int) -> int:
    preview = world.client.v1.invoices.create_preview(
        {"customer": world.customers[customer], "subscription": world.subscriptions[customer].id}
    )
    return preview.total


def rows_of(url: str, table: str, customer_id: str) -> list[tuple]:
    return query(
        url,
        f"select event_id from metering.{table} where customer_id = ? order by event_id",
        (customer_id,),
    )


def test_a_catalog_change_holds_billed_rows_until_the_correction_is_confirmed(
    duckdb_url, stripe_sandbox, stripe_client, tmp_path
):
    """End to end on one engine (the SQL of both engines is covered below, without dbt)."""
    world = build_world(duckdb_url, stripe_sandbox.url, stripe_client, customers=2)
    app_1 = world.customers[1]
    source = make_source(tmp_path, SOURCE_ROWS)
    assert run_hours(world, source, HOUR_10, HOUR_11).success
    assert world.stripe_totals() == {world.customers[0]: 500, app_1: 1800}
    assert invoice_total(world, 1) == 1000 + 640  # 1,000 at 1 cent, 800 at 0.8 cent
    # app_1 loses its metadata mapping in Stripe; the catalog sync picks that up
    stripe_client.v1.customers.update(app_1, {"metadata": {"metering_customer_id": ""}})
    world.sync()

    revalidated = run_hours(world, source, HOUR_10, HOUR_10)

    # the rows stay billed and accepted; nothing was taken back from Stripe
    assert rows_of(world.url, "accepted_usage_events", "app_1") == [("a1-1",), ("a1-2",), ("a1-3",)]
    assert rows_of(world.url, "quarantined_usage_events", "app_1") == []
    assert world.stripe_totals()[app_1] == 1800
    # the correction: hour 10's 1,200 units; at the graduated tiers from 1,800 down to 600 the
    # money is 1,640 - 600 = 1,040 cents (not 1,200 at 1 cent, nor 960 at 0.8)
    with Database(world.url).connect() as conn:
        (correction,) = pending_corrections(conn)
    assert (correction.stripe_customer_id, correction.customer_id) == (app_1, "app_1")
    assert (correction.meter, correction.reason_code) == ("api_calls", "unmapped_customer")
    assert (correction.events, correction.quantity) == (2, Decimal(1200))
    (line,) = correction.lines
    assert (line.quantity_delta, line.amount_delta, line.currency) == (-1200, -1040, "usd")
    assert correction.amounts() == {"usd": Decimal(-1040)}
    # and it is loud: the push's blocking check fails the run, naming it and how to confirm
    assert not revalidated.success
    check = check_of(revalidated)
    assert not check.passed
    assert correction.correction_id in check.description
    assert "-1040 usd" in check.description
    assert "confirm_corrections" in check.description
    assert "2026-11-10-10:00" in check.description

    before = invoice_total(world, 1)
    confirmed = run_hours(world, source, HOUR_10, HOUR_10, confirm=[correction.correction_id])

    assert confirmed.success
    assert check_of(confirmed).passed
    assert rows_of(world.url, "accepted_usage_events", "app_1") == [("a1-3",)]
    assert query(
        world.url,
        "select event_id, reason_code from metering.quarantined_usage_events order by 1",
    ) == [("a1-1", "unmapped_customer"), ("a1-2", "unmapped_customer")]
    # the negative delta went through the ledger, and Stripe dropped by exactly the correction
    ledger = query(
        world.url,
        "select sequence, value, status from metering.meter_event_ledger "
        "where stripe_customer_id = ? order by sequence",
        (app_1,),
    )
    assert [(seq, Decimal(value), status) for seq, value, status in ledger] == [
        (1, Decimal(1800), "sent"),
        (2, Decimal(-1200), "sent"),
    ]
    assert world.stripe_totals() == {world.customers[0]: 500, app_1: 600}
    assert invoice_total(world, 1) - before == correction.amounts()["usd"]


# Below: the routing and the corrections table on both engines, through validate_window (no dbt,
# no Stripe). (event_id, customer_id, meter, quantity, occurred_at)
RAW = [
    ("e1", "customer_0001", "api_calls", "5", HOUR_10 + 5 * M),
    ("e2", "customer_0002", "api_calls", "7", HOUR_10 + 6 * M),
    ("e3", "customer_0002", "api_calls", "3", HOUR_11 + 7 * M),
    ("e4", "customer_0001", "storage_gb", "2", HOUR_11 + 8 * M),
]
RULES = ValidationRules(Decimal(-1_000_000), Decimal(1_000_000), "metering_customer_id")
NOW = datetime(2026, 11, 20, tzinfo=UTC)


def write_raw(url: str) -> None:
    add_catalog(url)
    with Database(url).connect() as conn:
        ensure_extract_tables(conn)
        conn.executemany(
            "insert into metering.raw_usage_events (event_id, customer_id, meter, quantity, "
            "occurred_at, received_at, partition_hour, extracted_at) "
            "values (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*row, row[4], row[4].replace(minute=0), NOW) for row in RAW],
        )
        conn.executemany(
            "insert into metering.extraction_watermarks (partition_hour, max_received_at, "
            "row_count, extracted_at) values (?, ?, 2, ?)",
            [(HOUR_10, HOUR_11, NOW), (HOUR_11, HOUR_11 + 60 * M, NOW)],
        )
        # the marts as dbt leaves them, reduced to the columns a correction is priced from:
        # every row attributed to one item per customer at 2 cents a unit
        conn.execute("create schema if not exists analytics")
        conn.execute(
            "create table analytics.int_usage_attributed (event_id text, "
            "subscription_item_id text, price_id text, period_start timestamptz, "
            "period_end timestamptz, attribution_status text)"
        )
        conn.executemany(
            "insert into analytics.int_usage_attributed values (?, ?, 'price_2c', ?, ?, "
            "'attributed')",
            [(row[0], f"si_{row[1]}_{row[2]}", *PERIOD) for row in RAW],
        )
        conn.execute(
            "create table analytics.fct_usage_by_period (subscription_item_id text, "
            "price_id text, period_start timestamptz, aggregation_mode text, quantity "
            "decimal(38, 12))"
        )
        conn.executemany(
            "insert into analytics.fct_usage_by_period values (?, 'price_2c', ?, 'sum', ?)",
            [
                ("si_customer_0001_api_calls", PERIOD[0], 5),
                ("si_customer_0002_api_calls", PERIOD[0], 10),
                ("si_customer_0001_storage_gb", PERIOD[0], 2),
            ],
        )
        ensure_catalog_tables(conn)
        conn.execute(
            "insert into metering.stripe_prices (price_id, currency, billing_scheme, "
            "unit_amount_decimal, interval, interval_count, synced_at) "
            "values ('price_2c', 'usd', 'per_unit', '2', 'month', 1, ?)",
            (NOW,),
        )


def validate(url: str, first: datetime, last: datetime, confirm: tuple[str, ...] = ()) -> None:
    with Database(url).connect() as conn:
        confirm_corrections(conn, confirm, first, last + timedelta(hours=1), NOW)
        validate_window(conn, first, last + timedelta(hours=1), NOW, RULES)


def catalog(url: str, sql: str) -> None:
    with Database(url).connect() as conn:
        conn.execute(sql)


def pending(url: str) -> list:
    with Database(url).connect() as conn:
        return pending_corrections(conn)


def routed(url: str) -> dict[str, str]:
    """event_id -> 'accepted' or its quarantine reason."""
    accepted = query(url, "select event_id, 'accepted' from metering.accepted_usage_events")
    held = query(url, "select event_id, reason_code from metering.quarantined_usage_events")
    return dict(accepted + held)


UNMAP_B = (
    "update metering.stripe_customers set metering_customer_id = null "
    "where stripe_customer_id = 'cus_B'"
)
REMAP_B = (
    "update metering.stripe_customers set metering_customer_id = 'customer_0002' "
    "where stripe_customer_id = 'cus_B'"
)


def test_held_rows_are_corrections_until_confirmed_or_withdrawn(warehouse_url):
    write_raw(warehouse_url)
    validate(warehouse_url, HOUR_10, HOUR_11)
    assert set(routed(warehouse_url).values()) == {"accepted"}

    # customer_0002 loses its mapping, storage_gb disappears: hour 10 first, then both hours
    catalog(warehouse_url, UNMAP_B)
    catalog(warehouse_url, "delete from metering.stripe_meters where event_name = 'storage_gb'")
    validate(warehouse_url, HOUR_10, HOUR_10)
    (first,) = pending(warehouse_url)
    validate(warehouse_url, HOUR_10, HOUR_11)

    assert set(routed(warehouse_url).values()) == {"accepted"}
    assert query(
        warehouse_url,
        "select event_id, stripe_customer_id from metering.accepted_usage_events order by 1",
    ) == [("e1", "cus_A"), ("e2", "cus_B"), ("e3", "cus_B"), ("e4", "cus_A")]
    corrections = {c.reason_code: c for c in pending(warehouse_url)}
    unmapped, unknown = corrections["unmapped_customer"], corrections["unknown_meter"]
    assert unmapped.correction_id == first.correction_id  # the same correction, grown
    assert (unmapped.stripe_customer_id, unmapped.events, unmapped.quantity) == ("cus_B", 2, 10)
    (line,) = unmapped.lines
    assert (line.quantity_delta, line.amount_delta, line.currency) == (-10, -20, "usd")
    assert (unknown.stripe_customer_id, unknown.meter, unknown.quantity) == (
        "cus_A",
        "storage_gb",
        2,
    )
    assert unknown.amounts() == {"usd": Decimal(-4)}
    counts = query(
        warehouse_url, "select sum(accepted), sum(quarantined) from metering.partition_quality"
    )
    assert [tuple(int(n) for n in row) for row in counts] == [(4, 0)]

    # a confirmation must name a known correction and cover all of its hours
    with pytest.raises(CorrectionError, match="no catalog correction corr_000000000000"):
        validate(warehouse_url, HOUR_10, HOUR_11, confirm=("corr_000000000000",))
    with pytest.raises(CorrectionError, match="outside this run's hours"):
        validate(warehouse_url, HOUR_10, HOUR_10, confirm=(unmapped.correction_id,))

    # the mapping comes back: the correction is withdrawn and nothing moves
    catalog(warehouse_url, REMAP_B)
    validate(warehouse_url, HOUR_10, HOUR_11)
    assert [c.reason_code for c in pending(warehouse_url)] == ["unknown_meter"]
    # lost again later: a new correction, never the withdrawn one
    catalog(warehouse_url, UNMAP_B)
    validate(warehouse_url, HOUR_10, HOUR_11)
    again = {c.reason_code: c for c in pending(warehouse_url)}["unmapped_customer"]
    assert again.correction_id != unmapped.correction_id

    validate(warehouse_url, HOUR_10, HOUR_11, confirm=(again.correction_id,))

    assert routed(warehouse_url) == {
        "e1": "accepted",
        "e2": "unmapped_customer",
        "e3": "unmapped_customer",
        "e4": "accepted",
    }
    assert [c.reason_code for c in pending(warehouse_url)] == ["unknown_meter"]
    statuses = query(
        warehouse_url,
        "select correction_id, status, count(*) from metering.catalog_corrections "
        "group by 1, 2 order by 1, 2",
    )
    assert {(cid, status): n for cid, status, n in statuses} == {
        (unmapped.correction_id, "withdrawn"): 2,
        (again.correction_id, "applied"): 2,
        (unknown.correction_id, "pending"): 1,
    }
    # applied rows were not accepted any more, so re-validating never holds them again
    validate(warehouse_url, HOUR_10, HOUR_11)
    assert routed(warehouse_url)["e2"] == "unmapped_customer"
    assert [c.reason_code for c in pending(warehouse_url)] == ["unknown_meter"]
