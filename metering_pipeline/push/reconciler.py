"""The push reconciler of DESIGN §4.5: desired (the marts) minus sent (the ledger) is what to send.

A run has three steps, so that a crash at any instant leaves nothing lost or counted twice:

1. plan, in one transaction under the ledger lock: per key, re-send its pending entries and write
   at most one new ``pending`` entry with a deterministic identifier, or queue the usage as late
   when Stripe can no longer bill it; commit before any call;
2. deliver: each pending entry is sent with its own identifier (Stripe drops a repeat with a 400,
   which means delivered), and late-usage invoice items with their idempotency key;
3. record: each answer marks its entry ``sent`` or ``failed``; no answer leaves it ``pending`` for
   the next run.

A pending entry whose identifier Stripe may have forgotten (``billing.ledger.recheck``) is never
re-sent: in the plan step, under the lock, Stripe's meter event summaries for its customer, meter
and period say whether Stripe holds it (mark it ``sent``) or not (mark it ``expired``; the key's
new entry then carries the difference under the next sequence's identifier). A figure that fits
neither sends nothing for that customer's meter and period, and the run fails.

Whatever is left undelivered, unpushable or unexplained is listed in ``PushReport.problems`` or
counted in ``PushReport.pending``: ``PushReport.money_at_risk`` turns both into the reason the
run must fail, after the ledger has recorded everything the next run needs.

A second run waiting on the lock sees the first run's pending entries as counted, so it can only
re-send them (deduplicated by Stripe), never send the same delta again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from metering_pipeline.billing.catalog import Invoice, Price
from metering_pipeline.billing.identifiers import idempotency_key
from metering_pipeline.billing.ledger import (
    COUNTED_STATUSES,
    IDENTIFIER_SAFE_AGE,
    STRIPE_MAX_EVENT_AGE,
    SUMMARIES_SETTLE,
    HeldEvent,
    LedgerEntry,
    event_timestamp,
    meter_value,
    plan_push,
    recheck,
    stripe_aggregate,
    verify_expired,
)
from metering_pipeline.billing.modes import meter_mismatch, push_formula
from metering_pipeline.billing.tiers import incremental_amount
from metering_pipeline.billing.units import (
    MeterUnit,
    UnpushableQuantity,
    meter_unit,
    to_meter_units,
)
from metering_pipeline.push.tables import (
    LOCK_KEY,
    LateRow,
    LedgerRow,
    PushKey,
    ensure_push_tables,
    entry_identifier,
    insert_late,
    insert_pending,
    pending_summary,
    read_events_of,
    read_keys,
    read_late,
    read_ledger,
    read_meters,
    read_prices,
    read_test_clocks,
    record_invoice_items,
    record_outcomes,
    record_verdicts,
)
from metering_pipeline.stripe_io import (
    CallContext,
    StripeGateway,
    StripeRejectedError,
    StripeUnavailableError,
)
from metering_pipeline.warehouse import Connection, Database

_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_RECORD_BATCH = 50
_SENDERS = 4


@dataclass
class PushReport:
    """One run's figures, for the asset's metadata."""

    keys: int = 0
    events_sent: int = 0
    already_delivered: int = 0
    resent: int = 0
    failed: int = 0
    undelivered: int = 0
    late_usage_count: int = 0
    late_usage_amount: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    pending: int = 0
    oldest_pending_seconds: float | None = None
    verified_delivered: int = 0
    superseded: int = 0
    problems: list[str] = field(default_factory=list)

    def money_at_risk(self) -> str | None:
        """Why this run must fail, or None when Stripe holds everything the ledger planned."""
        if not self.problems and not self.pending:
            return None
        lines = []
        if self.pending:
            lines.append(
                f"{self.pending} meter event(s) are still pending in metering.meter_event_ledger "
                "(Stripe did not answer within the retry budget, or the entry waits for Stripe's "
                "summaries). The ledger keeps them: run the push again once Stripe answers; it "
                "re-sends each with its identifier, or checks Stripe's summaries first when the "
                "identifier may have expired."
            )
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s), each with what to do:")
            lines += [f"- {problem}" for problem in self.problems]
        return "\n".join(lines)


@dataclass
class _Recheck:
    """Pending entries settled by Stripe's summaries: ``settled`` (identifier -> row with its new
    status), ``held`` (identifiers not to re-send this run), ``blocked`` (customer, meter,
    period start) groups where nothing new may be sent."""

    settled: dict[str, LedgerRow] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)
    blocked: set[tuple[str, str, datetime]] = field(default_factory=set)


@dataclass
class _Plan:
    """``resend``: pending entries of earlier runs; ``new``: this run's entries (one per key at
    most); ``late``: new late-usage rows; ``invoice_items``: late rows whose item is to create."""

    resend: list[LedgerRow] = field(default_factory=list)
    new: list[LedgerRow] = field(default_factory=list)
    late: list[LateRow] = field(default_factory=list)
    invoice_items: list[LateRow] = field(default_factory=list)


class _StripeFacts:
    """Per-run caches of what Stripe says: each customer's clock, each subscription's invoices."""

    def __init__(self, gateway: StripeGateway) -> None:
        self._gateway = gateway
        self._clocks: dict[str | None, datetime] = {}
        self._invoices: dict[str, list[Invoice]] = {}

    def now(self, test_clock: str | None) -> datetime:
        if test_clock not in self._clocks:
            self._clocks[test_clock] = self._gateway.clock_time(test_clock)
        return self._clocks[test_clock]

    def invoices(self, key: PushKey) -> list[Invoice]:
        """The subscription's invoices and its upcoming one (where pending invoice items sit)."""
        if key.subscription_id not in self._invoices:
            invoices = self._gateway.list_invoices(subscription=key.subscription_id)
            with suppress(StripeRejectedError):  # a canceled subscription has no upcoming one
                invoices.append(
                    self._gateway.invoice_preview(key.stripe_customer_id, key.subscription_id)
                )
            self._invoices[key.subscription_id] = invoices
        return self._invoices[key.subscription_id]

    def period_invoice(self, key: PushKey) -> Invoice | None:
        return next(
            (
                invoice
                for invoice in self.invoices(key)
                if invoice.id is not None and invoice.period_end == key.period_end
            ),
            None,
        )

    def billed_quantity(self, key: PushKey) -> Decimal:
        """What Stripe billed at this key's price for its window: the invoice item it created when
        the price left the item (flexible mode), on an invoice or still pending."""
        return sum(
            (
                line.quantity or Decimal(0)
                for invoice in self.invoices(key)
                for line in invoice.lines
                if line.price_id == key.price_id
                and line.period_start >= key.window_start
                and line.period_end <= key.window_end
            ),
            Decimal(0),
        )


def push_usage(
    database: Database,
    gateway: StripeGateway,
    *,
    late_usage_policy: str,
    finalization_grace: timedelta,
    meter_units: Mapping[str, MeterUnit],
    window: tuple[datetime, datetime] | None = None,
    customer: str | None = None,
    log: Callable[[str], None] = lambda message: None,
    summaries_settle: timedelta = SUMMARIES_SETTLE,
) -> PushReport:
    """Bring Stripe to the marts for every key whose period overlaps ``window`` (all if None),
    or of one ``customer``; re-send every pending entry in any case. Quantities go out in each
    meter's unit (``meter_units``, from ``METERING_METER_UNITS``)."""
    report = PushReport()
    facts = _StripeFacts(gateway)
    with database.connect() as conn:
        ensure_push_tables(conn)
        with conn.advisory_lock(LOCK_KEY):
            keys = read_keys(conn, window, customer)
            ledger = read_ledger(conn, window, customer)
            checked = _recheck_pending(conn, gateway, facts, ledger, summaries_settle, report)
            ledger = [checked.settled.get(row.identifier, row) for row in ledger]
            late = read_late(conn, window, customer)
            prices = read_prices(conn, {key.price_id for key in keys})
            plan = _plan(
                keys,
                ledger,
                late,
                prices,
                facts,
                late_usage_policy,
                finalization_grace,
                meter_units,
                checked,
                report,
            )
            insert_pending(conn, plan.new)
            insert_late(conn, plan.late, datetime.now(UTC))
    report.keys = len(keys)
    report.resent = len(plan.resend)
    for message in report.problems:
        log(message)

    _deliver(database, gateway, plan.resend + plan.new, report)
    _create_invoice_items(database, gateway, plan.invoice_items, report)

    with database.connect() as conn:
        report.pending, report.oldest_pending_seconds = pending_summary(conn, datetime.now(UTC))
    return report


def _recheck_pending(
    conn: Connection,
    gateway: StripeGateway,
    facts: _StripeFacts,
    ledger: list[LedgerRow],
    settle: timedelta,
    report: PushReport,
) -> _Recheck:
    """Settle, from Stripe's summaries, the pending entries whose identifier may have expired.

    Entries are judged per (customer, meter, period): Stripe's summary covers every event of the
    customer's meter in the period, so it is compared with every ledger entry stamped there.
    A group re-sends blind only when all its pending entries are young; a group mixing young and
    old ones waits for the young ones to be answered first.
    """
    result = _Recheck()
    now = datetime.now(UTC)
    groups: dict[tuple, list[tuple[LedgerRow, str]]] = defaultdict(list)
    pending = [row for row in ledger if row.status == "pending"]
    clocks = read_test_clocks(conn) if pending else {}
    for row in pending:
        age = now - row.created_at
        if row.stripe_clock_at is not None:  # a test clock may have moved faster than ours
            stripe_now = facts.now(clocks.get(row.stripe_customer_id))
            age = max(age, stripe_now - row.stripe_clock_at)
        verdict = recheck(age, now - (row.attempted_at or row.created_at), settle)
        group = (row.stripe_customer_id, row.meter, row.period_start, row.period_end)
        groups[group].append((row, verdict))
    meters = read_meters(conn) if groups else {}
    for (customer, meter, start, end), rows in groups.items():
        old = [row for row, verdict in rows if verdict != "resend"]
        if not old:
            continue
        result.held.update(row.identifier for row in old)
        where = (
            f"customer {customer}, meter {meter}, period "
            f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}, "
            f"entries {', '.join(row.identifier for row in old)}"
        )
        cover = (_floor_minute(start), _ceil_minute(end))
        events = read_events_of(conn, customer, meter, *cover)
        unsettled = any(now - (row.attempted_at or row.created_at) < settle for row in events)
        if unsettled or any(verdict != "verify" for _, verdict in rows):
            report.problems.append(
                f"{where}: first sent over {IDENTIFIER_SAFE_AGE / _HOUR:g} h ago, so Stripe may "
                "have forgotten their identifiers; they are not re-sent. Stripe's summaries "
                "decide instead once "
                f"they have settled ({settle / _MINUTE:g} min after the last send for this meter "
                "and period) and "
                "no younger entry is pending there: run the push again later"
            )
            continue
        known = meters.get(meter)
        if known is None or known[1] not in ("sum", "last"):
            report.problems.append(
                f"{where}: their identifiers may have expired and no active sum or last meter "
                f"{meter!r} is synced to check Stripe's summaries; sync the catalog, push again"
            )
            result.blocked.add((customer, meter, start))
            continue
        meter_id, formula = known
        held = gateway.meter_event_summaries(meter_id, customer, *cover, meter=meter)
        acknowledged = [
            HeldEvent(row.value, row.event_timestamp) for row in events if row.status == "sent"
        ]
        uncertain = [HeldEvent(row.value, row.event_timestamp) for row in old]
        verdict = verify_expired(formula, acknowledged, uncertain, held)  # type: ignore[arg-type]
        with_them = acknowledged + uncertain
        if verdict == "mismatch":
            report.problems.append(
                f"{where}: their identifiers may have expired, and Stripe's summary holds "
                f"{held.normalize():f} where the ledger expects "
                f"{_figure(formula, with_them)} with them or {_figure(formula, acknowledged)} "
                "without them. Nothing was sent for this meter and period: find the events "
                "Stripe holds that the ledger does not know (sent outside the pipeline?), "
                "correct the ledger or Stripe (the repair job), then push again"
            )
            result.blocked.add((customer, meter, start))
            continue
        status = "sent" if verdict == "delivered" else "expired"
        note = f"identifier may have expired: Stripe's summary held {held.normalize():f}, " + (
            "this entry included" if status == "sent" else "without this entry; superseded"
        )
        for row in old:
            result.settled[row.identifier] = replace(row, status=status)
            result.notes[row.identifier] = note
        if status == "sent":
            report.verified_delivered += len(old)
        else:
            report.superseded += len(old)
    record_verdicts(
        conn,
        [(i, row.status, result.notes[i]) for i, row in result.settled.items()],
        now,
    )
    return result


def _figure(formula: str, events: list[HeldEvent]) -> str:
    return f"{stripe_aggregate(formula, events).normalize():f}"  # type: ignore[arg-type]


def _plan(
    keys: list[PushKey],
    ledger: list[LedgerRow],
    late: list[LateRow],
    prices: dict[str, Price],
    facts: _StripeFacts,
    policy: str,
    grace: timedelta,
    units: Mapping[str, MeterUnit],
    checked: _Recheck,
    report: PushReport,
) -> _Plan:
    entries: dict[tuple, list[LedgerRow]] = defaultdict(list)
    for row in ledger:
        entries[row.key].append(row)
    queued: dict[tuple, list[LateRow]] = defaultdict(list)
    for row in late:
        queued[row.key].append(row)
    plan = _Plan()
    in_scope = {key.id for key in keys}
    # pending entries of keys outside this run's scope are re-sent as they are
    plan.resend += [
        row
        for row in ledger
        if row.status == "pending"
        and row.key not in in_scope
        and row.identifier not in checked.held
    ]
    plan.invoice_items += [row for row in late if row.status == "pending"]

    for key in keys:
        problem = _unpushable(key)
        if problem:
            report.problems.append(problem)
            continue
        if (key.stripe_customer_id, key.meter, key.period_start) in checked.blocked:
            continue  # its pending entries fit nothing Stripe shows: named in problems
        try:
            desired = to_meter_units(key.desired, meter_unit(units, key.meter))
        except UnpushableQuantity as error:
            report.problems.append(f"{_describe(key)}: usage {error}")
            continue
        formula = push_formula(key.aggregation_mode)
        rows = entries[key.id]
        push = plan_push(
            formula, desired, [LedgerEntry(r.sequence, r.value, r.status) for r in rows]
        )
        resend = {entry.sequence for entry in push.resend}
        plan.resend += [
            row for row in rows if row.sequence in resend and row.identifier not in checked.held
        ]
        now = facts.now(key.test_clock)

        def late(
            billed: Decimal, reason: str, key: PushKey = key, desired: Decimal = desired
        ) -> None:
            _queue_late(plan, key, desired, queued[key.id], billed, reason, prices, policy, report)

        if key.window_end < key.period_end and key.window_end <= now:
            # The price left the item (or the item left the subscription): whatever Stripe did
            # not bill by then it never will, however much of it the ledger sent.
            late(facts.billed_quantity(key), "plan_change")
            continue
        if push.value is None:
            continue
        if now < key.window_start:
            report.waiting += 1  # usage stamped after Stripe's (test) clock: not yet sendable
            continue
        counted = push.counted or Decimal(0)
        closed = _closed_period(key, now, facts, grace)
        if closed:
            late(counted, closed)
            continue
        after = max((r.event_timestamp for r in rows if r.status in COUNTED_STATUSES), default=None)
        stamp = event_timestamp(
            key.window_start,
            _stamp_bound(key, now, after),
            now,
            after=after if formula == "last" else None,
        )
        if stamp is None:
            late(counted, "too_old")
            continue
        try:
            meter_value(push.value)
        except ValueError as error:
            report.problems.append(f"{_describe(key)}: {error}")
            continue
        plan.new.append(
            LedgerRow(
                identifier=entry_identifier(
                    key.subscription_item_id,
                    key.price_id,
                    key.stripe_customer_id,
                    key.meter,
                    key.period_start,
                    push.sequence,
                ),
                subscription_item_id=key.subscription_item_id,
                price_id=key.price_id,
                stripe_customer_id=key.stripe_customer_id,
                meter=key.meter,
                period_start=key.period_start,
                period_end=key.period_end,
                sequence=push.sequence,
                value=push.value,
                event_timestamp=stamp,
                status="pending",
                attempts=0,
                created_at=datetime.now(UTC),
                stripe_clock_at=now,
            )
        )
    return plan


def _closed_period(
    key: PushKey, now: datetime, facts: _StripeFacts, grace: timedelta
) -> str | None:
    """Why an ended period can no longer take usage, or None while its invoice is a draft."""
    if now < key.period_end:
        return None
    invoice = facts.period_invoice(key)
    if invoice is not None:
        return None if invoice.status == "draft" else "invoice_finalized"
    return "period_closed" if now >= key.period_end + grace else None


def _stamp_bound(key: PushKey, now: datetime, after: datetime | None) -> datetime:
    """The end of the seconds an event may use: just after the latest usage we hold.

    Stripe gives an event to the item active at its timestamp. Stamping at the usage's own time,
    not at "now", keeps it on this item even if the price changed since our last catalog sync.
    The bound never goes below what Stripe still accepts (35 days) or below a later second than
    the key's previous event (``last`` meters need one).
    """
    if key.last_usage_at is None:
        return key.window_end
    floor = key.last_usage_at.replace(microsecond=0) + _SECOND
    oldest_accepted = now - STRIPE_MAX_EVENT_AGE + timedelta(hours=2)
    after_previous = after + 2 * _SECOND if after is not None else floor
    return min(key.window_end, max(floor, oldest_accepted, after_previous))


def _queue_late(
    plan: _Plan,
    key: PushKey,
    desired: Decimal,
    queued: list[LateRow],
    billed: Decimal,
    reason: str,
    prices: dict[str, Price],
    policy: str,
    report: PushReport,
) -> None:
    """Queue what Stripe did not and will not bill, priced as the increment on the key's tiers.
    Quantities are in the meter's pushed unit (``desired``), the unit its price is per."""
    already = sum((row.quantity for row in queued), Decimal(0))
    quantity = desired - billed - already
    if quantity == 0:
        return
    price = prices.get(key.price_id)
    if price is None:
        report.problems.append(
            f"{_describe(key)}: price {key.price_id} is not in metering.stripe_prices, so its late "
            "usage cannot be priced; run the Stripe catalog sync, then push again"
        )
        return
    counted = billed + already
    amount = int(incremental_amount(price, counted, counted + quantity))
    sequence = max((row.sequence for row in queued), default=0) + 1
    row = LateRow(
        identifier=idempotency_key(
            "late_usage",
            key.subscription_item_id,
            key.price_id,
            key.period_start.isoformat(),
            sequence,
            quantity,
            amount,
        ),
        subscription_item_id=key.subscription_item_id,
        price_id=key.price_id,
        subscription_id=key.subscription_id,
        stripe_customer_id=key.stripe_customer_id,
        meter=key.meter,
        period_start=key.period_start,
        period_end=key.period_end,
        sequence=sequence,
        quantity=quantity,
        billed_quantity=counted,
        amount_impact=amount,
        currency=price.currency,
        reason=reason,
        policy=policy,
        status={"hold": "held", "invoice_item": "pending", "write_off": "written_off"}[policy],
    )
    plan.late.append(row)
    if row.status == "pending":
        plan.invoice_items.append(row)
    report.late_usage_count += 1
    report.late_usage_amount[price.currency] = (
        report.late_usage_amount.get(price.currency, 0) + amount
    )


def _unpushable(key: PushKey) -> str | None:
    if key.formula is None:
        return (
            f"{_describe(key)}: no active Stripe meter has event_name {key.meter!r}; create or "
            "reactivate it, run the catalog sync, then push again"
        )
    return meter_mismatch(key.meter, key.aggregation_mode, key.formula, key.event_time_window)


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _ceil_minute(moment: datetime) -> datetime:
    floor = _floor_minute(moment)
    return floor if floor == moment else floor + _MINUTE


def _describe(key: PushKey) -> str:
    return (
        f"customer {key.stripe_customer_id}, meter {key.meter}, subscription item "
        f"{key.subscription_item_id} at price {key.price_id}, period "
        f"{key.period_start:%Y-%m-%dT%H:%M:%SZ}/{key.period_end:%Y-%m-%dT%H:%M:%SZ}"
    )


def _deliver(
    database: Database, gateway: StripeGateway, rows: list[LedgerRow], report: PushReport
) -> None:
    """Send every pending entry, a few at a time; record answers in small batches so a crash
    loses at most a batch of acknowledgements (those entries are re-sent and deduplicated)."""
    if not rows:
        return
    outcomes: list[tuple[str, str, str | None]] = []
    with ThreadPoolExecutor(_SENDERS) as pool:
        futures = {pool.submit(_send, gateway, row): row for row in rows}
        for future in as_completed(futures):
            row = futures[future]
            status, error = future.result()
            if status == "sent":
                report.events_sent += 1
            elif status == "already_delivered":
                report.already_delivered += 1
            elif status == "failed":
                report.failed += 1
            else:
                report.undelivered += 1
            if error:
                report.problems.append(error)
            outcomes.append(
                (
                    row.identifier,
                    "sent" if status in ("sent", "already_delivered") else status,
                    error,
                )
            )
            if len(outcomes) >= _RECORD_BATCH:
                _record(database, outcomes)
                outcomes = []
    _record(database, outcomes)


def _call_context(row: LedgerRow | LateRow) -> CallContext:
    """What a Stripe error about this row should name: customer, meter, period, item."""
    return CallContext(
        customer=row.stripe_customer_id,
        meter=row.meter,
        period=(row.period_start, row.period_end),
        subscription_item=row.subscription_item_id,
    )


def _send(gateway: StripeGateway, row: LedgerRow) -> tuple[str, str | None]:
    context = _call_context(row)
    try:
        delivery = gateway.send_meter_event(
            row.meter,
            row.stripe_customer_id,
            row.value,
            row.event_timestamp,
            row.identifier,
            context=context,
        )
    except StripeRejectedError as error:
        return "failed", str(error)
    except StripeUnavailableError as error:
        return "pending", str(error)
    return delivery, None


def _record(database: Database, outcomes: list[tuple[str, str, str | None]]) -> None:
    if outcomes:
        with database.connect() as conn:
            record_outcomes(conn, outcomes, datetime.now(UTC))


def _create_invoice_items(
    database: Database, gateway: StripeGateway, rows: list[LateRow], report: PushReport
) -> None:
    """The ``invoice_item`` policy: the late amount on the customer's next invoice, once."""
    outcomes = []
    for row in rows:
        context = _call_context(row)
        try:
            item = gateway.create_invoice_item(
                customer=row.stripe_customer_id,
                amount=row.amount_impact,
                currency=row.currency,
                description=(
                    f"{row.meter}: {row.quantity.normalize():f} units of "
                    f"{row.period_start:%Y-%m-%d} to {row.period_end:%Y-%m-%d} not billed "
                    f"in time ({row.reason.replace('_', ' ')})"
                ),
                idempotency_key=row.identifier,
                subscription=row.subscription_id,
                metadata={"metering_late_usage": row.identifier, "price": row.price_id},
                context=context,
            )
        except StripeRejectedError as error:
            outcomes.append((row.identifier, "failed", None, str(error)))
            report.problems.append(str(error))
        except StripeUnavailableError as error:
            outcomes.append((row.identifier, "pending", None, str(error)))
            report.problems.append(str(error))
        else:
            outcomes.append((row.identifier, "invoiced", item, None))
    if outcomes:
        with database.connect() as conn:
            record_invoice_items(conn, outcomes)
