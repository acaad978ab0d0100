"""Does Stripe agree with us? The comparison behind reconciliation and repair.

Per subscription item and billing period we hold three quantities: ours (the marts), the ledger's
(what the push believes Stripe counts) and what Stripe bills for the item's window: its meter
(event summaries), the invoice item Stripe creates when a price leaves an item, and late usage
we billed as invoice items; late usage written off by policy is accounted too. The variance is
``|accounted - ours| / max(|ours|, epsilon)``; over the threshold the row is flagged, because the
invoice would bill a different amount than the usage we measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering_pipeline.billing.modes import PushFormula

EPSILON = Decimal("1e-9")


def variance(ours: Decimal, stripe: Decimal, epsilon: Decimal = EPSILON) -> Decimal:
    """Stripe's distance from our quantity, relative to ours; a tiny ``epsilon`` stands in for a
    zero ``ours``, so any usage Stripe holds that we do not is a huge variance, not a crash."""
    return abs(stripe - ours) / max(abs(ours), epsilon)


@dataclass(frozen=True)
class StripeSide:
    """What bills one item window at Stripe, in the meter's unit, and how the meter was read.

    ``meter``: the meter's figure for the window (grid.py). ``meter_bills``: False once the price
    left the item; Stripe then bills that window only through the invoice item it created at the
    change. ``invoice_items``: that invoice item's quantity plus the late usage we invoiced, as
    found on Stripe's invoices. ``written_off``: late usage written off by policy (accounted,
    deliberately unbilled). ``unbilled``: late usage queued but not billed: held, still pending,
    failed, or its invoice item is no longer on Stripe.
    """

    meter: Decimal
    meter_bills: bool = True
    invoice_items: Decimal = Decimal(0)
    written_off: Decimal = Decimal(0)
    unbilled: Decimal = Decimal(0)
    compared: str = ""

    @property
    def accounted(self) -> Decimal:
        """Everything our usage should equal: what Stripe bills plus what we wrote off."""
        billed_by_meter = self.meter if self.meter_bills else Decimal(0)
        return billed_by_meter + self.invoice_items + self.written_off


@dataclass(frozen=True)
class ItemReconciliation:
    """One subscription item (at one price) in one billing period, compared."""

    subscription_item_id: str
    price_id: str
    stripe_customer_id: str
    meter: str
    period_start: datetime
    period_end: datetime
    window_start: datetime
    window_end: datetime
    ours: Decimal
    ledger: Decimal | None
    stripe: Decimal
    stripe_invoice_items: Decimal
    late_written_off: Decimal
    late_unbilled: Decimal
    accounted: Decimal
    compared: str
    expected_amount: Decimal | None
    stripe_amount: Decimal | None
    amount_source: str | None
    currency: str | None
    variance: Decimal
    flagged: bool


def compare(
    *,
    subscription_item_id: str,
    price_id: str,
    stripe_customer_id: str,
    meter: str,
    period: tuple[datetime, datetime],
    window: tuple[datetime, datetime],
    ours: Decimal,
    ledger: Decimal | None,
    stripe: StripeSide,
    expected_amount: Decimal | None,
    stripe_amount: Decimal | None,
    amount_source: str | None,
    currency: str | None,
    threshold: Decimal,
) -> ItemReconciliation:
    """The row for one item; flagged when the quantity variance exceeds ``threshold``."""
    distance = variance(ours, stripe.accounted)
    return ItemReconciliation(
        subscription_item_id=subscription_item_id,
        price_id=price_id,
        stripe_customer_id=stripe_customer_id,
        meter=meter,
        period_start=period[0],
        period_end=period[1],
        window_start=window[0],
        window_end=window[1],
        ours=ours,
        ledger=ledger,
        stripe=stripe.meter,
        stripe_invoice_items=stripe.invoice_items,
        late_written_off=stripe.written_off,
        late_unbilled=stripe.unbilled,
        accounted=stripe.accounted,
        compared=stripe.compared,
        expected_amount=expected_amount,
        stripe_amount=stripe_amount,
        amount_source=amount_source,
        currency=currency,
        variance=distance,
        flagged=distance > threshold,
    )


@dataclass(frozen=True)
class Totals:
    """Numbers the Dagster UI plots over time, one point per reconciliation."""

    items: int
    ours: Decimal
    stripe: Decimal
    accounted: Decimal
    flagged: int
    max_variance: Decimal


def totals(rows: Sequence[ItemReconciliation]) -> Totals:
    return Totals(
        items=len(rows),
        ours=sum((row.ours for row in rows), Decimal(0)),
        stripe=sum((row.stripe for row in rows), Decimal(0)),
        accounted=sum((row.accounted for row in rows), Decimal(0)),
        flagged=sum(1 for row in rows if row.flagged),
        max_variance=max((row.variance for row in rows), default=Decimal(0)),
    )


def markdown_table(rows: Sequence[ItemReconciliation]) -> str:
    """The rows as a Markdown table, flagged first, for the asset's metadata."""
    if not rows:
        return "No metered subscription items in this billing period."
    header = (
        "| flagged | subscription item | customer | meter | ours | ledger | Stripe meter "
        "| Stripe invoice items | late written off | late unbilled | accounted | variance "
        "| expected amount (minor units) | Stripe amount (minor units) | compared |\n"
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    ordered = sorted(rows, key=lambda row: (not row.flagged, -row.variance))
    lines = [
        f"| {'**yes**' if row.flagged else 'no'} | {row.subscription_item_id} "
        f"| {row.stripe_customer_id} | {row.meter} | {row.ours.normalize():f} "
        f"| {_text(row.ledger)} | {row.stripe.normalize():f} "
        f"| {_text(row.stripe_invoice_items)} | {_text(row.late_written_off)} "
        f"| {_text(row.late_unbilled)} | {row.accounted.normalize():f} | {percent(row.variance)} "
        f"| {_money(row.expected_amount, row.currency)} "
        f"| {_money(row.stripe_amount, row.currency)}"
        f"{f' ({row.amount_source})' if row.amount_source else ''} | {row.compared} |"
        for row in ordered
    ]
    return "\n".join([header, *lines])


def flagged_summary(rows: Sequence[ItemReconciliation], threshold: Decimal) -> str:
    """A sentence naming every flagged item, for the failing check."""
    flagged = [row for row in rows if row.flagged]
    if not flagged:
        return f"Stripe agrees with our usage within {percent(threshold)} for every item."
    names = "; ".join(
        f"{row.subscription_item_id} (customer {row.stripe_customer_id}, meter {row.meter}: "
        f"ours {row.ours.normalize():f}, Stripe bills {row.accounted.normalize():f} "
        f"[meter {row.stripe.normalize():f}, invoice items {_text(row.stripe_invoice_items)}"
        f"{f', written off {_text(row.late_written_off)}' if row.late_written_off else ''}]"
        f"{f', late usage unbilled {_text(row.late_unbilled)}' if row.late_unbilled else ''}, "
        f"variance {percent(row.variance)})"
        for row in flagged
    )
    steps = []
    if any(row.late_unbilled for row in flagged):
        steps.append(
            "Late usage is queued in metering.late_usage but not on Stripe (held, pending, "
            "failed, or its invoice item was deleted or voided): bill it as an invoice item "
            "(METERING_LATE_USAGE_POLICY=invoice_item) or write it off; no meter event can "
            "bill it any more"
        )
    if any(row.accounted + row.late_unbilled != row.ours for row in flagged):
        steps.append(
            "Inspect the meter events and invoice items Stripe holds for them; run the `repair` "
            "job (dry_run first) to send the deltas that bring Stripe back to our usage"
        )
    return (
        f"{len(flagged)} subscription item(s) differ from Stripe by more than "
        f"{percent(threshold)}: {names}. {'. '.join(steps)}."
    )


def percent(value: Decimal) -> str:
    if value >= Decimal(1_000_000):
        return "> 1,000,000%"
    return f"{(value * 100).quantize(Decimal('0.01'))}%"


@dataclass(frozen=True)
class Adoption:
    """What repair records before pushing: the usage Stripe holds that no ledger entry explains.

    For ``sum`` meters it is the difference ``stripe - ledger``; for ``last`` meters the value
    Stripe currently bills. Recorded in the ledger as already counted at Stripe, it lets the
    push's own arithmetic (desired minus counted) produce the correcting event, and keeps the
    next push from undoing the repair.
    """

    value: Decimal


def adoption(formula: PushFormula, stripe: Decimal, ledger: Decimal | None) -> Adoption | None:
    """None when the ledger already explains what Stripe holds."""
    counted = ledger if ledger is not None else Decimal(0)
    if formula == "sum":
        return Adoption(stripe - counted) if stripe != counted else None
    if formula == "last":
        return Adoption(stripe) if stripe != counted else None
    raise ValueError(f"meter formula {formula!r} cannot be repaired; use sum or last")


def _text(value: Decimal | None) -> str:
    return "–" if value is None else f"{value.normalize():f}"


def _money(amount: Decimal | None, currency: str | None) -> str:
    if amount is None:
        return "–"
    return f"{amount.normalize():f} {(currency or '').upper()}".strip()
