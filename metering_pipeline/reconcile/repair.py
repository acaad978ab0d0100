"""Repair: bring Stripe back to our numbers through the same ledger and push the pipeline uses.

A meter event sent behind the pipeline's back (or an adjustment that cancelled one of ours) makes
Stripe differ from the ledger. A correction sent on the side would be undone by the next push,
whose arithmetic trusts the ledger. So repair records the unexplained difference in the push's
ledger as an entry Stripe already counts (``sent``, never sent by us, with a note saying so), then
runs the push itself, whose desired-minus-counted now is exactly the correcting event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from metering_pipeline.billing.ledger import COUNTED_STATUSES
from metering_pipeline.billing.units import MeterUnit
from metering_pipeline.push import PushReport, push_usage
from metering_pipeline.push.tables import (
    LOCK_KEY,
    LedgerRow,
    ensure_push_tables,
    entry_identifier,
    insert_pending,
    record_outcomes,
)
from metering_pipeline.reconcile.period import (
    ADOPTED_NOTE,
    PeriodItem,
    StripeView,
    ledger_counted,
    read_inputs,
    read_ledger,
)
from metering_pipeline.reconcile.variance import StripeSide, adoption
from metering_pipeline.stripe_io import StripeGateway
from metering_pipeline.warehouse import Database

SUMMARIES_SETTLE = timedelta(minutes=5)


@dataclass(frozen=True)
class RepairStep:
    """One item whose Stripe quantity differs from ours: the delta repair brings, or why it
    leaves the item alone. ``stripe`` is the meter's figure for the window, read by the same
    minute-grid rule as reconciliation, so a correct invoice never shows a delta."""

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
    meter_units: Mapping[str, MeterUnit],
    settle: timedelta = SUMMARIES_SETTLE,
) -> list[RepairStep]:
    """Read ours, the ledger and Stripe afresh; one step per item where what Stripe bills (the
    meter, read on the same minute grid as reconciliation, and the invoice items that bill the
    window) differs from us.

    Stripe's summaries are eventually consistent: an event written to the ledger in the last
    ``settle`` may not show yet, and adopting that gap would send it a second time. Such items
    wait.
    """
    settled_before = datetime.now(UTC) - settle
    with database.connect() as conn:
        inputs = read_inputs(conn, period, meter_units)
    view = StripeView(gateway)
    steps = []
    for item in inputs.items:
        side = view.side(item, inputs)
        if side.accounted != item.ours:
            steps.append(_step(item, side, inputs.ledger.get(item.key, []), settled_before))
    return steps


def apply_repair(
    database: Database,
    gateway: StripeGateway,
    period: tuple[datetime, datetime],
    steps: Sequence[RepairStep],
    *,
    late_usage_policy: str,
    finalization_grace: timedelta,
    meter_units: Mapping[str, MeterUnit],
) -> PushReport:
    """Record each step's adoption in the ledger, then push the period: the push sends the
    corrections (and queues as late usage what Stripe can no longer take)."""
    ready = [step for step in steps if not step.skipped]
    if ready:
        clocks = {step.item.test_clock: gateway.clock_time(step.item.test_clock) for step in ready}
        with database.connect() as conn:
            ensure_push_tables(conn)
            with conn.advisory_lock(LOCK_KEY):
                # Read again under the push's lock: a push since the plan changes what is
                # left unexplained.
                ledger = read_ledger(conn, period)
                adopted = [
                    row
                    for step in ready
                    if (row := _adoption_row(step, ledger.get(step.item.key, []), clocks))
                ]
                insert_pending(conn, adopted)
                record_outcomes(
                    conn, [(row.identifier, "sent", ADOPTED_NOTE) for row in adopted], _now()
                )
    return push_usage(
        database,
        gateway,
        late_usage_policy=late_usage_policy,
        finalization_grace=finalization_grace,
        meter_units=meter_units,
        window=period,
    )


def _adoption_row(
    step: RepairStep, rows: list[LedgerRow], clocks: dict[str | None, datetime]
) -> LedgerRow | None:
    item = step.item
    adopted = adoption(item.formula, step.stripe, ledger_counted(item.formula, rows))
    if adopted is None:
        return None
    sequence = max((row.sequence for row in rows), default=0) + 1
    return LedgerRow(
        identifier=entry_identifier(
            item.subscription_item_id,
            item.price_id,
            item.stripe_customer_id,
            item.meter,
            item.period[0],
            sequence,
        ),
        subscription_item_id=item.subscription_item_id,
        price_id=item.price_id,
        stripe_customer_id=item.stripe_customer_id,
        meter=item.meter,
        period_start=item.period[0],
        period_end=item.period[1],
        sequence=sequence,
        value=adopted.value,
        event_timestamp=clocks[item.test_clock],
        status="sent",
        attempts=0,
        created_at=_now(),
    )


def _step(
    item: PeriodItem, side: StripeSide, rows: list[LedgerRow], settled_before: datetime
) -> RepairStep:
    stripe = side.meter
    ledger = ledger_counted(item.formula, rows)
    pending = sum(1 for row in rows if row.status == "pending")
    latest = max((row.created_at for row in rows if row.status in COUNTED_STATUSES), default=None)
    if not side.meter_bills or side.unbilled:
        reason = (
            f"{side.unbilled.normalize():f} units of late usage are queued but unbilled"
            if side.unbilled
            else f"the price left this item at {item.window_end.isoformat()}"
        ) + (
            "; no meter event can bill this window any more: the push queues its gap in "
            "metering.late_usage, to bill as an invoice item or write off"
        )
    elif pending:
        reason = (
            f"{pending} ledger entries are still pending (their delivery is unknown); run the "
            "push, which re-sends them, then reconcile again"
        )
    elif latest is not None and latest > settled_before:
        reason = (
            f"an event was written to the ledger at {latest.isoformat()}, and Stripe's summaries "
            "may not show it yet; run repair again in a few minutes"
        )
    else:
        adopted = adoption(item.formula, stripe, ledger)
        send = item.ours - side.accounted if item.formula == "sum" else item.ours
        return RepairStep(item, stripe, ledger, adopted.value if adopted else None, send)
    return RepairStep(item, stripe, ledger, None, None, reason)


def _now() -> datetime:
    return datetime.now(UTC)
