"""Repair: bring Stripe back to our numbers through the same ledger the push uses.

A meter event sent behind the pipeline's back (or an adjustment that cancelled one of ours) makes
Stripe differ from the ledger. Sending a correction alone would be undone by the next push, whose
arithmetic trusts the ledger. So repair first records the unexplained difference as an entry that
Stripe already counts (status ``sent``, never sent by us, with a note saying so), then lets the
ledger's own ``deliver`` send the event that makes Stripe equal our usage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from metering_pipeline.push.ledger import (
    LedgerRow,
    append_entry,
    counted,
    deliver,
    read_entries,
)
from metering_pipeline.reconcile.period import PeriodItem, read_ledger, read_period_items
from metering_pipeline.reconcile.variance import adoption
from metering_pipeline.stripe_io import StripeGateway
from metering_pipeline.warehouse import Database

SUMMARIES_SETTLE = timedelta(minutes=5)
ADOPTED_NOTE = (
    "recorded by repair: Stripe counted this beyond our ledger (an event sent or cancelled "
    "outside the pipeline); not sent by us"
)


@dataclass(frozen=True)
class RepairStep:
    """One item whose Stripe quantity differs from ours: what repair adopts and sends, or why
    it leaves the item alone."""

    item: PeriodItem
    stripe: Decimal
    ledger: Decimal | None
    adopt: Decimal | None
    send: Decimal | None
    skipped: str | None = None


def plan_repair(
    database: Database,
    gateway: StripeGateway,
    period: tuple[datetime, datetime],
    settle: timedelta = SUMMARIES_SETTLE,
) -> list[RepairStep]:
    """Read ours, the ledger and Stripe afresh; one step per item where Stripe differs from us.

    Stripe's summaries are eventually consistent: an event we sent in the last ``settle`` may not
    show yet, and adopting that gap would make repair send it a second time. Such items wait.
    """
    now = datetime.now(UTC)
    with database.connect() as conn:
        items = read_period_items(conn, period)
        ledger = read_ledger(conn, items)
    intervals = Counter(item.subscription_item_id for item in items)
    steps = []
    for item in items:
        start, end = item.minute_window
        stripe = (
            gateway.meter_event_summaries(
                item.meter_id, item.stripe_customer_id, start, end, meter=item.meter
            )
            if start < end
            else Decimal(0)
        )
        if stripe == item.ours:
            continue
        entries = ledger.get(item.subscription_item_id, [])
        steps.append(_step(item, stripe, entries, intervals, now - settle))
    return steps


def apply_repair(
    database: Database, gateway: StripeGateway, steps: Sequence[RepairStep]
) -> list[RepairStep]:
    """Adopt and send each step that is not skipped; returns the steps actually sent."""
    clocks: dict[str | None, datetime] = {}
    done = []
    for step in steps:
        if step.skipped or step.send is None:
            continue
        item = step.item
        if item.test_clock not in clocks:
            clocks[item.test_clock] = gateway.clock_time(item.test_clock)
        clock = clocks[item.test_clock]
        key = item.ledger_key
        with database.connect() as conn, conn.advisory_lock(key.lock_name):
            # The ledger is read again under the lock: a push since the plan changes what
            # Stripe's figure leaves unexplained.
            entries = read_entries(conn, key)
            ledger = counted(item.formula, entries) if entries else None
            adopted = adoption(item.formula, step.stripe, ledger)
            if adopted is not None:
                sequence = max((row.sequence for row in entries), default=0) + 1
                append_entry(
                    conn, key, sequence, adopted.value, clock, status="sent", note=ADOPTED_NOTE
                )
        deliver(
            database,
            gateway,
            key,
            item.formula,
            item.ours,
            (item.window_start, item.window_end),
            clock,
        )
        done.append(step)
    return done


def _step(
    item: PeriodItem,
    stripe: Decimal,
    entries: list[LedgerRow],
    intervals: Counter[str],
    settled_before: datetime,
) -> RepairStep:
    ledger = counted(item.formula, entries) if entries else None
    pending = sum(1 for row in entries if row.status == "pending")
    latest = max((row.sent_at for row in entries if row.sent_at), default=None)
    if latest is not None and latest > settled_before:
        return RepairStep(
            item,
            stripe,
            ledger,
            None,
            None,
            f"an event was sent at {latest.isoformat()}, and Stripe's summaries may not show it "
            "yet; run repair again in a few minutes",
        )
    if pending:
        return RepairStep(
            item,
            stripe,
            ledger,
            None,
            None,
            f"{pending} ledger entries are still pending (their delivery is unknown); run the "
            "push, which re-sends them, then reconcile again",
        )
    if intervals[item.subscription_item_id] > 1:
        return RepairStep(
            item,
            stripe,
            ledger,
            None,
            None,
            "the item changed price inside this period, and Stripe's usage for it cannot be "
            "split between the prices; correct it by hand",
        )
    adopted = adoption(item.formula, stripe, ledger)
    send = item.ours - stripe if item.formula == "sum" else item.ours
    return RepairStep(item, stripe, ledger, adopted.value if adopted else None, send)
