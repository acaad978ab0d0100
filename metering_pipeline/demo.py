"""`metering demo`: the whole product once, on the embedded default, from source rows to
finalized Stripe invoices.

A billing period is staged on Stripe test clocks (the in-process sandbox without
``STRIPE_API_KEY``; a test-mode account with one): four customers with different anchors,
graduated and volume tiers, one plan change mid-period. Seeded usage with the hostile cases runs
through the real Dagster assets (extract, validate, dbt, push, reconciliation) into a persistent
Dagster instance, so every run can be opened afterwards with ``metering dev``.

    metering demo                  # the product
    metering demo --sandbox-tour   # the Stripe sandbox alone, step by step
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg

from metering_pipeline.billing.periods import period_start
from metering_pipeline.defs.partitions import period_key
from metering_pipeline.defs.resources import (
    SourceResource,
    StripeResource,
    WarehouseResource,
    from_environment,
)
from metering_pipeline.defs.transform.project import dbt_resource
from metering_pipeline.instance import prepare_dagster_home
from metering_pipeline.settings import Settings, duckdb_path, load_settings
from metering_pipeline.sources.reader import SOURCE_TABLE
from metering_pipeline.sources.seed import seed_usage
from metering_pipeline.stripe_io.provision import ClockedCustomer, Provisioner
from metering_pipeline.stripe_setup.spec import TierSpec
from metering_pipeline.tools.runs import failure_message, hour_range_tags, run_job
from metering_pipeline.warehouse import Database

DEMO_EVENTS = 200_000

PLANS: dict[str, tuple[str, tuple[TierSpec, ...]]] = {
    "standard": (
        "graduated",
        (
            TierSpec(100_000, Decimal("0.04")),
            TierSpec(1_000_000, Decimal("0.025")),
            TierSpec(None, Decimal("0.01")),
        ),
    ),
    "pro": (
        "graduated",
        (TierSpec(500_000, Decimal("0.03"), flat_amount=5_000), TierSpec(None, Decimal("0.015"))),
    ),
    "messages": (
        "volume",
        (
            TierSpec(200_000, Decimal("0.05")),
            TierSpec(1_000_000, Decimal("0.03")),
            TierSpec(None, Decimal("0.02")),
        ),
    ),
    "messages_base_fee": (
        "volume",
        (
            TierSpec(100_000, Decimal("0.05"), flat_amount=2_500),
            TierSpec(None, Decimal("0.04"), flat_amount=1_000),
        ),
    ),
}
METERS = ("api_calls", "messages")


@dataclass(frozen=True)
class DemoCustomer:
    app_id: str  # the application's key, as the seed writes it and the metadata maps it
    name: str
    anchor: datetime
    plans: dict[str, str]  # meter -> plan
    plan_change: tuple[str, str] | None = None  # (meter, new plan) at PLAN_CHANGE_AT

    @property
    def period(self) -> tuple[datetime, datetime]:
        return self.anchor, period_start(self.anchor, "month", 1, 1)


CUSTOMERS = (
    DemoCustomer(
        "customer_0001",
        "Acme",
        datetime(2026, 10, 5, tzinfo=UTC),
        {"api_calls": "standard", "messages": "messages"},
    ),
    DemoCustomer(
        "customer_0002",
        "Globex",
        datetime(2026, 10, 5, 10, 30, tzinfo=UTC),
        {"api_calls": "standard", "messages": "messages"},
        plan_change=("api_calls", "pro"),
    ),
    DemoCustomer(
        "customer_0003",
        "Initech",
        datetime(2026, 10, 6, tzinfo=UTC),
        {"api_calls": "standard", "messages": "messages_base_fee"},
    ),
    DemoCustomer(
        "customer_0004",
        "Umbrella",
        datetime(2026, 10, 7, 12, tzinfo=UTC),
        {"api_calls": "standard", "messages": "messages"},
    ),
)
USAGE_START = datetime(2026, 10, 8, tzinfo=UTC)  # inside every customer's period ...
USAGE_DAYS = 27  # ... and ending before the first period end (Nov 5)
PLAN_CHANGE_AT = datetime(2026, 10, 20, 12, tzinfo=UTC)
BEFORE_PERIOD_END = datetime(2026, 11, 4, 12, tzinfo=UTC)
LATE_USAGE = {"api_calls": Decimal(2_500), "messages": Decimal(1_200)}
LATE_BEFORE_END = timedelta(minutes=45)  # when the late usage happened, before the period end
INTO_GRACE = timedelta(minutes=20)  # inside Stripe's 1-hour finalization grace
PAST_GRACE = timedelta(hours=2)


class DemoError(RuntimeError):
    """The demo cannot run here; the message says what to change."""


@dataclass(frozen=True)
class ItemResult:
    meter: str
    price_id: str
    ours: Decimal
    stripe: Decimal
    expected_amount: Decimal | None
    variance: Decimal
    flagged: bool


@dataclass(frozen=True)
class CustomerResult:
    customer: DemoCustomer
    stripe_customer_id: str
    invoice_id: str
    invoice_status: str
    invoice_amount_due: int
    items: tuple[ItemResult, ...]


@dataclass(frozen=True)
class DemoResult:
    customers: tuple[CustomerResult, ...]
    flagged: int
    source_url: str
    warehouse_url: str
    dagster_home: Path
    meters: dict[str, str]  # our meter name -> the event_name used at Stripe
    run_ids: tuple[str, ...]


@dataclass
class _Stage:
    """What one demo needs at hand: settings, Stripe, the Dagster instance, the warehouse."""

    settings: Settings
    provisioner: Provisioner
    stripe: StripeResource
    instance: dg.DagsterInstance
    source_url: str
    say: Callable[[str], None]
    run_ids: list[str]

    @property
    def resources(self) -> dict:
        return {
            "warehouse": WarehouseResource(
                url=from_environment("METERING_WAREHOUSE_URL", self.settings.warehouse_url)
            ),
            "source": SourceResource(url=self.source_url),
            "dbt": dbt_resource(),
            "stripe": self.stripe,
        }

    def run(self, job_name: str, **kwargs) -> dg.ExecuteInProcessResult:
        """One run of the code location's own job, bound to the demo's sandbox and source."""
        result = run_job(self.instance, job_name, resources=self.resources, **kwargs)
        self.run_ids.append(result.run_id)
        if not result.success:
            raise DemoError(
                f"{failure_message(result, job_name)}; open it with `metering dev` (see the end "
                "of this output)"
            )
        return result

    def sync_catalog(self) -> None:
        self.run("stripe_catalog_sync")

    def run_hours(self, first: datetime, last: datetime) -> dg.ExecuteInProcessResult:
        """The ``hourly_usage`` job over the hours first..last as one run (extract, validate,
        dbt, push): the same run Dagster's backfill launches for a range."""
        return self.run("hourly_usage", tags=hour_range_tags(first, last))


def dagster_instance(settings: Settings) -> tuple[dg.DagsterInstance, Path]:
    """The persistent instance ``metering dev`` opens afterwards."""
    home = prepare_dagster_home(settings)
    return dg.DagsterInstance.from_config(str(home)), home


def run_demo(*, events: int = DEMO_EVENTS, say: Callable[[str], None] = print) -> DemoResult:
    settings = load_settings()
    _fresh_warehouse(settings, say)
    instance, dagster_home = dagster_instance(settings)
    source_url = f"duckdb:///{settings.home / 'demo_source.duckdb'}"
    began = time.perf_counter()
    with _stripe(settings, say) as (provisioner, stripe_resource):
        stage = _Stage(settings, provisioner, stripe_resource, instance, source_url, say, [])
        # On a real account event names must be new: meters cannot be deleted.
        suffix = "" if settings.uses_sandbox else f"_{secrets.token_hex(3)}"
        meters = {meter: f"{meter}{suffix}" for meter in METERS}
        with instance:
            result = _run(stage, meters, events, dagster_home)
    say(f"\nDone in {time.perf_counter() - began:,.0f} s.")
    _print_how_to_open(dagster_home, say)
    return result


@contextmanager
def _stripe(settings: Settings, say) -> Iterator[tuple[Provisioner, StripeResource]]:
    if not settings.uses_sandbox:
        say("Stripe: the test-mode account of STRIPE_API_KEY (its test clocks keep the time).")
        if not settings.stripe_api_key.reveal().startswith(("sk_test_", "rk_test_")):
            raise DemoError("the demo creates customers and clocks: use a test-mode key")
        yield (
            Provisioner(settings.stripe_api_key.reveal(), settings.stripe_api_base),
            StripeResource(),
        )
        return
    from metering_pipeline.stripe_sandbox import run_sandbox

    # 100 requests/s (live mode's budget): in-process calls take microseconds, not the ~100 ms
    # of a real round trip, so test mode's 25/s would throttle the staging bursts.
    with run_sandbox(requests_per_second=100) as sandbox:
        say(f"Stripe: the sandbox, in-process at {sandbox.url} (no network, no key).")
        yield (
            Provisioner(settings.stripe_api_key.reveal(), sandbox.url, requests_per_second=90),
            StripeResource(api_base=sandbox.url),
        )


def _run(stage: _Stage, meters: dict[str, str], events: int, dagster_home: Path) -> DemoResult:
    say = stage.say
    _step(say, 1, "Stripe catalog: meters, tiered prices, customers on test clocks, subscriptions")
    customers, prices = _provision(stage.provisioner, meters, say)
    clocks = [customer.clock_id for customer in customers.values()]

    _step(say, 2, f"Seed the source: {events:,} usage events over {USAGE_DAYS} days + hostile rows")
    summary = seed_usage(
        stage.source_url,
        customers=len(CUSTOMERS),
        meters=list(meters.values()),
        start=USAGE_START,
        days=USAGE_DAYS,
        events=events,
        hostile=True,
        replace=True,
    )
    hostile = ", ".join(f"{count:,} {name}" for name, count in summary.hostile_rows.items())
    say(f"   {summary.rows:,} rows into {SOURCE_TABLE} ({hostile})")

    first_hour = min(customer.anchor for customer in CUSTOMERS)
    change = next(c for c in CUSTOMERS if c.plan_change)
    _step(
        say,
        3,
        f"The hourly runs up to {_when(PLAN_CHANGE_AT)}, as one run: extract, validate, dbt, push",
    )
    stage.provisioner.advance(clocks, PLAN_CHANGE_AT)
    stage.sync_catalog()
    stage.run_hours(first_hour, PLAN_CHANGE_AT - timedelta(hours=1))
    say(f"   {_ledger_summary(stage)}")

    meter, plan = change.plan_change
    _step(say, 4, f"{change.name} moves {meter} from {change.plans[meter]} to {plan} (mid-period)")
    stage.provisioner.change_price(customers[change.app_id], meters[meter], prices[plan])
    say("   Stripe billed the old price's usage it had received at that instant; the push had")
    say("   delivered it just before, so nothing is lost between the two prices")
    stage.sync_catalog()

    last_hour = max(customer.period[1] for customer in CUSTOMERS) - timedelta(hours=1)
    _step(say, 5, f"Single-run backfill of every hour, {_when(first_hour)} to {_when(last_hour)}")
    stage.provisioner.advance(clocks, BEFORE_PERIOD_END)
    result = stage.run_hours(first_hour, last_hour)
    say(f"   one run ({result.run_id[:8]}), {_quality_summary(stage)}")
    say(f"   {_ledger_summary(stage)}")

    _step(say, 6, "Each clock into its invoice's finalization grace hour; late rows arrive")
    for customer in CUSTOMERS:
        clock = customers[customer.app_id].clock_id
        stage.provisioner.advance([clock], customer.period[1] + INTO_GRACE)
    late_hours = _add_late_rows(stage.source_url, meters)
    stage.sync_catalog()
    stage.run_hours(min(late_hours), max(late_hours))
    say(f"   late usage pushed while the invoices are drafts; {_ledger_summary(stage)}")

    _step(say, 7, "Reconciliation per billing period: ours vs ledger vs Stripe")
    keys = sorted({period_key(*customer.period) for customer in CUSTOMERS})
    for key in keys:
        stage.run("period_reconciliation", partition_key=key)
    results = _reconciliation(stage.settings.warehouse_url)
    flagged = sum(1 for rows in results.values() for row in rows if row.flagged)
    say(f"   {len(keys)} billing periods, {flagged} item(s) flagged above the 1% threshold")

    _step(say, 8, "Each clock past the grace hour: Stripe finalizes the invoices")
    outcomes = []
    for customer in CUSTOMERS:
        clocked = customers[customer.app_id]
        stage.provisioner.advance([clocked.clock_id], customer.period[1] + PAST_GRACE)
        invoice = stage.provisioner.cycle_invoice(clocked, customer.period[1])
        outcomes.append(
            CustomerResult(
                customer,
                clocked.customer_id,
                invoice["id"],
                invoice["status"],
                invoice["amount_due"],
                tuple(results.get(clocked.customer_id, ())),
            )
        )
    _print_table(outcomes, meters, {price: plan for plan, price in prices.items()}, say)
    return DemoResult(
        tuple(outcomes),
        flagged,
        stage.source_url,
        stage.settings.warehouse_url,
        dagster_home,
        meters,
        tuple(stage.run_ids),
    )


def _provision(
    provisioner: Provisioner, meters: dict[str, str], say
) -> tuple[dict[str, ClockedCustomer], dict[str, str]]:
    """Customers by app id, and price ids by plan."""
    meter_ids = {
        meter: provisioner.meter(event_name, meter.replace("_", " "))
        for meter, event_name in meters.items()
    }
    plan_meter = {"standard": "api_calls", "pro": "api_calls"}
    prices = {
        plan: provisioner.tiered_price(
            meter_ids[plan_meter.get(plan, "messages")], f"{plan} plan", mode, tiers
        )
        for plan, (mode, tiers) in PLANS.items()
    }
    customers = {}
    for customer in CUSTOMERS:
        customers[customer.app_id] = provisioner.subscribed_customer(
            customer.name,
            {"metering_customer_id": customer.app_id},
            customer.anchor,
            {meters[meter]: prices[plan] for meter, plan in customer.plans.items()},
        )
        start, end = customer.period
        say(
            f"   {customer.name:<9} {customers[customer.app_id].customer_id}  period "
            f"{_when(start)} → {_when(end)}  "
            + ", ".join(f"{m}: {p} ({PLANS[p][0]})" for m, p in customer.plans.items())
        )
    return customers, prices


def _add_late_rows(source_url: str, meters: dict[str, str]) -> list[datetime]:
    """Usage from just before each period end that lands during the grace hour."""
    rows, hours = [], []
    for customer in CUSTOMERS:
        end = customer.period[1]
        occurred = end - LATE_BEFORE_END
        hours.append(occurred.replace(minute=0, second=0, microsecond=0))
        rows += [
            (
                f"late_{customer.app_id}_{meter}",
                customer.app_id,
                meters[meter],
                quantity,
                occurred,
                end + INTO_GRACE / 2,
            )
            for meter, quantity in LATE_USAGE.items()
        ]
    with Database(source_url).connect() as conn:
        conn.executemany(
            f"insert into {SOURCE_TABLE} (event_id, customer_id, meter, quantity, occurred_at, "
            "received_at) values (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return hours


def _fresh_warehouse(settings: Settings, say) -> None:
    """The demo starts from an empty warehouse: it replaces the embedded DuckDB file, and refuses
    a PostgreSQL warehouse that already holds pipeline tables rather than touch them."""
    if settings.warehouse_kind == "duckdb":
        path = duckdb_path(settings.warehouse_url)
        if path.exists():
            say(f"Starting from an empty warehouse: replacing {path}")
        for leftover in (path, path.with_name(path.name + ".wal")):
            leftover.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    with Database(settings.warehouse_url).connect() as conn:
        found = conn.fetchall(
            "select count(*) from information_schema.tables "
            "where table_schema in ('metering', 'analytics')"
        )[0][0]
    if found:
        raise DemoError(
            f"the warehouse at METERING_WAREHOUSE_URL already holds {found} pipeline tables; the "
            "demo needs an empty database: create one and point METERING_WAREHOUSE_URL at it"
        )


def _quality_summary(stage: _Stage) -> str:
    with Database(stage.settings.warehouse_url).connect() as conn:
        extracted = conn.fetchall("select count(*) from metering.raw_usage_events")[0][0]
        accepted = conn.fetchall("select count(*) from metering.accepted_usage_events")[0][0]
        reasons = conn.fetchall(
            "select reason_code, count(*) from metering.quarantined_usage_events "
            "group by reason_code order by 2 desc"
        )
    quarantined = sum(count for _, count in reasons)
    detail = ", ".join(f"{code} {count}" for code, count in reasons)
    return (
        f"{extracted:,} rows extracted = {accepted:,} accepted + {quarantined:,} quarantined "
        f"({detail})"
    )


def _ledger_summary(stage: _Stage) -> str:
    with Database(stage.settings.warehouse_url).connect() as conn:
        rows = conn.fetchall(
            "select status, count(*) from metering.meter_event_ledger group by status"
        )
    counts = ", ".join(f"{count} {status}" for status, count in sorted(rows))
    return f"meter-event ledger: {counts or 'empty'}"


def _reconciliation(warehouse_url: str) -> dict[str, list[ItemResult]]:
    with Database(warehouse_url).connect() as conn:
        rows = conn.fetchall(
            "select stripe_customer_id, meter, price_id, ours, stripe, expected_amount, "
            "variance, flagged from metering.reconciliation_results "
            "order by stripe_customer_id, meter, window_start"
        )
    results: dict[str, list[ItemResult]] = {}
    for customer, meter, price, ours, stripe_qty, expected, variance, flagged in rows:
        results.setdefault(customer, []).append(
            ItemResult(
                meter,
                price,
                Decimal(ours),
                Decimal(stripe_qty),
                None if expected is None else Decimal(expected),
                Decimal(variance),
                bool(flagged),
            )
        )
    return results


def _print_table(
    outcomes: list[CustomerResult], meters: dict[str, str], plans: dict[str, str], say
) -> None:
    """Per item our quantity and Stripe's; per customer the invoice beside the amount our own
    tier maths expects (reconciliation's), with a ✓ when Stripe's invoice equals it."""
    names = {event_name: meter for meter, event_name in meters.items()}
    say("")
    say(
        f"   {'customer':<10}{'meter':<11}{'price':<18}{'ours':>11}{'Stripe':>11}{'var.':>7}"
        f"{'expected':>12}{'invoice':>12}"
    )
    for outcome in outcomes:
        expected = expected_total(outcome)
        for index, item in enumerate(outcome.items):
            money = ""
            if index == 0:
                mark = "✓" if expected == outcome.invoice_amount_due else "✗"
                shown = _money(expected) if expected is not None else "–"
                money = f"{shown:>12}{_money(outcome.invoice_amount_due):>12} {mark}"
            say(
                f"   {outcome.customer.name if index == 0 else '':<10}"
                f"{names.get(item.meter, item.meter):<11}"
                f"{plans.get(item.price_id, item.price_id):<18}"
                f"{item.ours.normalize():>11,f}{item.stripe.normalize():>11,f}"
                f"{item.variance * 100:>6.1f}%{money}"
            )
    say(f"   invoices: {', '.join(f'{o.invoice_id} {o.invoice_status}' for o in outcomes)}")


def expected_total(outcome: CustomerResult) -> int | None:
    """The invoice total reconciliation's own tier maths expects for the customer's period."""
    amounts = [item.expected_amount for item in outcome.items]
    if not amounts or any(amount is None for amount in amounts):
        return None
    return int(sum(amounts, Decimal(0)))


def _print_how_to_open(dagster_home: Path, say) -> None:
    say("\nEvery step above was a real Dagster run. Open them, with their metadata and checks:")
    say(
        f"   DAGSTER_HOME={dagster_home} .venv/bin/metering dev   # then http://127.0.0.1:3000/runs"
    )


def _step(say, number: int, text: str) -> None:
    say(f"\n{number}. {text}")


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _money(cents: int) -> str:
    return f"${Decimal(cents) / 100:,.2f}"
