"""Reading one billing period three ways (marts, ledger, Stripe) and keeping the comparison.

The items come from the catalog (every metered item interval active in the period, through the
dbt view ``int_item_period_windows`` that also feeds the marts), not only from the marts' rows:
an item we measured nothing for can still carry usage at Stripe, and that is exactly the drift
reconciliation exists to catch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from metering_pipeline.billing.catalog import Invoice, InvoiceLine, Price
from metering_pipeline.billing.ledger import COUNTED_STATUSES, LedgerEntry, plan_push
from metering_pipeline.billing.modes import PushFormula, push_formula
from metering_pipeline.billing.tiers import amount_minor_units
from metering_pipeline.billing.units import MeterUnit, meter_unit, to_meter_units
from metering_pipeline.push.tables import LATE_USAGE, LEDGER, LedgerRow, read_prices
from metering_pipeline.push.tables import read_ledger as read_ledger_rows
from metering_pipeline.reconcile.grid import (
    MINUTE,
    Key,
    Reading,
    Stamped,
    Window,
    last_reading,
    sum_reading,
)
from metering_pipeline.reconcile.variance import ItemReconciliation, StripeSide, compare
from metering_pipeline.stripe_io import StripeGateway, StripeRejectedError
from metering_pipeline.warehouse import Connection, Database

RESULTS_TABLE = "metering.reconciliation_results"
MARTS_TABLE = "analytics.fct_usage_by_period"
# The item windows, defined once in dbt; a view, so they follow the catalog as synced now.
WINDOWS_TABLE = "analytics.int_item_period_windows"

RESULTS_DDL = f"""
create table if not exists {RESULTS_TABLE} (
    subscription_item_id text not null,
    price_id text not null,
    stripe_customer_id text not null,
    meter text not null,
    period_start timestamptz not null,
    period_end timestamptz not null,
    window_start timestamptz not null,
    window_end timestamptz not null,
    ours decimal(38, 12) not null,
    ledger decimal(38, 12),
    stripe decimal(38, 12) not null,
    stripe_invoice_items decimal(38, 12),
    late_written_off decimal(38, 12),
    late_unbilled decimal(38, 12),
    accounted decimal(38, 12),
    compared text,
    expected_amount decimal(38, 12),
    stripe_amount decimal(38, 12),
    amount_source text,
    currency text,
    variance decimal(38, 12) not null,
    flagged boolean not null,
    reconciled_at timestamptz not null
)
"""

# Columns added after the table first shipped: an existing table gets them on the next write.
ADDED_COLUMNS = (
    ("stripe_invoice_items", "decimal(38, 12)"),
    ("late_written_off", "decimal(38, 12)"),
    ("late_unbilled", "decimal(38, 12)"),
    ("accounted", "decimal(38, 12)"),
    ("compared", "text"),
)

RESULT_COLUMNS = (
    "subscription_item_id",
    "price_id",
    "stripe_customer_id",
    "meter",
    "period_start",
    "period_end",
    "window_start",
    "window_end",
    "ours",
    "ledger",
    "stripe",
    "stripe_invoice_items",
    "late_written_off",
    "late_unbilled",
    "accounted",
    "compared",
    "expected_amount",
    "stripe_amount",
    "amount_source",
    "currency",
    "variance",
    "flagged",
)

ITEMS_SQL = f"""
with

item_windows as (

    select * from {WINDOWS_TABLE}

),

usage as (

    select * from {MARTS_TABLE}

),

customers as (

    select * from metering.stripe_customers

)

select
    item_windows.subscription_item_id,
    item_windows.price_id,
    item_windows.subscription_id,
    item_windows.stripe_customer_id,
    item_windows.meter,
    item_windows.meter_id,
    coalesce(item_windows.aggregation_mode, 'sum') as aggregation_mode,
    item_windows.window_start,
    item_windows.window_end,
    coalesce(usage.quantity, 0) as quantity,
    customers.test_clock

from item_windows
left join usage
    on usage.subscription_item_id = item_windows.subscription_item_id
    and usage.price_id = item_windows.price_id
    and usage.period_start = item_windows.period_start
left join customers
    on customers.stripe_customer_id = item_windows.stripe_customer_id
where item_windows.period_start = ?
    and item_windows.period_end = ?
    -- metered items only: an item whose meter is not in stripe_meters has nothing to compare
    and item_windows.meter_id is not null
order by
    item_windows.stripe_customer_id,
    item_windows.subscription_item_id,
    item_windows.window_start
"""


NEIGHBOURS_SQL = f"""
select subscription_item_id, price_id, period_start, stripe_customer_id, meter, window_start,
    window_end
from {WINDOWS_TABLE}
where meter_id is not null and window_start < ? and window_end > ?
"""

LATE_SQL = f"""
select subscription_item_id, price_id, period_start, quantity, status, invoice_item_id
from {LATE_USAGE}
where period_start = ? and period_end = ?
"""

# The note on a ledger entry repair recorded (never sent by us): its second is the repair's, not
# the event's, so it cannot place usage inside a minute.
ADOPTED_NOTE = (
    "recorded by repair: Stripe counted this beyond our ledger (an event sent or cancelled "
    "outside the pipeline); not sent by us"
)


class ReconciliationInputError(RuntimeError):
    """The warehouse lacks a table reconciliation reads; the message says which step makes it."""


@dataclass(frozen=True)
class PeriodItem:
    """One metered item interval active in the period, with our quantity for it."""

    subscription_item_id: str
    price_id: str
    subscription_id: str
    stripe_customer_id: str
    meter: str
    meter_id: str
    aggregation_mode: str
    window_start: datetime
    window_end: datetime
    ours: Decimal
    test_clock: str | None
    period: tuple[datetime, datetime]

    @property
    def formula(self) -> PushFormula:
        return push_formula(self.aggregation_mode)

    @property
    def key(self) -> Key:
        """The push ledger's key: (subscription item, price, period start)."""
        return (self.subscription_item_id, self.price_id, self.period[0])

    @property
    def window(self) -> Window:
        return self.window_start, self.window_end


@dataclass(frozen=True)
class LateEntry:
    """One row of the late-usage queue for a key."""

    quantity: Decimal
    status: str
    invoice_item_id: str | None


@dataclass
class PeriodInputs:
    """What the warehouse holds for one period: the items, this period's ledger per key, the
    windows and counted ledger events of each customer's meter around it (for the minutes two
    windows share), and the late-usage queue."""

    period: tuple[datetime, datetime]
    items: list[PeriodItem]
    ledger: dict[Key, list[LedgerRow]]
    windows: dict[tuple[str, str], list[tuple[Key, Window]]] = field(default_factory=dict)
    stamped: dict[tuple[str, str], list[Stamped]] = field(default_factory=dict)
    late: dict[Key, list[LateEntry]] = field(default_factory=dict)

    def neighbours(self, item: PeriodItem) -> list[Window]:
        """The other windows of the item's customer on its meter."""
        return [
            window
            for key, window in self.windows.get((item.stripe_customer_id, item.meter), [])
            if key != item.key
        ]

    def entries(self, item: PeriodItem) -> list[Stamped]:
        return self.stamped.get((item.stripe_customer_id, item.meter), [])


def read_period_items(
    conn: Connection, period: tuple[datetime, datetime], units: Mapping[str, MeterUnit]
) -> list[PeriodItem]:
    """The period's metered items; ``ours`` in each meter's pushed unit, as Stripe counts it."""
    for table, maker in (
        ("metering.stripe_subscription_items", "the Stripe catalog sync (stripe_catalog)"),
        ("metering.billing_periods", "the Stripe catalog sync (stripe_catalog)"),
        (WINDOWS_TABLE, "the dbt models (usage_models)"),
        (MARTS_TABLE, "the dbt models (usage_models) for the period's hours"),
    ):
        if not conn.table_exists(table):
            raise ReconciliationInputError(
                f"cannot reconcile billing period {period[0].isoformat()} to "
                f"{period[1].isoformat()}: table {table} does not exist yet; materialize {maker} "
                "first"
            )
    rows = conn.fetchall(ITEMS_SQL, period)
    return [
        PeriodItem(
            *row[:7],
            window_start=row[7].astimezone(UTC),
            window_end=row[8].astimezone(UTC),
            ours=to_meter_units(Decimal(row[9]), meter_unit(units, row[4])),
            test_clock=row[10],
            period=period,
        )
        for row in rows
    ]


def read_inputs(
    conn: Connection, period: tuple[datetime, datetime], units: Mapping[str, MeterUnit]
) -> PeriodInputs:
    """Everything reconciliation and repair read from the warehouse for one period; quantities
    in each meter's pushed unit."""
    items = read_period_items(conn, period, units)
    around = (period[0] - MINUTE, period[1] + MINUTE)
    inputs = PeriodInputs(period, items, read_ledger(conn, period))
    for item_id, price_id, start, customer, meter, window_start, window_end in conn.fetchall(
        NEIGHBOURS_SQL, (around[1], around[0])
    ):
        inputs.windows.setdefault((customer, meter), []).append(
            (
                (item_id, price_id, start.astimezone(UTC)),
                (window_start.astimezone(UTC), window_end.astimezone(UTC)),
            )
        )
    if conn.table_exists(LEDGER):
        adopted = {
            row[0]
            for row in conn.fetchall(
                f"select identifier from {LEDGER} where last_error = ?", (ADOPTED_NOTE,)
            )
        }
        for row in read_ledger_rows(conn, around, None):
            if row.status in COUNTED_STATUSES and row.identifier not in adopted:
                inputs.stamped.setdefault((row.stripe_customer_id, row.meter), []).append(
                    Stamped(row.key, row.value, row.event_timestamp.astimezone(UTC), row.sequence)
                )
    if conn.table_exists(LATE_USAGE):
        for item_id, price_id, start, quantity, status, invoice_item in conn.fetchall(
            LATE_SQL, period
        ):
            inputs.late.setdefault((item_id, price_id, start.astimezone(UTC)), []).append(
                LateEntry(Decimal(quantity), status, invoice_item)
            )
    return inputs


def read_ledger(conn: Connection, period: tuple[datetime, datetime]) -> dict[Key, list[LedgerRow]]:
    """The push ledger's entries per key for the period (none before the first push)."""
    if not conn.table_exists(LEDGER):
        return {}
    entries: dict[Key, list[LedgerRow]] = defaultdict(list)
    for row in read_ledger_rows(conn, period, None):
        if row.period_start == period[0] and row.period_end == period[1]:
            entries[row.key].append(row)
    return entries


def ledger_counted(formula: PushFormula, rows: Sequence[LedgerRow]) -> Decimal | None:
    """What the ledger says Stripe counts for a key: the push's own arithmetic (None: nothing
    sent yet)."""
    if not rows:
        return None
    entries = [
        LedgerEntry(row.sequence, row.value, row.status)  # type: ignore[arg-type]
        for row in rows
    ]
    return plan_push(formula, Decimal(0), entries).counted


class StripeView:
    """What Stripe bills per item window, read once per run: each customer's clock, the meter's
    summaries on the minute grid, and each subscription's invoices and upcoming invoice (one list
    and one preview per subscription, whatever its number of items)."""

    def __init__(self, gateway: StripeGateway) -> None:
        self._gateway = gateway
        self._clocks: dict[str | None, datetime] = {}
        self._invoices: dict[str, list[Invoice]] = {}
        self._previews: dict[str, Invoice | None] = {}

    def clock(self, test_clock: str | None) -> datetime:
        if test_clock not in self._clocks:
            self._clocks[test_clock] = self._gateway.clock_time(test_clock)
        return self._clocks[test_clock]

    def side(self, item: PeriodItem, inputs: PeriodInputs) -> StripeSide:
        """Everything that bills the item's window: the meter, the invoice item Stripe made when
        the price left the item, late usage we invoiced; and late usage left unbilled."""
        reading, meter = self.meter_reading(item, inputs)
        replaced = self.replaced(item)
        found = self._invoice_item_lines(item, inputs)
        late = inputs.late.get(item.key, [])
        change = self._change_lines(item)
        billed = [entry.quantity for entry in late if entry.invoice_item_id in found]
        written_off = [entry.quantity for entry in late if entry.status == "written_off"]
        unbilled = [
            entry.quantity
            for entry in late
            if entry.status != "written_off" and entry.invoice_item_id not in found
        ]
        return StripeSide(
            meter=meter,
            meter_bills=not replaced,
            invoice_items=_sum(line.quantity or Decimal(0) for line in change) + _sum(billed),
            written_off=_sum(written_off),
            unbilled=_sum(unbilled),
            compared=reading.describe(),
        )

    def meter_reading(self, item: PeriodItem, inputs: PeriodInputs) -> tuple[Reading, Decimal]:
        """Stripe's meter figure for the window, read on the minute grid (see grid.py)."""
        entries = inputs.entries(item)
        if item.formula == "last":
            reading, summary = last_reading(
                item.window, item.key, entries, lambda grid: self._summary(item, grid)
            )
        else:
            reading = sum_reading(item.window, inputs.neighbours(item), item.key, entries)
            summary = self._summary(item, reading.grid)
        return reading, reading.figure(summary, item.formula)

    def replaced(self, item: PeriodItem) -> bool:
        """The price left the item before the period ended (and that time has come): Stripe
        bills the window's usage only through the invoice item it created then (flexible mode),
        or not at all (classic); the meter no longer bills it."""
        return item.window_end < item.period[1] and self.clock(item.test_clock) >= item.window_end

    def amount(self, item: PeriodItem, inputs: PeriodInputs) -> tuple[Decimal | None, str | None]:
        """Stripe's amount for the window: the item's lines on the period's invoice (or on the
        preview while the period is open), plus the invoice items that bill the window."""
        amount, source = None, None
        for invoice in self._documents(item, preview=False):
            lines = _item_lines(invoice, item)
            if lines:
                amount, source = _total(lines), f"invoice {invoice.id} ({invoice.status})"
                break
        else:
            if self.clock(item.test_clock) < item.period[1]:
                preview = self._preview(item)
                lines = _item_lines(preview, item) if preview else []
                if lines:
                    amount, source = _total(lines), "preview"
        extra = {**self._invoice_item_lines(item, inputs)}
        extra.update({line.invoice_item_id or line.id: line for line in self._change_lines(item)})
        if extra:
            items = ", ".join(sorted(extra))
            amount = (amount or Decimal(0)) + _total(extra.values())
            source = f"{source}; invoice items {items}" if source else f"invoice items {items}"
        return amount, source

    def _summary(self, item: PeriodItem, grid: Window) -> Decimal:
        if grid[0] >= grid[1]:
            return Decimal(0)
        return self._gateway.meter_event_summaries(
            item.meter_id, item.stripe_customer_id, grid[0], grid[1], meter=item.meter
        )

    def _change_lines(self, item: PeriodItem) -> list[InvoiceLine]:
        """The invoice item Stripe created at the item's price when the price left it, once the
        window is closed that way: priced at this price, inside the window."""
        if not self.replaced(item):
            return []
        lines = {
            line.invoice_item_id: line
            for invoice in self._documents(item)
            for line in invoice.lines
            if line.invoice_item_id is not None
            and line.price_id == item.price_id
            and line.period_start >= item.window_start
            and line.period_end <= item.window_end
        }
        return list(lines.values())

    def _invoice_item_lines(self, item: PeriodItem, inputs: PeriodInputs) -> dict[str, InvoiceLine]:
        """The late-usage invoice items of the key that Stripe holds, on an invoice that is not
        void or still pending on the upcoming one."""
        wanted = {e.invoice_item_id for e in inputs.late.get(item.key, []) if e.invoice_item_id}
        if not wanted:
            return {}
        return {
            line.invoice_item_id: line
            for invoice in self._documents(item)
            for line in invoice.lines
            if line.invoice_item_id in wanted
        }

    def _documents(self, item: PeriodItem, preview: bool = True) -> list[Invoice]:
        """The subscription's invoices (void ones left out), newest first, then its preview."""
        if item.subscription_id not in self._invoices:
            self._invoices[item.subscription_id] = [
                invoice
                for invoice in self._gateway.list_invoices(subscription=item.subscription_id)
                if invoice.status != "void"
            ]
        documents = list(self._invoices[item.subscription_id])
        upcoming = self._preview(item) if preview else None
        return [*documents, upcoming] if upcoming else documents

    def _preview(self, item: PeriodItem) -> Invoice | None:
        if item.subscription_id not in self._previews:
            self._previews[item.subscription_id] = None
            with suppress(StripeRejectedError):  # a canceled subscription has no upcoming one
                self._previews[item.subscription_id] = self._gateway.invoice_preview(
                    item.stripe_customer_id, item.subscription_id
                )
        return self._previews[item.subscription_id]


def reconcile_period(
    database: Database,
    gateway: StripeGateway,
    period: tuple[datetime, datetime],
    threshold: Decimal,
    meter_units: Mapping[str, MeterUnit],
) -> list[ItemReconciliation]:
    """Compare every metered item of the period: ours, the ledger's, what Stripe bills; amounts
    too."""
    with database.connect() as conn:
        inputs = read_inputs(conn, period, meter_units)
        prices: dict[str, Price] = read_prices(conn, (item.price_id for item in inputs.items))
    view = StripeView(gateway)
    results = []
    for item in inputs.items:
        price = prices.get(item.price_id)
        stripe_amount, source = view.amount(item, inputs)
        results.append(
            compare(
                subscription_item_id=item.subscription_item_id,
                price_id=item.price_id,
                stripe_customer_id=item.stripe_customer_id,
                meter=item.meter,
                period=period,
                window=item.window,
                ours=item.ours,
                ledger=ledger_counted(item.formula, inputs.ledger.get(item.key, [])),
                stripe=view.side(item, inputs),
                expected_amount=amount_minor_units(price, item.ours) if price else None,
                stripe_amount=stripe_amount,
                amount_source=source,
                currency=price.currency if price else None,
                threshold=threshold,
            )
        )
    return results


def write_results(
    conn: Connection,
    period: tuple[datetime, datetime],
    rows: Sequence[ItemReconciliation],
    reconciled_at: datetime,
) -> None:
    """Replace the period's rows, in the caller's transaction."""
    conn.ensure_schema()
    conn.execute(RESULTS_DDL)
    for column, kind in ADDED_COLUMNS:
        conn.execute(f"alter table {RESULTS_TABLE} add column if not exists {column} {kind}")
    conn.execute(f"delete from {RESULTS_TABLE} where period_start = ? and period_end = ?", period)
    columns = (*RESULT_COLUMNS, "reconciled_at")
    conn.executemany(
        f"insert into {RESULTS_TABLE} ({', '.join(columns)}) "
        f"values ({', '.join('?' * len(columns))})",
        [
            tuple(getattr(row, column) for column in RESULT_COLUMNS) + (reconciled_at,)
            for row in rows
        ],
    )


def _item_lines(invoice: Invoice, item: PeriodItem) -> list[InvoiceLine]:
    """The invoice's subscription-item lines for this item at this price inside its window."""
    return [
        line
        for line in invoice.lines
        if line.subscription_item_id == item.subscription_item_id
        and (line.price_id is None or line.price_id == item.price_id)
        and line.period_start < item.window_end
        and line.period_end > item.window_start
    ]


def _total(lines: Iterable[InvoiceLine]) -> Decimal:
    return Decimal(sum(line.amount for line in lines))


def _sum(values: Iterable[Decimal]) -> Decimal:
    return sum(values, Decimal(0))
