"""Validity intervals of subscription items: history kept across price changes and removals."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from metering_pipeline.billing.catalog import (
    Catalog,
    Meter,
    Price,
    StripeEvent,
    Subscription,
    SubscriptionItem,
)
from metering_pipeline.catalog_sync.intervals import billing_periods, build_intervals

ANCHOR = datetime(2026, 11, 5, tzinfo=UTC)
CREATED = datetime(2026, 11, 5, 0, 0, tzinfo=UTC)
CHANGE = datetime(2026, 11, 17, 9, 41, 7, tzinfo=UTC)
SYNC = datetime(2026, 11, 20, tzinfo=UTC)
PERIOD_END = datetime(2026, 12, 5, tzinfo=UTC)
METER = Meter(id="mtr_1", event_name="api_calls", display_name="API calls", formula="sum")
OLD = Price(
    id="price_old",
    product_id="prod_1",
    currency="usd",
    billing_scheme="per_unit",
    unit_amount_decimal=None,
    meter_id="mtr_1",
)
NEW = replace(OLD, id="price_new")


def item(item_id: str, price: Price, created: datetime) -> SubscriptionItem:
    return SubscriptionItem(item_id, "sub_1", "cus_1", price, created, ANCHOR, PERIOD_END)


def subscription(*items: SubscriptionItem, status: str = "active", ended: datetime | None = None):
    return Subscription(
        "sub_1", "cus_1", status, "flexible", ANCHOR, CREATED, items, ended_at=ended
    )


def catalog(*subscriptions: Subscription) -> Catalog:
    return Catalog((), (METER,), (OLD, NEW), subscriptions)


def event(kind: str, at: datetime, sub: Subscription) -> StripeEvent:
    """The subscription as Stripe's event carries it (a plain JSON object)."""
    seconds = lambda moment: int(moment.timestamp())  # noqa: E731
    return StripeEvent(
        id=f"evt_{seconds(at)}_{kind}",
        type=f"customer.subscription.{kind}",
        created=at,
        data_object={
            "object": "subscription",
            "id": sub.id,
            "customer": sub.customer_id,
            "status": sub.status,
            "billing_mode": {"type": sub.billing_mode},
            "billing_cycle_anchor": seconds(sub.billing_cycle_anchor),
            "ended_at": seconds(sub.ended_at) if sub.ended_at else None,
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": i.id,
                        "created": seconds(i.created),
                        "current_period_start": seconds(i.current_period_start),
                        "current_period_end": seconds(i.current_period_end),
                        "price": {
                            "id": i.price.id,
                            "recurring": {
                                "meter": "mtr_1",
                                "interval": "month",
                                "interval_count": 1,
                                "usage_type": "metered",
                            },
                        },
                    }
                    for i in sub.items
                ],
            },
        },
    )


def spans(rows) -> list[tuple[str, str, datetime, datetime | None]]:
    return [(r.subscription_item_id, r.price_id, r.valid_from, r.valid_to) for r in rows]


def test_price_change_on_the_same_item_keeps_both_intervals():
    before = subscription(item("si_1", OLD, CREATED))
    after = subscription(item("si_1", NEW, CREATED))
    rows = build_intervals(
        catalog(after),
        [event("created", CREATED, before), event("updated", CHANGE, after)],
        [],
        SYNC,
    )
    assert spans(rows) == [
        ("si_1", "price_old", CREATED, CHANGE),
        ("si_1", "price_new", CHANGE, None),
    ]
    assert {r.meter_event_name for r in rows} == {"api_calls"}


def test_item_replaced_by_a_new_one_closes_at_the_change():
    before = subscription(item("si_1", OLD, CREATED))
    after = subscription(item("si_2", NEW, CHANGE))
    rows = build_intervals(
        catalog(after),
        [event("created", CREATED, before), event("updated", CHANGE, after)],
        [],
        SYNC,
    )
    assert spans(rows) == [
        ("si_1", "price_old", CREATED, CHANGE),
        ("si_2", "price_new", CHANGE, None),
    ]


def test_without_events_a_successor_item_created_at_gives_the_instant():
    previous = build_intervals(catalog(subscription(item("si_1", OLD, CREATED))), [], [], CREATED)
    rows = build_intervals(catalog(subscription(item("si_2", NEW, CHANGE))), [], previous, SYNC)
    assert spans(rows) == [
        ("si_1", "price_old", CREATED, CHANGE),
        ("si_2", "price_new", CHANGE, None),
    ]


def test_history_older_than_stripe_events_survives_and_a_resync_changes_nothing():
    before = subscription(item("si_1", OLD, CREATED))
    after = subscription(item("si_1", NEW, CREATED))
    first = build_intervals(
        catalog(after),
        [event("created", CREATED, before), event("updated", CHANGE, after)],
        [],
        SYNC,
    )
    # 30 days later Stripe no longer lists those events; the table still knows.
    again = build_intervals(catalog(after), [], first, datetime(2026, 12, 20, tzinfo=UTC))
    assert spans(again) == spans(first)


def test_canceled_subscription_closes_its_items_when_it_ended():
    ended = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    live = subscription(item("si_1", OLD, CREATED))
    gone = subscription(item("si_1", OLD, CREATED), status="canceled", ended=ended)
    rows = build_intervals(
        catalog(gone),
        [event("created", CREATED, live), event("deleted", ended, gone)],
        [],
        datetime(2026, 11, 26, tzinfo=UTC),
    )
    assert spans(rows) == [("si_1", "price_old", CREATED, ended)]


def test_billing_periods_follow_the_anchor_not_the_item_start():
    late_item = item("si_1", OLD, datetime(2026, 10, 20, tzinfo=UTC))
    rows = build_intervals(catalog(subscription(late_item)), [], [], SYNC)
    assert billing_periods(rows) == [
        ("si_1", datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC)),
        ("si_1", datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 12, 5, tzinfo=UTC)),
    ]
