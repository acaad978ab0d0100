"""The push ledger and the late-usage queue in the warehouse, and the reads the reconciler needs.

One push key is one (subscription item, price, billing period): the grain of
``analytics.fct_usage_by_period``. The price is part of the key because Stripe keeps the item id
when a price changes mid-period; each price's part of the period is billed on its own line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering_pipeline.billing.catalog import Price, Tier
from metering_pipeline.billing.identifiers import meter_event_identifier
from metering_pipeline.warehouse import Connection

LEDGER = "metering.meter_event_ledger"
LATE_USAGE = "metering.late_usage"
LOCK_KEY = "metering.meter_event_ledger"

DDL = (
    f"""
    create table if not exists {LEDGER} (
        identifier text primary key,
        subscription_item_id text not null,
        price_id text not null,
        stripe_customer_id text not null,
        meter text not null,
        period_start timestamptz not null,
        period_end timestamptz not null,
        sequence integer not null,
        value decimal(38, 12) not null,
        event_timestamp timestamptz not null,
        status text not null,
        attempts integer not null,
        last_error text,
        created_at timestamptz not null,
        sent_at timestamptz,
        stripe_clock_at timestamptz,
        attempted_at timestamptz,
        unique (subscription_item_id, price_id, period_start, sequence)
    )
    """,
    # ledgers created before these columns existed
    f"alter table {LEDGER} add column if not exists stripe_clock_at timestamptz",
    f"alter table {LEDGER} add column if not exists attempted_at timestamptz",
    f"""
    create table if not exists {LATE_USAGE} (
        identifier text primary key,
        subscription_item_id text not null,
        price_id text not null,
        subscription_id text not null,
        stripe_customer_id text not null,
        meter text not null,
        period_start timestamptz not null,
        period_end timestamptz not null,
        sequence integer not null,
        quantity decimal(38, 12) not null,
        billed_quantity decimal(38, 12) not null,
        amount_impact bigint not null,
        currency text not null,
        reason text not null,
        policy text not null,
        status text not null,
        invoice_item_id text,
        last_error text,
        created_at timestamptz not null,
        unique (subscription_item_id, price_id, period_start, sequence)
    )
    """,
)


@dataclass(frozen=True)
class PushKey:
    """One (item, price, period) with what we measured and where its events may be stamped."""

    subscription_item_id: str
    price_id: str
    subscription_id: str
    stripe_customer_id: str
    meter: str
    aggregation_mode: str
    formula: str | None
    event_time_window: str | None
    period_start: datetime
    period_end: datetime
    window_start: datetime
    window_end: datetime
    desired: Decimal
    last_usage_at: datetime | None
    test_clock: str | None

    @property
    def id(self) -> tuple[str, str, datetime]:
        return (self.subscription_item_id, self.price_id, self.period_start)


@dataclass(frozen=True)
class LedgerRow:
    identifier: str
    subscription_item_id: str
    price_id: str
    stripe_customer_id: str
    meter: str
    period_start: datetime
    period_end: datetime
    sequence: int
    value: Decimal
    event_timestamp: datetime
    status: str
    attempts: int
    created_at: datetime
    stripe_clock_at: datetime | None = None  # Stripe's clock for the customer when written
    attempted_at: datetime | None = None  # our last attempt to send it

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.subscription_item_id, self.price_id, self.period_start)


@dataclass(frozen=True)
class LateRow:
    identifier: str
    subscription_item_id: str
    price_id: str
    subscription_id: str
    stripe_customer_id: str
    meter: str
    period_start: datetime
    period_end: datetime
    sequence: int
    quantity: Decimal
    billed_quantity: Decimal
    amount_impact: int
    currency: str
    reason: str
    policy: str
    status: str

    @property
    def key(self) -> tuple[str, str, datetime]:
        return (self.subscription_item_id, self.price_id, self.period_start)


def entry_identifier(
    subscription_item_id: str,
    price_id: str,
    stripe_customer_id: str,
    meter: str,
    period_start: datetime,
    sequence: int,
) -> str:
    """The meter-event identifier of a ledger entry; the price joins the item so that the two
    prices of one item in one period never share an identifier."""
    return meter_event_identifier(
        f"{subscription_item_id}/{price_id}", stripe_customer_id, meter, period_start, sequence
    )


def ensure_push_tables(conn: Connection) -> None:
    """Create the tables on first use. Under the ledger lock (held to the end of the caller's
    transaction): two first runs racing on ``create table if not exists`` would otherwise
    collide in PostgreSQL's catalog."""
    with conn.advisory_lock(LOCK_KEY):
        conn.ensure_schema()
        for statement in DDL:
            conn.execute(statement)


def _scope(
    alias: str, window: tuple[datetime, datetime] | None, customer: str | None
) -> tuple[str, list]:
    """A where clause selecting periods overlapping ``window`` and/or one customer."""
    clauses, params = ["1 = 1"], []
    if window is not None:
        clauses.append(f"{alias}.period_start < ? and {alias}.period_end > ?")
        params += [window[1], window[0]]
    if customer is not None:
        clauses.append(f"{alias}.stripe_customer_id = ?")
        params.append(customer)
    return " and ".join(clauses), params


def read_keys(
    conn: Connection, window: tuple[datetime, datetime] | None, customer: str | None
) -> list[PushKey]:
    """Desired state: the marts' usage per key, windowed by the catalog as it is now.

    The window comes from the current catalog, not from the mart, so an interval closed by a
    sync since the last dbt build is never pushed as if still active.
    """
    where, params = _scope("usage", window, customer)
    rows = conn.fetchall(
        f"""
        with

        usage_by_period as (
            select * from analytics.fct_usage_by_period
        ),

        usage_hourly as (
            select * from analytics.fct_usage_hourly
        ),

        subscription_items as (
            select * from metering.stripe_subscription_items
        ),

        meters as (
            select * from metering.stripe_meters
        ),

        customers as (
            select * from metering.stripe_customers
        ),

        last_usage as (
            select subscription_item_id, price_id, period_start,
                max(last_occurred_at) as last_usage_at
            from usage_hourly
            group by subscription_item_id, price_id, period_start
        )

        select
            usage.subscription_item_id,
            usage.price_id,
            items.subscription_id,
            usage.stripe_customer_id,
            usage.meter,
            usage.aggregation_mode,
            meters.formula,
            meters.event_time_window,
            usage.period_start,
            usage.period_end,
            greatest(usage.period_start, items.valid_from) as window_start,
            least(usage.period_end, coalesce(items.valid_to, usage.period_end)) as window_end,
            usage.quantity,
            last_usage.last_usage_at,
            customers.test_clock
        from usage_by_period as usage
        inner join subscription_items as items
            on items.subscription_item_id = usage.subscription_item_id
            and items.price_id = usage.price_id
            and items.valid_from < usage.period_end
            and coalesce(items.valid_to, usage.period_end) > usage.period_start
        left join meters
            on meters.event_name = usage.meter and meters.status = 'active'
        left join customers
            on customers.stripe_customer_id = usage.stripe_customer_id
        left join last_usage
            on last_usage.subscription_item_id = usage.subscription_item_id
            and last_usage.price_id = usage.price_id
            and last_usage.period_start = usage.period_start
        where {where}
        order by usage.stripe_customer_id, usage.meter, usage.period_start, window_start
        """,
        params,
    )
    return [PushKey(*row[:12], Decimal(row[12]), *row[13:]) for row in rows if row[10] < row[11]]


_LEDGER_COLUMNS = (
    "identifier, subscription_item_id, price_id, stripe_customer_id, meter, period_start, "
    "period_end, sequence, value, event_timestamp, status, attempts, created_at, "
    "stripe_clock_at, attempted_at"
)
_LATE_COLUMNS = (
    "identifier, subscription_item_id, price_id, subscription_id, stripe_customer_id, meter, "
    "period_start, period_end, sequence, quantity, billed_quantity, amount_impact, currency, "
    "reason, policy, status"
)


def read_ledger(
    conn: Connection, window: tuple[datetime, datetime] | None, customer: str | None
) -> list[LedgerRow]:
    """Every entry of the keys in scope, plus every pending entry anywhere (to re-send)."""
    where, params = _scope("ledger", window, customer)
    rows = conn.fetchall(
        f"select {_LEDGER_COLUMNS} from {LEDGER} as ledger "
        f"where ({where}) or ledger.status = 'pending' order by sequence",
        params,
    )
    return [LedgerRow(*row[:8], Decimal(row[8]), *row[9:]) for row in rows]


def read_late(
    conn: Connection, window: tuple[datetime, datetime] | None, customer: str | None
) -> list[LateRow]:
    """Late usage of the keys in scope, plus invoice items still to create anywhere."""
    where, params = _scope("late", window, customer)
    rows = conn.fetchall(
        f"select {_LATE_COLUMNS} from {LATE_USAGE} as late "
        f"where ({where}) or late.status = 'pending' order by sequence",
        params,
    )
    return [
        LateRow(*row[:9], Decimal(row[9]), Decimal(row[10]), int(row[11]), *row[12:])
        for row in rows
    ]


def insert_pending(conn: Connection, entries: Sequence[LedgerRow]) -> None:
    conn.executemany(
        f"insert into {LEDGER} ({_LEDGER_COLUMNS}) values ({', '.join('?' * 15)})",
        [
            (
                e.identifier,
                e.subscription_item_id,
                e.price_id,
                e.stripe_customer_id,
                e.meter,
                e.period_start,
                e.period_end,
                e.sequence,
                e.value,
                e.event_timestamp,
                e.status,
                e.attempts,
                e.created_at,
                e.stripe_clock_at,
                e.attempted_at,
            )
            for e in entries
        ],
    )


def insert_late(conn: Connection, rows: Sequence[LateRow], created_at: datetime) -> None:
    conn.executemany(
        f"insert into {LATE_USAGE} ({_LATE_COLUMNS}, created_at) values ({', '.join('?' * 17)})",
        [
            (
                r.identifier,
                r.subscription_item_id,
                r.price_id,
                r.subscription_id,
                r.stripe_customer_id,
                r.meter,
                r.period_start,
                r.period_end,
                r.sequence,
                r.quantity,
                r.billed_quantity,
                r.amount_impact,
                r.currency,
                r.reason,
                r.policy,
                r.status,
                created_at,
            )
            for r in rows
        ],
    )


def record_outcomes(
    conn: Connection, outcomes: Iterable[tuple[str, str, str | None]], at: datetime
) -> None:
    """``(identifier, status, error)`` after a delivery attempt; ``sent_at`` only when sent.
    An entry Stripe has meanwhile reported invalid stays ``rejected``: a late 200 is no news."""
    conn.executemany(
        f"update {LEDGER} set status = ?, attempts = attempts + 1, last_error = ?, "
        "sent_at = case when ? = 'sent' then cast(? as timestamptz) else sent_at end, "
        "attempted_at = ? where identifier = ? and status <> 'rejected'",
        [(status, error, status, at, at, identifier) for identifier, status, error in outcomes],
    )


def mark_rejected(conn: Connection, rejections: Sequence[tuple[str, str]]) -> list[LedgerRow]:
    """``(identifier, error)`` of meter events Stripe accepted and then reported invalid: their
    entries become ``rejected`` (never counted, so the next push sends the usage again under a
    new identifier) with the error in ``last_error``. Returns the entries found; identifiers
    the ledger does not hold (events sent by something else) are left to the caller to name."""
    if not rejections:
        return []
    with conn.advisory_lock(LOCK_KEY):
        conn.executemany(
            f"update {LEDGER} set status = 'rejected', last_error = ? where identifier = ?",
            [(error, identifier) for identifier, error in rejections],
        )
        identifiers = sorted({identifier for identifier, _ in rejections})
        rows = conn.fetchall(
            f"select {_LEDGER_COLUMNS} from {LEDGER} "
            f"where identifier in ({', '.join('?' * len(identifiers))}) order by created_at",
            identifiers,
        )
    return [LedgerRow(*row[:8], Decimal(row[8]), *row[9:]) for row in rows]


def record_verdicts(
    conn: Connection, verdicts: Iterable[tuple[str, str, str]], at: datetime
) -> None:
    """``(identifier, status, note)`` for pending entries settled by Stripe's summaries
    (``sent``: it holds them; ``expired``: it never got them), without a send attempt."""
    conn.executemany(
        f"update {LEDGER} set status = ?, last_error = ?, "
        "sent_at = case when ? = 'sent' then cast(? as timestamptz) else sent_at end "
        "where identifier = ? and status = 'pending'",
        [(status, note, status, at, identifier) for identifier, status, note in verdicts],
    )


def read_events_of(
    conn: Connection, customer: str, meter: str, start: datetime, end: datetime
) -> list[LedgerRow]:
    """Every entry for a customer's meter stamped in ``[start, end)``, across keys: what
    Stripe's summary over that range is made of, as far as the ledger knows."""
    rows = conn.fetchall(
        f"select {_LEDGER_COLUMNS} from {LEDGER} where stripe_customer_id = ? and meter = ? "
        "and event_timestamp >= ? and event_timestamp < ? order by sequence",
        [customer, meter, start, end],
    )
    return [LedgerRow(*row[:8], Decimal(row[8]), *row[9:]) for row in rows]


def read_meters(conn: Connection) -> dict[str, tuple[str, str]]:
    """Active meters from the synced catalog: event_name -> (meter id, formula)."""
    rows = conn.fetchall(
        "select event_name, meter_id, formula from metering.stripe_meters where status = 'active'"
    )
    return {name: (meter_id, formula) for name, meter_id, formula in rows}


def read_test_clocks(conn: Connection) -> dict[str, str | None]:
    """Each synced customer's test clock (None: Stripe's wall clock)."""
    rows = conn.fetchall("select stripe_customer_id, test_clock from metering.stripe_customers")
    return dict(rows)


def record_invoice_items(
    conn: Connection, outcomes: Iterable[tuple[str, str, str | None, str | None]]
) -> None:
    """``(identifier, status, invoice_item_id, error)`` after creating late-usage invoice items."""
    conn.executemany(
        f"update {LATE_USAGE} set status = ?, invoice_item_id = ?, last_error = ? "
        "where identifier = ?",
        [(status, item, error, identifier) for identifier, status, item, error in outcomes],
    )


def read_prices(conn: Connection, price_ids: Iterable[str]) -> dict[str, Price]:
    """Synced prices as catalog values, for pricing late usage on the tiers Stripe applies."""
    wanted = sorted(set(price_ids))
    if not wanted:
        return {}
    placeholders = ", ".join("?" * len(wanted))
    rows = conn.fetchall(
        "select price_id, product_id, meter_id, currency, billing_scheme, tiers_mode, "
        "unit_amount_decimal, tiers, transform_divide_by, transform_round, interval, "
        f"interval_count from metering.stripe_prices where price_id in ({placeholders})",
        wanted,
    )
    return {row[0]: _price(row) for row in rows}


def _price(row: tuple) -> Price:
    (
        price_id,
        product,
        meter,
        currency,
        scheme,
        mode,
        unit,
        tiers,
        divide,
        rounding,
        interval,
        count,
    ) = row
    return Price(
        id=price_id,
        product_id=product or "",
        currency=currency,
        billing_scheme=scheme,
        unit_amount_decimal=None if unit is None else Decimal(unit),
        tiers_mode=mode,
        tiers=tuple(
            Tier(
                up_to=tier["up_to"],
                unit_amount_decimal=Decimal(tier["unit_amount_decimal"] or 0),
                flat_amount_decimal=Decimal(tier["flat_amount_decimal"] or 0),
            )
            for tier in json.loads(tiers or "[]")
        ),
        transform_divide_by=divide,
        transform_round=rounding,
        meter_id=meter,
        interval=interval,
        interval_count=count,
    )


def pending_summary(conn: Connection, now: datetime) -> tuple[int, float | None]:
    """How many ledger entries are still pending, and the age in seconds of the oldest."""
    row = conn.fetchone(f"select count(*), min(created_at) from {LEDGER} where status = 'pending'")
    count, oldest = row or (0, None)
    return int(count), None if oldest is None else (now - oldest).total_seconds()
