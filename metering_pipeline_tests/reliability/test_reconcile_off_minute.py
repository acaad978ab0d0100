"""Reconciliation that cried wolf: windows that end off the minute.

Stripe's event summaries answer over whole minutes only. Main rounded both ends of an item's
window down, so a period anchored at 15:23:11 lost the events the push stamps in its last partial
minute (a grace-hour top-up): on exact invoices reconciliation reported ours 39,526 vs Stripe
38,035 and failed its blocking check, and the repair it recommended would have sent those units
a second time. The grid rule (reconcile/grid.py) reads every window over the minutes it owns and
moves only our own, ledger-known events across a shared minute.

The pure tests prove the rule on hand-made windows and events (including a plan change where two
items share a minute); the world test runs a whole period end to end against the sandbox: period
ends off the minute, a plan change at an off-minute instant sent as delete-and-add, late usage
invoiced, the invoice finalized, then reconciliation and repair.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest

from metering_pipeline.reconcile.grid import (
    Stamped,
    ceil_minute,
    floor_minute,
    last_reading,
    owned_grid,
    sum_reading,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# A period anchored at 15:23:11, and the next one; a plan change at 10:15:30 inside the first.
PREVIOUS = (at("2026-10-05 15:23:11"), at("2026-11-05 15:23:11"))
OLD = (at("2026-11-05 15:23:11"), at("2026-11-20 10:15:30"))
NEW = (at("2026-11-20 10:15:30"), at("2026-12-05 15:23:11"))
NEXT = (at("2026-12-05 15:23:11"), at("2027-01-05 15:23:11"))
OLD_KEY = ("si_old", "price_old", OLD[0])
NEW_KEY = ("si_new", "price_new", OLD[0])
NEXT_KEY = ("si_new", "price_new", NEXT[0])


class FakeStripe:
    """Stripe's meter for one customer: it holds events and answers only on whole minutes."""

    def __init__(self, events: list[tuple[datetime, Decimal]]) -> None:
        self.events = events

    def summary(self, grid: tuple[datetime, datetime], formula: str = "sum") -> Decimal:
        assert grid[0].second == grid[1].second == 0, "Stripe answers on minute boundaries only"
        inside = sorted((t, v) for t, v in self.events if grid[0] <= t < grid[1])
        if formula == "last":
            return inside[-1][1] if inside else Decimal(0)
        return sum((v for _, v in inside), Decimal(0))


def sum_figure(window, others, key, entries, stripe: FakeStripe) -> Decimal:
    reading = sum_reading(window, others, key, entries)
    return reading.figure(stripe.summary(reading.grid), "sum")


def test_minute_rounding():
    assert floor_minute(at("2026-12-05 15:23:11")) == at("2026-12-05 15:23:00")
    assert ceil_minute(at("2026-12-05 15:23:11")) == at("2026-12-05 15:24:00")
    assert ceil_minute(at("2026-12-05 15:23:00")) == at("2026-12-05 15:23:00")


def test_a_top_up_in_the_last_partial_minute_is_counted():
    """The case main got wrong: the window ends at 15:23:11, the top-up is stamped 15:23:10."""
    window = (OLD[0], NEXT[0])
    key = ("si_a", "price_a", OLD[0])
    entries = [
        Stamped(key, Decimal(38_035), at("2026-11-30 12:00:01"), 1),
        Stamped(key, Decimal(1_491), at("2026-12-05 15:23:10"), 2),
    ]
    stripe = FakeStripe([(e.at, e.value) for e in entries])

    assert owned_grid(window, [PREVIOUS, NEXT]) == (
        at("2026-11-05 15:24"),  # 15:23 belongs to the period before, which starts earlier
        at("2026-12-05 15:24"),
    )
    assert sum_figure(window, [PREVIOUS, NEXT], key, entries, stripe) == 39_526
    # main's window, both ends rounded down, saw 38,035: a 3.77% "drift" on an exact invoice
    assert stripe.summary((floor_minute(window[0]), floor_minute(window[1]))) == 38_035


def test_windows_sharing_a_minute_each_get_their_own_events_and_tile_the_minutes():
    """A plan change at 10:15:30: the old item's last event at 10:15:29 and the new item's
    first at 10:15:41 share the minute 10:15; the period's last second and the next period's
    first events share 15:23 on Dec 5."""
    entries = [
        Stamped(OLD_KEY, Decimal(5_000), at("2026-11-10 08:00:00"), 1),
        Stamped(OLD_KEY, Decimal(700), at("2026-11-20 10:15:29"), 2),
        Stamped(NEW_KEY, Decimal(300), at("2026-11-20 10:15:41"), 1),
        Stamped(NEW_KEY, Decimal(9_000), at("2026-12-05 15:23:10"), 2),
        Stamped(NEXT_KEY, Decimal(40), at("2026-12-05 15:23:30"), 1),
    ]
    stripe = FakeStripe([(e.at, e.value) for e in entries])
    windows = {OLD_KEY: OLD, NEW_KEY: NEW, NEXT_KEY: NEXT}

    figures = {
        key: sum_figure(window, [w for k, w in windows.items() if k != key], key, entries, stripe)
        for key, window in windows.items()
    }

    assert figures == {OLD_KEY: 5_700, NEW_KEY: 9_300, NEXT_KEY: 40}
    grids = [owned_grid(w, [o for o in windows.values() if o != w]) for w in windows.values()]
    assert grids[0][1] == grids[1][0] == at("2026-11-20 10:16")  # the old window owns 10:15
    assert grids[1][1] == grids[2][0] == at("2026-12-05 15:24")  # the earlier period owns 15:23


@pytest.mark.parametrize(
    ("stamp", "owner"),
    [
        ("2026-11-20 10:15:45", OLD_KEY),  # in the new item's part of the shared minute
        ("2026-11-20 10:15:05", OLD_KEY),  # in the old item's part
        ("2026-12-05 15:23:05", NEW_KEY),  # the last partial minute of the period
        ("2026-12-05 15:23:50", NEW_KEY),  # the next period's part of it
        ("2026-11-25 00:00:00", NEW_KEY),  # anywhere else: its own window
    ],
)
def test_drift_in_a_shared_minute_shows_in_exactly_one_window(stamp, owner):
    """An event sent behind our back is never hidden, and never counted (or repaired) twice."""
    entries = [
        Stamped(OLD_KEY, Decimal(700), at("2026-11-20 10:15:29"), 1),
        Stamped(NEW_KEY, Decimal(300), at("2026-11-20 10:15:41"), 1),
        Stamped(NEXT_KEY, Decimal(40), at("2026-12-05 15:23:30"), 1),
    ]
    stripe = FakeStripe([*((e.at, e.value) for e in entries), (at(stamp), Decimal(200))])
    windows = {OLD_KEY: OLD, NEW_KEY: NEW, NEXT_KEY: NEXT}
    ours = {OLD_KEY: 700, NEW_KEY: 300, NEXT_KEY: 40}

    drift = {
        key: sum_figure(window, [w for k, w in windows.items() if k != key], key, entries, stripe)
        - ours[key]
        for key, window in windows.items()
    }

    assert drift == {key: (200 if key == owner else 0) for key in windows}


def test_a_first_window_with_no_window_before_owns_its_first_minute():
    """A subscription starting at 15:23:11: nothing else can bill 15:23:00-15:23:11, so the
    window reads that minute whole, and an event stamped in it is Stripe's answer, not ours."""
    key = ("si_a", "price_a", OLD[0])
    entries = [Stamped(key, Decimal(10), at("2026-11-05 15:23:40"), 1)]
    stripe = FakeStripe([(at("2026-11-05 15:23:40"), Decimal(10))])

    assert owned_grid(OLD, []) == (at("2026-11-05 15:23"), at("2026-11-20 10:16"))
    assert sum_figure(OLD, [], key, entries, stripe) == 10
    assert sum_figure(OLD, [], key, [], stripe) == 10  # Stripe's unit, even unknown to the ledger


def test_a_last_meter_reads_its_latest_event_even_when_its_minute_is_shared():
    """A last meter bills the latest event: the next period's event at 15:23:30 must not be
    taken for this period's latest (15:23:10); Stripe is checked on the minutes it can answer."""
    window = (OLD[0], NEXT[0])
    key = ("si_a", "price_a", OLD[0])
    later = ("si_a", "price_a", NEXT[0])
    entries = [
        Stamped(key, Decimal(7), at("2026-11-30 12:00:00"), 1),
        Stamped(key, Decimal(9), at("2026-12-05 15:23:10"), 2),
        Stamped(later, Decimal(2), at("2026-12-05 15:23:30"), 1),
    ]
    stripe = FakeStripe([(e.at, e.value) for e in entries])

    reading, summary = last_reading(window, key, entries, lambda g: stripe.summary(g, "last"))
    assert reading.grid[1] == at("2026-12-05 15:23")
    assert summary == 7 and reading.figure(summary, "last") == 9

    # Stripe disagreeing on what it can answer is reported as is
    stripe.events.append((at("2026-12-01 00:00:00"), Decimal(70)))
    reading, summary = last_reading(window, key, entries, lambda g: stripe.summary(g, "last"))
    assert reading.figure(summary, "last") == 70

    # with no neighbour in the minute, Stripe's own answer covers the window to its last second
    alone = [e for e in entries if e.key == key]
    stripe = FakeStripe([(e.at, e.value) for e in alone])
    reading, summary = last_reading(window, key, alone, lambda g: stripe.summary(g, "last"))
    assert reading.grid[1] == at("2026-12-05 15:24")
    assert reading.figure(summary, "last") == 9


def test_what_was_compared_is_said_in_words():
    entries = [
        Stamped(OLD_KEY, Decimal(700), at("2026-11-20 10:15:29"), 1),
        Stamped(NEW_KEY, Decimal(300), at("2026-11-20 10:15:41"), 1),
    ]
    old = sum_reading(OLD, [NEW], OLD_KEY, entries).describe()
    new = sum_reading(NEW, [OLD], NEW_KEY, entries).describe()

    assert old == (
        "summaries [2026-11-05 15:23, 2026-11-20 10:16) UTC, minus 300 another window stamped in "
        "a shared minute"
    )
    assert new == (
        "summaries [2026-11-20 10:16, 2026-12-05 15:24) UTC, plus 300 this window stamped in the "
        "minute before"
    )


# --- End to end: one billing period against the sandbox ---------------------------------------

ANCHOR = datetime(2026, 11, 5, 15, 23, 11, tzinfo=UTC)
END = datetime(2026, 12, 5, 15, 23, 11, tzinfo=UTC)
CHANGE_AT = datetime(2026, 11, 20, 10, 15, 30, tzinfo=UTC)
PERIOD_KEY = "2026-11-05T15:23:11Z/2026-12-05T15:23:11Z"
GRACE = timedelta(hours=1)
# The world's three dbt runs take a minute or two on a loaded machine: more than the default.
pytestmark = pytest.mark.timeout(900)


@dataclass
class World:
    url: str
    sandbox_url: str
    client: object
    instance: dg.DagsterInstance
    meter_id: str
    anchored: str  # customer whose period ends off the minute, with a last-minute top-up
    changed: str  # customer whose plan changes at 10:15:30, its gap billed as late usage
    old_item: str
    new_item: str

    @property
    def resources(self) -> dict:
        from metering_pipeline.defs.resources import StripeResource, WarehouseResource

        return {
            "stripe": StripeResource(api_base=self.sandbox_url),
            "warehouse": WarehouseResource(url=self.url),
        }

    def gateway(self):
        return self.resources["stripe"].gateway()

    def database(self):
        from metering_pipeline.warehouse import Database

        return Database(self.url)

    def sync(self) -> None:
        from metering_pipeline.defs.stripe_catalog.assets import stripe_catalog

        assert dg.materialize([stripe_catalog], instance=self.instance, resources=self.resources)

    def usage(self, events: list[tuple], first_hour: str, last_hour: str):
        """Accept the rows, build the marts over their hours, push (late usage: invoice item)."""
        from metering_pipeline.push import push_usage
        from metering_pipeline_tests.integration.usage_world import insert_events, run_models

        insert_events(self.url, events)
        assert run_models(self.url, first_hour, last_hour, self.instance).success
        return push_usage(
            self.database(),
            self.gateway(),
            late_usage_policy="invoice_item",
            finalization_grace=GRACE,
            meter_units={},
            window=(ANCHOR, END),
        )

    def advance(self, moment: datetime) -> None:
        from metering_pipeline_tests.sandbox.support import advance

        (clock,) = self.client.v1.test_helpers.test_clocks.list().data
        advance(self.client, clock.id, int(moment.timestamp()))

    def stripe_meter(self, customer: str) -> Decimal:
        """Everything Stripe's meter holds for the customer, on whole minutes around the period."""
        return self.gateway().meter_event_summaries(
            self.meter_id, customer, floor_minute(ANCHOR), ceil_minute(END) + timedelta(hours=1)
        )

    def reconcile(self) -> dg.ExecuteInProcessResult:
        from metering_pipeline.defs.reconcile.assets import billing_period_reconciliation

        return dg.materialize(
            [billing_period_reconciliation],
            instance=self.instance,
            resources=self.resources,
            partition_key=PERIOD_KEY,
            raise_on_error=False,
        )

    def results(self) -> dict[str, tuple]:
        from metering_pipeline_tests.integration.usage_world import query

        rows = query(
            self.url,
            "select subscription_item_id, ours, stripe, stripe_invoice_items, accounted, flagged, "
            "expected_amount, stripe_amount, compared from metering.reconciliation_results",
        )
        return {row[0]: row[1:] for row in rows}


def hourly(stamp: datetime) -> str:
    return stamp.strftime("%Y-%m-%d-%H:00")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    """Two customers on one test clock, anchored at 15:23:11 (periods end off the minute):

    - ``anchored``: 10 x 1,000 api calls on a graduated price, then 500 in the period's last
      partial minute (15:23:05), pushed in the finalization grace hour;
    - ``changed``: 25,000 at 0.5c pushed, then a plan change at 10:15:30 sent as Stripe's guide
      shows (delete the only item, add the new price, one call); 1,200 units of the old price
      arrive after the change (billed as a late-usage invoice item), and 5,000 at 1c on the new
      price, the first 3,000 at 10:15:40, in the minute the two items share.
    """
    import stripe

    from metering_pipeline.stripe_sandbox import run_sandbox
    from metering_pipeline_tests.sandbox.support import GRADUATED, meter, metered_price

    with run_sandbox(requests_per_second=1000.0) as sandbox:
        client = stripe.StripeClient(
            "sk_test_sandbox_fixture_key",
            base_addresses={"api": sandbox.url, "meter_events": sandbox.url},
        )
        api_calls = meter(client, "api_calls")
        graduated = metered_price(
            client, api_calls.id, billing_scheme="tiered", tiers_mode="graduated", tiers=GRADUATED
        )
        old = metered_price(client, api_calls.id, unit_amount_decimal="0.5", name="Old plan")
        new = metered_price(client, api_calls.id, unit_amount=1, name="New plan")
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(ANCHOR.timestamp())})
        customers, subscriptions = [], []
        for name, price in (("anchored", graduated), ("changed", old)):
            customer = client.v1.customers.create(
                {"test_clock": clock.id, "metadata": {"metering_customer_id": f"app_{name}"}}
            )
            customers.append(customer.id)
            subscriptions.append(
                client.v1.subscriptions.create(
                    {"customer": customer.id, "items": [{"price": price.id}]}
                )
            )
        anchored, changed = customers
        (old_item,) = subscriptions[1]["items"].data
        with dg.DagsterInstance.ephemeral() as instance:
            world = World(
                f"duckdb:///{tmp_path_factory.mktemp('offminute') / 'warehouse.duckdb'}",
                sandbox.url,
                client,
                instance,
                api_calls.id,
                anchored,
                changed,
                old_item.id,
                "",
            )
            world.advance(datetime(2026, 11, 20, 10, tzinfo=UTC))
            world.sync()
            days = [datetime(2026, 11, 6 + n, 8, 30, tzinfo=UTC) for n in range(10)]
            report = world.usage(
                [(f"a-{n}", anchored, "api_calls", 1000, day) for n, day in enumerate(days)]
                + [(f"c-{n}", changed, "api_calls", 5000, day) for n, day in enumerate(days[:5])],
                hourly(days[0]),
                hourly(days[-1]),
            )
            assert report.events_sent == 2

            world.advance(CHANGE_AT)
            updated = client.v1.subscriptions.update(
                subscriptions[1].id,
                {"items": [{"id": old_item.id, "deleted": True}, {"price": new.id}]},
            )
            (new_item,) = updated["items"].data
            world.new_item = new_item.id
            world.sync()

            world.advance(datetime(2026, 11, 20, 11, tzinfo=UTC))
            gap = datetime(2026, 11, 20, 9, 40, tzinfo=UTC)
            shared = datetime(2026, 11, 20, 10, 15, 40, tzinfo=UTC)
            report = world.usage(
                [
                    ("c-gap", changed, "api_calls", 1200, gap),
                    ("c-new", changed, "api_calls", 3000, shared),
                ],
                hourly(gap),
                hourly(shared),
            )
            assert (report.events_sent, report.late_usage_count) == (1, 1)

            world.advance(END + timedelta(minutes=30))  # the finalization grace hour
            later = datetime(2026, 11, 25, 10, tzinfo=UTC)
            last_minute = datetime(2026, 12, 5, 15, 23, 5, tzinfo=UTC)
            report = world.usage(
                [
                    ("c-later", changed, "api_calls", 2000, later),
                    ("a-last", anchored, "api_calls", 500, last_minute),
                ],
                hourly(later),
                hourly(last_minute),
            )
            assert report.events_sent == 2
            world.advance(END + GRACE + timedelta(minutes=5))  # invoices finalized
            yield world


def finalized_invoice(world: World, customer: str):
    (invoice,) = [
        invoice
        for invoice in world.client.v1.invoices.list({"customer": customer}).data
        if invoice.billing_reason == "subscription_cycle"
    ]
    assert invoice.status == "open"  # finalized
    return invoice


def test_correct_invoices_of_an_off_minute_period_with_a_plan_change_pass_the_check(world: World):
    # The invoices are right, computed by hand: graduated 1,000 x 1c + 9,000 x 0.8c + 500 x 0.5c;
    # the old price's 25,000 x 0.5c (Stripe's invoice item at the change) + the 1,200-unit gap
    # (600c, our late-usage invoice item) + the new price's 5,000 x 1c.
    assert finalized_invoice(world, world.anchored).amount_due == 1000 + 7200 + 250
    assert finalized_invoice(world, world.changed).amount_due == 12_500 + 600 + 5000

    result = world.reconcile()

    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.description
    assert "minutes it owns" in check.metadata["compared"].value
    rows = world.results()
    (anchored_item,) = [item for item in rows if item not in (world.old_item, world.new_item)]
    ours, stripe, invoice_items, accounted, flagged, expected, amount, compared = rows[
        anchored_item
    ]
    assert (ours, stripe, accounted, flagged) == (10_500, 10_500, 10_500, False)
    assert expected == amount == 8450
    assert compared.startswith("summaries [2026-11-05 15:23, 2026-12-05 15:24) UTC")

    ours, stripe, invoice_items, accounted, flagged, expected, amount, _ = rows[world.old_item]
    assert (ours, stripe, invoice_items, accounted, flagged) == (
        26_200,
        25_000,
        26_200,
        26_200,
        False,
    )
    assert expected == amount == 12_500 + 600
    ours, stripe, invoice_items, accounted, flagged, expected, amount, compared = rows[
        world.new_item
    ]
    assert (ours, stripe, accounted, flagged) == (5000, 5000, 5000, False)
    assert expected == amount == 5000
    assert "plus 3000 this window stamped in the minute before" in compared


def test_repair_of_a_correct_off_minute_period_sends_nothing(world: World):
    """A repair that read the same rounded-down figure as the old reconciliation would send the
    500 units of the last partial minute a second time."""
    from metering_pipeline.reconcile.repair import apply_repair, plan_repair

    before = (world.stripe_meter(world.anchored), world.stripe_meter(world.changed))

    steps = plan_repair(world.database(), world.gateway(), (ANCHOR, END), {}, timedelta(0))
    report = apply_repair(
        world.database(),
        world.gateway(),
        (ANCHOR, END),
        steps,
        late_usage_policy="invoice_item",
        finalization_grace=GRACE,
        meter_units={},
    )

    assert steps == []
    assert (report.events_sent, report.late_usage_count) == (0, 0)
    assert (world.stripe_meter(world.anchored), world.stripe_meter(world.changed)) == before
    assert before == (10_500, 25_000 + 5000)


def test_drift_in_the_last_partial_minute_is_flagged_at_two_percent_not_at_half(world: World):
    """Runs last: it sends events behind the pipeline's back."""
    from metering_pipeline.reconcile.period import reconcile_period
    from metering_pipeline_tests.sandbox.support import usage

    def flagged() -> dict[str, bool]:
        rows = reconcile_period(
            world.database(), world.gateway(), (ANCHOR, END), Decimal("0.01"), {}
        )
        return {row.subscription_item_id: row.flagged for row in rows}

    stamp = int(datetime(2026, 12, 5, 15, 23, 8, tzinfo=UTC).timestamp())
    usage(world.client, world.anchored, 52, stamp, identifier="behind-the-back-1")  # 0.495%
    assert not any(flagged().values())

    usage(world.client, world.anchored, 158, stamp, identifier="behind-the-back-2")  # 2%
    assert [item for item, is_flagged in flagged().items() if is_flagged] == [
        item for item in flagged() if item not in (world.old_item, world.new_item)
    ]
