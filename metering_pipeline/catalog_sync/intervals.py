"""Validity intervals of subscription items, rebuilt from Stripe's current catalog and its events.

Stripe shows only the present: an item whose price changed or that was removed mid-period is
gone from the subscription, yet usage from before the change still belongs to it. So we replay
the subscription snapshots carried by ``customer.subscription.*`` events in order, then the
current catalog, and open or close an interval at each snapshot's instant. Intervals closed by an
earlier sync whose events Stripe no longer lists (it keeps 30 days) are kept from the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from metering_pipeline.billing.catalog import Catalog, StripeEvent, Subscription
from metering_pipeline.billing.periods import periods_overlapping

SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)
_ENDED = ("canceled", "incomplete_expired")


@dataclass(frozen=True)
class ItemInterval:
    """One row of ``metering.stripe_subscription_items``: an item at one price, ``[from, to)``."""

    subscription_item_id: str
    subscription_id: str
    stripe_customer_id: str
    price_id: str
    meter_event_name: str | None
    billing_mode: str
    billing_cycle_anchor: datetime
    interval: str
    interval_count: int
    valid_from: datetime
    valid_to: datetime | None
    current_period_start: datetime
    current_period_end: datetime


@dataclass(frozen=True)
class _ItemState:
    item_id: str
    price_id: str
    meter_id: str | None
    interval: str
    interval_count: int
    created: datetime
    current_period_start: datetime
    current_period_end: datetime


@dataclass(frozen=True)
class _Snapshot:
    """A subscription as it stood at ``at``."""

    at: datetime
    subscription_id: str
    customer_id: str
    status: str
    billing_mode: str
    anchor: datetime
    ended_at: datetime | None
    items: Mapping[str, _ItemState]


def build_intervals(
    catalog: Catalog,
    events: Iterable[StripeEvent],
    previous: Sequence[ItemInterval],
    synced_at: datetime,
) -> list[ItemInterval]:
    """All intervals known after this sync, closed ones included, sorted by item and start.

    ``previous`` (the table as the last sync left it) is the starting state; only snapshots
    at or after its latest known change are replayed on top, so history older than Stripe's
    event retention survives and a replay is idempotent.
    """
    meters = {meter.id: meter.event_name for meter in catalog.meters}
    from_events = sorted(
        (
            _snapshot_from_event(event)
            for event in events
            if event.type in SUBSCRIPTION_EVENTS
            and event.data_object.get("object") == "subscription"
        ),
        key=lambda snapshot: snapshot.at,
    )
    latest = max((snapshot.at for snapshot in from_events), default=synced_at)
    now = max(synced_at, latest)
    histories: dict[str, list[_Snapshot]] = {}
    for snapshot in from_events:
        histories.setdefault(snapshot.subscription_id, []).append(snapshot)
    for subscription in catalog.subscriptions:
        histories.setdefault(subscription.id, []).append(_snapshot_from_catalog(subscription, now))
    known: dict[str, list[ItemInterval]] = {}
    for row in previous:
        known.setdefault(row.subscription_id, []).append(row)
        histories.setdefault(row.subscription_id, [])

    rows = [
        row
        for subscription_id, history in histories.items()
        for row in _replay(known.get(subscription_id, []), history, meters)
    ]
    return sorted(
        _close_vanished(rows, listed={s.id for s in catalog.subscriptions}, now=now),
        key=lambda row: (row.subscription_item_id, row.valid_from),
    )


def billing_periods(intervals: Iterable[ItemInterval]) -> list[tuple[str, datetime, datetime]]:
    """``(subscription_item_id, period_start, period_end)`` for every period an interval touches.

    Periods come from the subscription's anchor and the price's interval, so an item added
    mid-period shares the subscription's period and only its active part differs.
    """
    periods: set[tuple[str, datetime, datetime]] = set()
    for row in intervals:
        until = row.valid_to or row.current_period_end
        for start, end in periods_overlapping(
            row.billing_cycle_anchor, row.interval, row.interval_count, row.valid_from, until
        ):
            periods.add((row.subscription_item_id, start, end))
    return sorted(periods)


def _replay(
    known: list[ItemInterval], history: list[_Snapshot], meters: Mapping[str, str]
) -> list[ItemInterval]:
    """Walk one subscription's snapshots in time order, opening and closing item intervals."""
    closed = [row for row in known if row.valid_to is not None]
    open_ = {row.subscription_item_id: row for row in known if row.valid_to is None}
    seen = {row.subscription_item_id for row in known}
    horizon = max(
        (moment for row in known for moment in (row.valid_from, row.valid_to) if moment),
        default=None,
    )
    for snapshot in history:
        if horizon is not None and snapshot.at < horizon:
            continue
        active = {} if snapshot.status in _ENDED else snapshot.items
        ends_at = (snapshot.ended_at or snapshot.at) if snapshot.status in _ENDED else snapshot.at
        for item_id, interval in list(open_.items()):
            state = active.get(item_id)
            if state is None or state.price_id != interval.price_id:
                until = _successor_start(interval, active, seen, meters) or ends_at
                closed.append(replace(interval, valid_to=max(until, interval.valid_from)))
                del open_[item_id]
        for item_id, state in active.items():
            current = open_.get(item_id)
            if current is None:
                # A new item starts at its creation; a known item at a new price, at this change.
                valid_from = snapshot.at if item_id in seen else state.created
                open_[item_id] = _interval(snapshot, state, meters, valid_from)
            else:
                open_[item_id] = replace(
                    current,
                    current_period_start=state.current_period_start,
                    current_period_end=state.current_period_end,
                )
            seen.add(item_id)
    return closed + list(open_.values())


def _successor_start(
    interval: ItemInterval,
    active: Mapping[str, _ItemState],
    seen: set[str],
    meters: Mapping[str, str],
) -> datetime | None:
    """When Stripe replaced a metered item by a new one on the same meter, the exact instant."""
    starts = [
        state.created
        for item_id, state in active.items()
        if item_id not in seen
        and state.created > interval.valid_from
        and interval.meter_event_name is not None
        and meters.get(state.meter_id or "") == interval.meter_event_name
    ]
    return min(starts, default=None)


def _close_vanished(
    rows: list[ItemInterval], listed: set[str], now: datetime
) -> list[ItemInterval]:
    """Close open intervals of subscriptions neither listed nor in events: ended, time unknown."""
    return [
        replace(row, valid_to=max(now, row.valid_from))
        if row.valid_to is None and row.subscription_id not in listed
        else row
        for row in rows
    ]


def _interval(
    snapshot: _Snapshot, state: _ItemState, meters: Mapping[str, str], valid_from: datetime
) -> ItemInterval:
    return ItemInterval(
        subscription_item_id=state.item_id,
        subscription_id=snapshot.subscription_id,
        stripe_customer_id=snapshot.customer_id,
        price_id=state.price_id,
        meter_event_name=meters.get(state.meter_id) if state.meter_id else None,
        billing_mode=snapshot.billing_mode,
        billing_cycle_anchor=snapshot.anchor,
        interval=state.interval,
        interval_count=state.interval_count,
        valid_from=valid_from,
        valid_to=None,
        current_period_start=state.current_period_start,
        current_period_end=state.current_period_end,
    )


def _snapshot_from_catalog(subscription: Subscription, synced_at: datetime) -> _Snapshot:
    return _Snapshot(
        at=synced_at,
        subscription_id=subscription.id,
        customer_id=subscription.customer_id,
        status=subscription.status,
        billing_mode=subscription.billing_mode,
        anchor=subscription.billing_cycle_anchor,
        ended_at=subscription.ended_at,
        items={
            item.id: _ItemState(
                item_id=item.id,
                price_id=item.price.id,
                meter_id=item.price.meter_id,
                interval=item.price.interval,
                interval_count=item.price.interval_count,
                created=item.created,
                current_period_start=item.current_period_start,
                current_period_end=item.current_period_end,
            )
            for item in subscription.items
            if item.price.usage_type != "licensed"
        },
    )


def _snapshot_from_event(event: StripeEvent) -> _Snapshot:
    """The subscription object an event carries, as it stood when the event happened."""
    data = event.data_object
    items = {}
    for item in _list(data.get("items")):
        price = item.get("price") or {}
        recurring = price.get("recurring") or {}
        if recurring.get("usage_type") == "licensed":
            continue
        items[item["id"]] = _ItemState(
            item_id=item["id"],
            price_id=price["id"],
            meter_id=recurring.get("meter"),
            interval=recurring.get("interval", "month"),
            interval_count=int(recurring.get("interval_count", 1)),
            created=_time(item.get("created")) or event.created,
            current_period_start=_time(item.get("current_period_start")) or event.created,
            current_period_end=_time(item.get("current_period_end")) or event.created,
        )
    mode = data.get("billing_mode")
    return _Snapshot(
        at=event.created,
        subscription_id=data["id"],
        customer_id=_id(data.get("customer")),
        status=data.get("status", "active"),
        billing_mode=(mode.get("type") if isinstance(mode, Mapping) else mode) or "flexible",
        anchor=_time(data.get("billing_cycle_anchor")) or event.created,
        ended_at=_time(data.get("ended_at")),
        items=items,
    )


def _list(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return list(value.get("data") or [])
    return list(value or [])


def _id(value: Any) -> str:
    return value["id"] if isinstance(value, Mapping) else str(value)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromtimestamp(int(value), tz=UTC)
