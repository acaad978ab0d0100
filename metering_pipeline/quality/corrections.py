"""Billed rows are never silently un-billed by a catalog change.

Validation depends on the catalog (a meter must exist, a customer must map to one Stripe
customer). When a re-validation would move rows that were accepted before into quarantine for
such a catalog reason, it does not: the rows stay accepted (still billed, exactly as before) and
each becomes a row of ``metering.catalog_corrections``, grouped into one correction per billed
customer, meter and reason. An operator confirms a correction by id (``confirm_corrections`` in
the validation's run config); the next validation of its hours then quarantines the rows, dbt
drops them from the marts and the push sends the negative delta through the ledger.

A correction goes ``pending`` -> ``confirmed`` -> ``applied`` (rows quarantined), or
``withdrawn`` when a re-validation no longer asks for it (the catalog was put right).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering_pipeline.billing.moments import as_utc
from metering_pipeline.billing.tiers import amount_minor_units
from metering_pipeline.push.tables import read_prices
from metering_pipeline.sources.tables import sql_literal
from metering_pipeline.warehouse import Connection

CORRECTIONS = "metering.catalog_corrections"
CATALOG_REASONS = ("unknown_meter", "unmapped_customer")

_DDL = f"""
    create table if not exists {CORRECTIONS} (
        correction_id text not null,
        event_id text not null,
        partition_hour timestamptz not null,
        customer_id text,
        stripe_customer_id text not null,
        meter text not null,
        quantity decimal(38, 12) not null,
        occurred_at timestamptz not null,
        reason_code text not null,
        quarantine_reason text not null,
        status text not null,
        detected_at timestamptz not null,
        confirmed_at timestamptz,
        closed_at timestamptz,
        primary key (correction_id, event_id, partition_hour)
    )
"""
_NO_ATTRIBUTION = (
    "cast(null as text), cast(null as text), cast(null as timestamptz), cast(null as timestamptz)"
)
_REASONS = ", ".join(sql_literal(reason) for reason in CATALOG_REASONS)


class CorrectionError(ValueError):
    """A confirmation that cannot be applied as asked; the message says what to run instead."""


@dataclass(frozen=True)
class CorrectionLine:
    """A correction's effect on one billed key (item at a price, period); None where unknown."""

    subscription_item_id: str | None
    price_id: str | None
    period_start: datetime | None
    period_end: datetime | None
    events: int
    quantity_delta: Decimal | None
    amount_delta: Decimal | None
    currency: str | None


@dataclass(frozen=True)
class Correction:
    """A pending correction: rows billed so far that the catalog now rejects."""

    correction_id: str
    stripe_customer_id: str
    customer_id: str
    meter: str
    reason_code: str
    events: int
    quantity: Decimal
    first_hour: datetime
    last_hour: datetime
    example_reason: str
    lines: tuple[CorrectionLine, ...]

    def amounts(self) -> dict[str, Decimal]:
        """The money it takes back per currency (negative, minor units), where priced."""
        totals: dict[str, Decimal] = {}
        for line in self.lines:
            if line.amount_delta is not None and line.currency:
                totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount_delta
        return totals

    def describe(self) -> str:
        effects = "; ".join(
            f"{_signed(line.quantity_delta)} units"
            + (
                f", {line.amount_delta:f} {line.currency} minor units"
                if line.currency
                else ", money known after the push"
            )
            + f" in period {line.period_start:%Y-%m-%d}..{line.period_end:%Y-%m-%d}"
            if line.period_start and line.period_end
            else f"{line.events} event(s) not attributed to a billed item"
            for line in self.lines
        )
        return (
            f"{self.correction_id}: {self.events} billed event(s) of customer "
            f"{self.customer_id} ({self.stripe_customer_id}) on meter {self.meter} (quantity "
            f"{self.quantity.normalize():f}) are now rejected as {self.reason_code}; confirming "
            f"takes back {effects or 'nothing known yet'} (hours {_hour(self.first_hour)} to "
            f"{_hour(self.last_hour)}). Why: {self.example_reason}"
        )


def ensure_corrections_table(connection: Connection) -> None:
    connection.ensure_schema()
    connection.execute(_DDL)


def hold_catalog_corrections(
    connection: Connection, start: datetime, end: datetime, now: datetime
) -> int:
    """Keep accepted the rows of ``_routed`` (the window's routing) that were accepted before
    and now fail only for a catalog reason, unless their correction was confirmed; record them
    as pending corrections. Runs before the window's accepted rows are replaced. Returns how
    many rows are held."""
    ensure_corrections_table(connection)
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    connection.execute("drop table if exists _held")
    connection.execute(
        f"""
        create temp table _held as
        with
        -- usually empty: only rows the catalog rejects can be held, so the accepted rows are
        -- looked up for those alone and a large window pays nothing
        candidates as (
            select * from _routed where reason_code in ({_REASONS})
        ),
        prior as (
            select event_id, partition_hour, customer_id, meter, occurred_at,
                min(stripe_customer_id) as stripe_customer_id, min(quantity) as quantity
            from metering.accepted_usage_events
            where {window} and event_id in (select event_id from candidates)
            group by event_id, partition_hour, customer_id, meter, occurred_at
        ),
        confirmed as (
            select event_id, partition_hour from {CORRECTIONS}
            where status = 'confirmed' and {window}
        )
        select distinct routed.event_id, routed.partition_hour, routed.customer_id,
            routed.meter, routed.occurred_at, routed.reason_code, routed.quarantine_reason,
            prior.stripe_customer_id, prior.quantity
        from candidates as routed
        inner join prior
            on prior.event_id = routed.event_id
            and prior.partition_hour = routed.partition_hour
            and prior.customer_id = routed.customer_id
            and prior.meter = routed.meter
            and prior.occurred_at = routed.occurred_at
        where not exists (
                select 1 from confirmed
                where confirmed.event_id = routed.event_id
                    and confirmed.partition_hour = routed.partition_hour
            )
        """
    )
    connection.execute(
        """
        update _routed set reason_code = null, quarantine_reason = null,
            stripe_customer_id = _held.stripe_customer_id, quantity_decimal = _held.quantity
        from _held
        where _routed.event_id = _held.event_id
            and _routed.partition_hour = _held.partition_hour
            and _routed.customer_id = _held.customer_id
            and _routed.meter = _held.meter
            and _routed.occurred_at = _held.occurred_at
            and _routed.reason_code = _held.reason_code
        """
    )
    _close(connection, window, now)
    _record_new(connection, now)
    (held,) = connection.fetchone("select count(*) from _held") or (0,)
    connection.execute("drop table _held")
    return int(held)


def _close(connection: Connection, window: str, now: datetime) -> None:
    """Confirmed rows that left for quarantine are applied; confirmed or pending rows the
    catalog no longer rejects (or no longer holds) are withdrawn."""
    connection.execute(
        f"""
        update {CORRECTIONS} set status = 'applied', closed_at = {sql_literal(now)}
        where status = 'confirmed' and {window}
            and exists (
                select 1 from _routed as routed
                where routed.event_id = {CORRECTIONS}.event_id
                    and routed.partition_hour = {CORRECTIONS}.partition_hour
                    and routed.reason_code in ({_REASONS})
            )
        """
    )
    connection.execute(
        f"""
        update {CORRECTIONS} set status = 'withdrawn', closed_at = {sql_literal(now)}
        where status in ('pending', 'confirmed') and {window}
            and not exists (
                select 1 from _held
                where _held.event_id = {CORRECTIONS}.event_id
                    and _held.partition_hour = {CORRECTIONS}.partition_hour
                    and _held.reason_code = {CORRECTIONS}.reason_code
            )
        """
    )


def _record_new(connection: Connection, now: datetime) -> None:
    """Held rows not yet pending join their group's pending correction, or open a new one."""
    fresh = f"""
        from _held
        where not exists (
            select 1 from {CORRECTIONS} as known
            where known.status = 'pending'
                and known.event_id = _held.event_id
                and known.partition_hour = _held.partition_hour
                and known.reason_code = _held.reason_code
        )
    """
    groups = connection.fetchall(
        f"select distinct stripe_customer_id, meter, reason_code {fresh} order by 1, 2, 3"
    )
    for customer, meter, reason in groups:
        correction_id = _correction_id(connection, customer, meter, reason)
        connection.execute(
            f"""
            insert into {CORRECTIONS} (correction_id, event_id, partition_hour, customer_id,
                stripe_customer_id, meter, quantity, occurred_at, reason_code,
                quarantine_reason, status, detected_at)
            select ?, event_id, partition_hour, customer_id, stripe_customer_id, meter,
                quantity, occurred_at, reason_code, quarantine_reason, 'pending', ?
            {fresh}
                and stripe_customer_id = ? and meter = ? and reason_code = ?
            """,
            (correction_id, now, customer, meter, reason),
        )


def _correction_id(connection: Connection, customer: str, meter: str, reason: str) -> str:
    """The group's pending correction, else a new id: stable across re-validations while
    pending, and never reused once confirmed or withdrawn (the count of earlier ids is in it)."""
    pending = connection.fetchone(
        f"select min(correction_id) from {CORRECTIONS} where status = 'pending' "
        "and stripe_customer_id = ? and meter = ? and reason_code = ?",
        (customer, meter, reason),
    )
    if pending and pending[0]:
        return str(pending[0])
    (earlier,) = connection.fetchone(
        f"select count(distinct correction_id) from {CORRECTIONS} "
        "where stripe_customer_id = ? and meter = ? and reason_code = ?",
        (customer, meter, reason),
    ) or (0,)
    digest = hashlib.sha256("\x1f".join((customer, meter, reason, str(earlier))).encode())
    return f"corr_{digest.hexdigest()[:12]}"


def confirm_corrections(
    connection: Connection,
    correction_ids: Sequence[str],
    start: datetime,
    end: datetime,
    now: datetime,
) -> None:
    """Mark corrections confirmed so that validating ``[start, end)`` quarantines their rows.

    Every pending row of a confirmed correction must lie in the window, so that one run applies
    all of it; ids already confirmed or applied are accepted as they are (a retried run).
    """
    ensure_corrections_table(connection)
    wanted = sorted(set(correction_ids))
    if not wanted:
        return
    placeholders = ", ".join("?" * len(wanted))
    rows = connection.fetchall(
        f"select correction_id, status, min(partition_hour), max(partition_hour) "
        f"from {CORRECTIONS} where correction_id in ({placeholders}) group by 1, 2",
        wanted,
    )
    found = {correction_id for correction_id, *_ in rows}
    unknown = [correction_id for correction_id in wanted if correction_id not in found]
    if unknown:
        raise CorrectionError(
            f"no catalog correction {', '.join(unknown)}; the pending ones are named by the "
            f"failed check catalog_corrections_confirmed and listed in {CORRECTIONS} "
            "(status 'pending')"
        )
    outside = [
        f"{correction_id} (hours {_hour(first)} to {_hour(last)})"
        for correction_id, status, first, last in rows
        if status == "pending" and (first < start or last >= end)
    ]
    if outside:
        raise CorrectionError(
            f"catalog correction(s) {'; '.join(outside)} have rows outside this run's hours "
            f"{_hour(start)} to {_hour(end)} (exclusive); run the confirmation over partitions "
            "that cover all of their hours, so the whole correction is applied at once"
        )
    connection.execute(
        f"update {CORRECTIONS} set status = 'confirmed', confirmed_at = ? "
        f"where status = 'pending' and correction_id in ({placeholders})",
        [now, *wanted],
    )


def held_rows(connection: Connection, start: datetime, end: datetime) -> int:
    """Rows of ``[start, end)`` kept accepted while their correction waits for confirmation."""
    ensure_corrections_table(connection)
    (count,) = connection.fetchone(
        f"select count(*) from {CORRECTIONS} where status = 'pending' "
        "and partition_hour >= ? and partition_hour < ?",
        (start, end),
    ) or (0,)
    return int(count)


def pending_corrections(connection: Connection) -> list[Correction]:
    """Every pending correction with its effect per billed key, priced at the key's tiers
    against the period total the marts bill now (it still includes the held rows)."""
    ensure_corrections_table(connection)
    heads = connection.fetchall(
        f"""
        select correction_id, stripe_customer_id, meter, reason_code, min(customer_id),
            count(*), sum(quantity), min(partition_hour), max(partition_hour),
            min(quarantine_reason)
        from {CORRECTIONS}
        where status = 'pending'
        group by correction_id, stripe_customer_id, meter, reason_code
        order by correction_id
        """
    )
    if not heads:
        return []
    lines = _lines(connection)
    return [
        Correction(
            correction_id=correction_id,
            stripe_customer_id=customer,
            customer_id=customer_id or "",
            meter=meter,
            reason_code=reason,
            events=int(events),
            quantity=Decimal(quantity),
            first_hour=first,
            last_hour=last,
            example_reason=example,
            lines=tuple(lines.get(correction_id, ())),
        )
        for correction_id, customer, meter, reason, customer_id, events, quantity, first, last,
        example in heads
    ]  # fmt: skip


def _lines(connection: Connection) -> dict[str, list[CorrectionLine]]:
    attributed = connection.table_exists("analytics.int_usage_attributed")
    marts = connection.table_exists("analytics.fct_usage_by_period")
    rows = connection.fetchall(
        f"""
        select held.correction_id, {_attribution("attributed", attributed)},
            count(*), sum(held.quantity),
            sum(case when held.quantity < 0 then -1 else 1 end)
        from {CORRECTIONS} as held
        {_attribution_join(attributed)}
        where held.status = 'pending'
        group by 1, 2, 3, 4, 5
        order by 1, 4, 2, 3
        """
    )
    totals = (
        {
            (item, price, _utc(start)): (mode, Decimal(quantity))
            for item, price, start, mode, quantity in connection.fetchall(
                "select subscription_item_id, price_id, period_start, aggregation_mode, quantity "
                "from analytics.fct_usage_by_period"
            )
        }
        if marts
        else {}
    )
    prices = read_prices(connection, {row[2] for row in rows if row[2]})
    lines: dict[str, list[CorrectionLine]] = {}
    for correction_id, item, price_id, start, end, events, quantity, net_events in rows:
        mode, total = totals.get((item, price_id, _utc(start)), (None, None))
        delta = _effect(mode, Decimal(quantity), int(net_events))
        price = prices.get(price_id) if price_id else None
        amount = (
            amount_minor_units(price, total + delta) - amount_minor_units(price, total)
            if price is not None and delta is not None and total is not None
            else None
        )
        lines.setdefault(correction_id, []).append(
            CorrectionLine(
                subscription_item_id=item,
                price_id=price_id,
                period_start=start,
                period_end=end,
                events=int(events),
                quantity_delta=delta,
                amount_delta=amount,
                currency=price.currency if price is not None and amount is not None else None,
            )
        )
    return lines


def _effect(mode: str | None, quantity: Decimal, net_events: int) -> Decimal | None:
    """How much removing the rows lowers the period total: known for the modes that add rows up
    (a ``count`` meter counts events, a correction taking one back); None for the others."""
    if mode == "sum":
        return -quantity
    if mode == "count":
        return -Decimal(net_events)
    return None


def _attribution(alias: str, available: bool) -> str:
    if not available:  # before the first dbt build: held rows are not attributed yet
        return _NO_ATTRIBUTION
    return ", ".join(
        f"{alias}.{column}"
        for column in ("subscription_item_id", "price_id", "period_start", "period_end")
    )


def _attribution_join(available: bool) -> str:
    """The billed key of each held event, as the marts attributed it (dbt's own attribution)."""
    if not available:
        return ""
    return (
        "left join analytics.int_usage_attributed as attributed "
        "on attributed.event_id = held.event_id "
        "and attributed.attribution_status = 'attributed'"
    )


def _utc(moment: datetime | None) -> datetime | None:
    """The engines return timestamptz in the session's zone; keys and messages use UTC."""
    return None if moment is None else as_utc(moment, "timestamp")


def _signed(value: Decimal | None) -> str:
    return "unknown" if value is None else f"{value.normalize():f}"


def _hour(moment: datetime) -> str:
    return f"{as_utc(moment, 'hour'):%Y-%m-%dT%H:%MZ}"
