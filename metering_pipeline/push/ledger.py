"""The meter-event ledger in the warehouse, and the one path by which usage reaches Stripe.

Both the push and the repair job go through ``deliver``: under the key's lock it reads every
entry, lets ``billing.ledger.plan_push`` decide what to (re-)send, and writes the new entry
``pending`` in a committed transaction *before* calling Stripe; after Stripe's answer the entry
becomes ``sent`` (a duplicate-identifier answer is a delivery too) or, on a definite refusal,
``failed``. A run that dies between the two leaves ``pending``, which the next run re-sends with
the same identifier (DESIGN §4.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from metering_pipeline.billing.identifiers import meter_event_identifier
from metering_pipeline.billing.ledger import LedgerEntry, event_timestamp, plan_push
from metering_pipeline.billing.modes import PushFormula
from metering_pipeline.stripe_io import CallContext, StripeGateway, StripeRejectedError
from metering_pipeline.warehouse import Connection, Database

LEDGER_TABLE = "metering.meter_event_ledger"

LEDGER_DDL = f"""
create table if not exists {LEDGER_TABLE} (
    identifier text primary key,
    subscription_item_id text not null,
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
    sent_at timestamptz
)
"""


@dataclass(frozen=True)
class LedgerKey:
    """One (subscription item, billing period): the unit the push reconciles."""

    subscription_item_id: str
    stripe_customer_id: str
    meter: str
    period_start: datetime
    period_end: datetime

    @property
    def lock_name(self) -> str:
        return f"ledger:{self.subscription_item_id}:{self.period_start.isoformat()}"

    def context(self) -> CallContext:
        return CallContext(
            customer=self.stripe_customer_id,
            meter=self.meter,
            period=(self.period_start, self.period_end),
            subscription_item=self.subscription_item_id,
        )


@dataclass(frozen=True)
class LedgerRow:
    identifier: str
    sequence: int
    value: Decimal
    status: str
    event_timestamp: datetime
    sent_at: datetime | None = None

    @property
    def entry(self) -> LedgerEntry:
        return LedgerEntry(self.sequence, self.value, self.status)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Delivery:
    """What ``deliver`` did for one key: events re-sent, the new value sent (if any), and the
    reason nothing could be sent when the window has closed (late usage)."""

    resent: int
    sent_value: Decimal | None
    counted: Decimal | None
    late_reason: str | None = None


def ensure_ledger_table(conn: Connection) -> None:
    conn.ensure_schema()
    conn.execute(LEDGER_DDL)


def read_entries(conn: Connection, key: LedgerKey) -> list[LedgerRow]:
    rows = conn.fetchall(
        f"""
        select identifier, sequence, value, status, event_timestamp, sent_at
        from {LEDGER_TABLE}
        where subscription_item_id = ? and period_start = ?
        order by sequence
        """,
        (key.subscription_item_id, key.period_start),
    )
    return [
        LedgerRow(
            identifier,
            sequence,
            Decimal(value),
            status,
            stamp.astimezone(UTC),
            sent_at.astimezone(UTC) if sent_at else None,
        )
        for identifier, sequence, value, status, stamp, sent_at in rows
    ]


def counted(formula: PushFormula, entries: list[LedgerRow]) -> Decimal | None:
    """What Stripe counts for the key according to the ledger (None: nothing sent yet)."""
    return plan_push(formula, Decimal(0), [row.entry for row in entries]).counted


def append_entry(
    conn: Connection,
    key: LedgerKey,
    sequence: int,
    value: Decimal,
    stamp: datetime,
    *,
    status: str = "pending",
    note: str | None = None,
) -> str:
    """Write one entry with its deterministic identifier; returns the identifier."""
    identifier = meter_event_identifier(
        key.subscription_item_id, key.stripe_customer_id, key.meter, key.period_start, sequence
    )
    now = datetime.now(UTC)
    conn.execute(
        f"""
        insert into {LEDGER_TABLE} (identifier, subscription_item_id, stripe_customer_id, meter,
            period_start, period_end, sequence, value, event_timestamp, status, attempts,
            last_error, created_at, sent_at)
        values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
        """,
        (
            identifier,
            key.subscription_item_id,
            key.stripe_customer_id,
            key.meter,
            key.period_start,
            key.period_end,
            sequence,
            value,
            stamp,
            status,
            note,
            now,
            now if status == "sent" else None,
        ),
    )
    return identifier


def deliver(
    database: Database,
    gateway: StripeGateway,
    key: LedgerKey,
    formula: PushFormula,
    desired: Decimal,
    window: tuple[datetime, datetime],
    clock: datetime,
) -> Delivery:
    """Bring Stripe's count for ``key`` to ``desired``: re-send pending entries, then at most one
    new event, stamped inside the item's active ``window`` of the period on Stripe's ``clock``."""
    with database.connect() as conn, conn.advisory_lock(key.lock_name):
        ensure_ledger_table(conn)
        entries = read_entries(conn, key)
        plan = plan_push(formula, desired, [row.entry for row in entries])
        resend = [row for row in entries if row.status == "pending"]
        new: tuple[str, Decimal, datetime] | None = None
        late_reason = None
        if plan.value is not None:
            after = max((row.event_timestamp for row in entries), default=None)
            stamp = event_timestamp(window[0], window[1], clock, after=after)
            if stamp is None:
                late_reason = (
                    f"no second inside the item's window {window[0].isoformat()} to "
                    f"{window[1].isoformat()} is still accepted by Stripe at {clock.isoformat()}; "
                    "the difference belongs in the late-usage queue"
                )
            else:
                identifier = append_entry(conn, key, plan.sequence, plan.value, stamp)
                new = (identifier, plan.value, stamp)
    for row in resend:
        _send(database, gateway, key, row.identifier, row.value, row.event_timestamp)
    if new is not None:
        _send(database, gateway, key, *new)
    counted_now = plan.counted if new is None else _after(formula, plan.counted, new[1])
    return Delivery(len(resend), None if new is None else new[1], counted_now, late_reason)


def _after(formula: PushFormula, before: Decimal | None, value: Decimal) -> Decimal:
    return value if formula == "last" or before is None else before + value


def _send(
    database: Database,
    gateway: StripeGateway,
    key: LedgerKey,
    identifier: str,
    value: Decimal,
    stamp: datetime,
) -> None:
    """One call; the entry's status follows Stripe's answer. An uncertain outcome (retries
    exhausted) raises and leaves the entry ``pending`` for the next run."""
    try:
        gateway.send_meter_event(
            key.meter, key.stripe_customer_id, value, stamp, identifier, context=key.context()
        )
    except StripeRejectedError as error:
        _mark(database, identifier, "failed", str(error))
        raise
    except Exception as error:
        _mark(database, identifier, "pending", str(error))
        raise
    _mark(database, identifier, "sent", None)


def _mark(database: Database, identifier: str, status: str, error: str | None) -> None:
    with database.connect() as conn:
        conn.execute(
            f"""
            update {LEDGER_TABLE}
            set status = ?, attempts = attempts + 1, last_error = ?,
                sent_at = case when ? = 'sent' then ? else sent_at end
            where identifier = ?
            """,
            (status, error, status, datetime.now(UTC), identifier),
        )
