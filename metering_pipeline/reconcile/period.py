"""Reading one billing period three ways (marts, ledger, Stripe) and keeping the comparison.

The items come from the catalog (every metered item interval active in the period, through the
dbt view ``int_item_period_windows`` that also feeds the marts), not only from the marts' rows:
an item we measured nothing for can still carry usage at Stripe, and that is exactly the drift
reconciliation exists to catch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from metering_pipeline.billing.catalog import Invoice
from metering_pipeline.billing.ledger import LedgerEntry, plan_push
from metering_pipeline.billing.modes import PushFormula, push_formula
from metering_pipeline.billing.tiers import amount_minor_units
from metering_pipeline.billing.units import MeterUnit, meter_unit, to_meter_units
from metering_pipeline.push.tables import LEDGER, LedgerRow, read_prices
from metering_pipeline.push.tables import read_ledger as read_ledger_rows
from metering_pipeline.reconcile.variance import ItemReconciliation, compare
from metering_pipeline.stripe_io import StripeGateway
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
    expected_amount decimal(38, 12),
    stripe_amount decimal(38, 12),
    amount_source text,
    currency text,
    variance decimal(38, 12) not null,
    flagged boolean not null,
    reconciled_at timestamptz not null
)
"""

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
    def key(self) -> tuple[str, str, datetime]:
        """The push ledger's key: (subscription item, price, period start)."""
        return (self.subscription_item_id, self.price_id, self.period[0])

    @property
    def minute_window(self) -> tuple[datetime, datetime]:
        """The window on Stripe's minute grid, as event summaries require. Both ends round down,
        so the windows of an item replaced mid-minute still tile without overlap."""
        return _floor_minute(self.window_start), _floor_minute(self.window_end)


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


def read_ledger(
    conn: Connection, period: tuple[datetime, datetime]
) -> dict[tuple[str, str, datetime], list[LedgerRow]]:
    """The push ledger's entries per key for the period (none before the first push)."""
    if not conn.table_exists(LEDGER):
        return {}
    entries: dict[tuple[str, str, datetime], list[LedgerRow]] = defaultdict(list)
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


class _StripeAmounts:
    """Stripe's amount per item: from the invoice once it exists, else from the preview of the
    open period. One list and one preview per subscription, whatever its number of items."""

    def __init__(self, gateway: StripeGateway) -> None:
        self._gateway = gateway
        self._invoices: dict[str, list[Invoice]] = {}
        self._previews: dict[str, Invoice | None] = {}

    def amount(self, item: PeriodItem, clock: datetime) -> tuple[Decimal | None, str | None]:
        if item.subscription_id not in self._invoices:
            self._invoices[item.subscription_id] = self._gateway.list_invoices(
                subscription=item.subscription_id
            )
        for invoice in self._invoices[item.subscription_id]:
            if invoice.status == "void":
                continue
            amount = _lines_amount(invoice, item)
            if amount is not None:
                return amount, f"invoice {invoice.id} ({invoice.status})"
        if clock >= item.period[1]:
            return None, None
        if item.subscription_id not in self._previews:
            self._previews[item.subscription_id] = self._gateway.invoice_preview(
                item.stripe_customer_id, item.subscription_id
            )
        preview = self._previews[item.subscription_id]
        amount = _lines_amount(preview, item) if preview else None
        return (amount, "preview") if amount is not None else (None, None)


def stripe_quantity(gateway: StripeGateway, item: PeriodItem) -> Decimal:
    """What Stripe counts for the item's customer and meter over the item's window."""
    start, end = item.minute_window
    if start >= end:
        return Decimal(0)
    return gateway.meter_event_summaries(
        item.meter_id, item.stripe_customer_id, start, end, meter=item.meter
    )


def reconcile_period(
    database: Database,
    gateway: StripeGateway,
    period: tuple[datetime, datetime],
    threshold: Decimal,
    meter_units: Mapping[str, MeterUnit],
) -> list[ItemReconciliation]:
    """Compare every metered item of the period: ours, the ledger's, Stripe's; amounts too."""
    with database.connect() as conn:
        items = read_period_items(conn, period, meter_units)
        prices = read_prices(conn, (item.price_id for item in items))
        ledger = read_ledger(conn, period)
    amounts = _StripeAmounts(gateway)
    clocks: dict[str | None, datetime] = {}
    results = []
    for item in items:
        if item.test_clock not in clocks:
            clocks[item.test_clock] = gateway.clock_time(item.test_clock)
        stripe = stripe_quantity(gateway, item)
        price = prices.get(item.price_id)
        stripe_amount, source = amounts.amount(item, clocks[item.test_clock])
        results.append(
            compare(
                subscription_item_id=item.subscription_item_id,
                price_id=item.price_id,
                stripe_customer_id=item.stripe_customer_id,
                meter=item.meter,
                period=period,
                window=(item.window_start, item.window_end),
                ours=item.ours,
                ledger=ledger_counted(item.formula, ledger.get(item.key, [])),
                stripe=stripe,
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


def _lines_amount(invoice: Invoice, item: PeriodItem) -> Decimal | None:
    """The amount of the invoice's lines for this item at this price inside its window."""
    lines = [
        line
        for line in invoice.lines
        if line.subscription_item_id == item.subscription_item_id
        and (line.price_id is None or line.price_id == item.price_id)
        and line.period_start < item.window_end
        and line.period_end > item.window_start
    ]
    return Decimal(sum(line.amount for line in lines)) if lines else None


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)
