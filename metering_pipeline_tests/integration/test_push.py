"""The push to Stripe through the sandbox and the real SDK: exactly once under faults, after a
SIGKILL, with two runs racing, on a backfill of pushed hours; late usage and plan-change gaps
queued with their amounts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from metering_pipeline.billing.tiers import amount_minor_units, incremental_amount
from metering_pipeline.push.tables import read_prices
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_push_world import (
    FIRST_HOUR,
    LAST_HOUR,
    PERIOD,
    build_world,
    moment,
    query,
    seeded_events,
)
from metering_pipeline_tests.sandbox.support import advance, metered_price, ts

METER_EVENTS = "POST /v1/billing/meter_events"
FAULTS = [
    {"path_prefix": "/v1/billing/meter_events", "method": "POST", "probability": 0.2,
     "action": "status", "status": 429, "should_retry": True},
    {"path_prefix": "/v1/billing/meter_events", "method": "POST", "probability": 0.05,
     "action": "status", "status": 500},
    {"path_prefix": "/v1/billing/meter_events", "method": "POST", "probability": 0.05,
     "action": "drop_response"},
]  # fmt: skip


def meter_event_calls(sandbox) -> int:
    return sum(sandbox.control.stats()["by_path"].get(METER_EVENTS, {}).values())


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    """The run's figures; a range run records the same on each hour it materializes."""
    materializations = result.asset_materializations_for_node("stripe_meter_events")
    assert materializations
    return {key: value.value for key, value in materializations[0].metadata.items()}


def delivered_check_passed(result: dg.ExecuteInProcessResult) -> bool:
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation.passed


def ledger_statuses(url: str) -> dict[str, int]:
    return dict(query(url, "select status, count(*) from metering.meter_event_ledger group by 1"))


def test_exactly_once_under_faults_and_a_backfill_of_pushed_hours_sends_nothing(
    warehouse_url, stripe_sandbox, stripe_client
):
    world = build_world(warehouse_url, stripe_sandbox.url, stripe_client, customers=8)
    world.add_usage(seeded_events(world.customers, 30, seed=1, tag="a"), FIRST_HOUR, LAST_HOUR)
    stripe_sandbox.control.set_faults(FAULTS, seed=11)

    first = world.push()
    # more usage arrives for the last day: the next run sends only the difference
    late_day = seeded_events(world.customers, 5, seed=2, tag="b")
    late_day = [(*e[:4], e[4].replace(day=19), *e[5:]) for e in late_day]
    world.add_usage(late_day, "2026-11-19-00:00", LAST_HOUR)
    second = world.push("2026-11-19-00:00", LAST_HOUR)
    stripe_sandbox.control.clear_faults()

    assert first.success and second.success
    injected = stripe_sandbox.control.stats()["faults_injected"]
    assert injected.get("drop_response", 0) > 0 and injected.get("status", 0) > 0, injected
    expected = {
        customer: Decimal(sum(e[3] for e in seeded_events(world.customers, 30, 1, "a") + late_day
                              if e[1] == customer))
        for customer in world.customers
    }  # fmt: skip
    assert world.our_totals() == expected
    assert world.stripe_totals() == expected
    assert ledger_statuses(warehouse_url) == {"sent": 2 * len(world.customers)}
    first_meta, second_meta = metadata(first), metadata(second)
    assert first_meta["events_sent"] + first_meta["already_delivered"] == len(world.customers)
    assert first_meta["stripe_retries"] > 0
    assert second_meta["pending"] == 0 and second_meta["failed"] == 0
    assert delivered_check_passed(second)

    # a backfill of the whole, already pushed, range: not a single meter-event call
    before = meter_event_calls(stripe_sandbox)
    backfill = world.push()
    assert backfill.success
    assert meter_event_calls(stripe_sandbox) == before
    assert metadata(backfill)["events_sent"] == 0
    assert world.stripe_totals() == expected


def run_push_process(url: str, sandbox_url: str, log: Path) -> subprocess.Popen:
    """A push in its own process; its log goes to a file (a full pipe would block it)."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "metering_pipeline_tests.integration.test_push_world",
             url, sandbox_url, FIRST_HOUR, LAST_HOUR],
            stdout=subprocess.DEVNULL,
            stderr=output,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def test_a_push_killed_midway_and_run_again_counts_each_event_once(
    warehouse_url, stripe_sandbox, stripe_client, tmp_path
):
    world = build_world(warehouse_url, stripe_sandbox.url, stripe_client, customers=10)
    events = seeded_events(world.customers, 10, seed=3, tag="k")
    world.add_usage(events, FIRST_HOUR, LAST_HOUR)
    # slow Stripe down and drop some answers, so the kill lands among sent-but-unrecorded events
    stripe_sandbox.control.set_faults(
        [{"path_prefix": "/v1/billing/meter_events", "method": "POST", "action": "delay",
          "seconds": 0.4}, FAULTS[2]],
        seed=5,
    )  # fmt: skip

    log = tmp_path / "push.log"
    process = run_push_process(warehouse_url, stripe_sandbox.url, log)
    deadline = time.monotonic() + 120
    while meter_event_calls(stripe_sandbox) < 4:
        assert process.poll() is None, tail(log)
        assert time.monotonic() < deadline, "the push never reached Stripe"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stripe_sandbox.control.clear_faults()

    assert ledger_statuses(warehouse_url).get("pending", 0) > 0  # the kill left work undone
    rerun = world.push()

    assert rerun.success
    expected = {c: Decimal(sum(e[3] for e in events if e[1] == c)) for c in world.customers}
    assert world.stripe_totals() == expected
    assert ledger_statuses(warehouse_url) == {"sent": len(world.customers)}
    assert metadata(rerun)["resent_pending"] > 0
    assert delivered_check_passed(rerun)


def test_two_pushes_of_the_same_hours_at_once_count_each_event_once(
    postgres_url, stripe_sandbox, stripe_client, tmp_path
):
    world = build_world(postgres_url, stripe_sandbox.url, stripe_client, customers=8)
    events = seeded_events(world.customers, 10, seed=4, tag="r")
    world.add_usage(events, FIRST_HOUR, LAST_HOUR)
    stripe_sandbox.control.set_faults(
        [{"path_prefix": "/v1/billing/meter_events", "method": "POST", "action": "delay",
          "seconds": 0.1}, *FAULTS],
        seed=9,
    )  # fmt: skip

    logs = [tmp_path / f"push-{n}.log" for n in range(2)]
    processes = [run_push_process(postgres_url, stripe_sandbox.url, log) for log in logs]
    outcomes = [process.wait(timeout=300) for process in processes]
    stripe_sandbox.control.clear_faults()

    assert outcomes == [0, 0], [tail(log) for log in logs]
    expected = {c: Decimal(sum(e[3] for e in events if e[1] == c)) for c in world.customers}
    assert world.stripe_totals() == expected
    # one ledger entry per key: the second run found the first one's entries and added none
    assert ledger_statuses(postgres_url) == {"sent": len(world.customers)}


def test_usage_for_a_finalized_invoice_is_queued_with_its_amount_and_invoiced_once(
    duckdb_url, stripe_sandbox, stripe_client, monkeypatch
):
    monkeypatch.setenv("METERING_LATE_USAGE_POLICY", "invoice_item")
    world = build_world(duckdb_url, stripe_sandbox.url, stripe_client, customers=1)
    (customer,), (clock,) = world.customers, world.clocks
    world.add_usage(
        [("on-time", customer, "api_calls", 900, moment(ts(2026, 11, 10)))], FIRST_HOUR, LAST_HOUR
    )
    assert world.push().success
    advance(stripe_client, clock, PERIOD[1] + 2 * 3600)  # past the 1-hour finalization grace
    (invoice,) = [
        i for i in stripe_client.v1.invoices.list({"customer": customer}).data
        if i.period_end == PERIOD[1]
    ]  # fmt: skip
    assert invoice.status != "draft"

    # 300 units of Nov 18 arrive after the invoice closed: 900 were billed, 1200 were used
    world.add_usage(
        [("late", customer, "api_calls", 300, moment(ts(2026, 11, 18)))],
        "2026-11-18-00:00",
        "2026-11-18-00:00",
    )
    calls_before = meter_event_calls(stripe_sandbox)
    first = world.push("2026-11-18-00:00", "2026-11-18-00:00")
    second = world.push("2026-11-18-00:00", "2026-11-18-00:00")

    assert first.success and second.success
    assert meter_event_calls(stripe_sandbox) == calls_before
    with Database(duckdb_url).connect() as conn:
        price = read_prices(conn, [world.price.id])[world.price.id]
    owed = int(incremental_amount(price, Decimal(900), Decimal(1200)))
    assert owed == 100 * 1 + 200 * 0.8  # cents: the rest of tier 1, then 200 units of tier 2
    rows = query(
        duckdb_url,
        "select quantity, billed_quantity, amount_impact, currency, reason, policy, status, "
        "invoice_item_id from metering.late_usage",
    )
    assert len(rows) == 1
    quantity, billed, amount, currency, reason, policy, status, item_id = rows[0]
    assert (Decimal(quantity), Decimal(billed), amount, currency) == (300, 900, owed, "usd")
    assert (reason, policy, status) == ("invoice_finalized", "invoice_item", "invoiced")
    items = stripe_client.v1.invoice_items.list({"customer": customer}).data
    assert [(i.id, i.amount) for i in items] == [(item_id, owed)]
    assert metadata(first)["late_usage_count"] == 1
    assert metadata(first)["late_usage_amount_usd"] == owed
    assert metadata(second)["late_usage_count"] == 0
    assert world.stripe_totals() == {customer: Decimal(900)}


@pytest.mark.parametrize(("billing_mode", "billed"), [("flexible", 1500), ("classic", 0)])
def test_a_plan_change_gap_is_priced_at_the_old_price_as_the_increment_on_its_tiers(
    duckdb_url, stripe_sandbox, stripe_client, billing_mode, billed
):
    """Flexible mode bills the 1500 Stripe had at the change, classic mode none of them; either
    way the rest is owed at the old price, priced on the tiers above what Stripe billed."""
    world = build_world(
        duckdb_url, stripe_sandbox.url, stripe_client, customers=1, billing_mode=billing_mode
    )
    (customer,), (clock,), (subscription,) = world.customers, world.clocks, world.subscriptions
    old_price = world.price
    new_price = metered_price(stripe_client, world.meter.id, unit_amount=3)
    # Each run covers only the hours that changed: the marts rebuild the whole period anyway, and
    # the push brings every key of the periods the window touches to the marts.
    before_hour, late_hour, new_hour = "2026-11-10-00:00", "2026-11-12-00:00", "2026-11-20-06:00"
    world.add_usage(
        [("before", customer, "api_calls", 1500, moment(ts(2026, 11, 10)))],
        before_hour,
        before_hour,
    )
    assert world.push(before_hour, before_hour).success  # Stripe has the 1500 before the change

    (item,) = subscription["items"]["data"]
    stripe_client.v1.subscriptions.update(
        subscription.id, {"items": [{"id": item.id, "price": new_price.id}]}
    )  # at the clock's Nov 20: flexible mode bills the 1500 received so far at the old price
    advance(stripe_client, clock, ts(2026, 11, 21))
    world.sync()
    # 700 units of Nov 12 (old price) reach us after the change, and 50 on the new price
    world.add_usage(
        [("late-old", customer, "api_calls", 700, moment(ts(2026, 11, 12)))], late_hour, late_hour
    )
    world.add_usage(
        [("new", customer, "api_calls", 50, moment(ts(2026, 11, 20, 6)))], new_hour, new_hour
    )
    result = world.push(new_hour, new_hour)

    assert result.success
    rows = query(
        duckdb_url,
        "select price_id, quantity, billed_quantity, amount_impact, reason, status "
        "from metering.late_usage",
    )
    with Database(duckdb_url).connect() as conn:
        old = read_prices(conn, [old_price.id])[old_price.id]
    owed = int(amount_minor_units(old, Decimal(2200)) - amount_minor_units(old, Decimal(billed)))
    # flexible: 700 units at 0.8 cent, the increment, not 700 units from the first tier;
    # classic: all 2200 (1000 at 1 cent, 1200 at 0.8 cent)
    assert owed == {1500: 560, 0: 1960}[billed]
    assert [(r[0], Decimal(r[1]), Decimal(r[2]), r[3], r[4], r[5]) for r in rows] == [
        (old_price.id, Decimal(2200 - billed), Decimal(billed), owed, "plan_change", "held")
    ]
    # a second run queues nothing more
    assert world.push(new_hour, new_hour).success
    assert query(duckdb_url, "select count(*) from metering.late_usage") == [(1,)]
    # the new price's usage went to Stripe, stamped inside the new item's window
    summaries = stripe_client.v1.billing.meters.event_summaries.list(
        world.meter.id,
        {"customer": customer, "start_time": ts(2026, 11, 20), "end_time": PERIOD[1]},
    )
    assert sum(Decimal(str(s.aggregated_value)) for s in summaries.data) == 50
    assert world.stripe_totals() == {customer: Decimal(1550)}
