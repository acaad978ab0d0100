"""Billing meters, meter events, adjustments, event summaries and the v2 stream, via the SDK."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import stripe

from .support import advance, clocked_customer, meter, ts, usage

NOV_5 = ts(2026, 11, 5)
DAY = 86400


@pytest.fixture
def customer(stripe_client):
    found, _ = clocked_customer(stripe_client, NOV_5 + 10 * DAY)
    return found


def test_meter_lifecycle(stripe_client):
    created = meter(stripe_client, "tokens", formula="count", event_time_window="hour")
    assert (created.status, created.default_aggregation.formula) == ("active", "count")
    assert created.event_time_window == "hour"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        meter(stripe_client, "tokens")
    assert caught.value.param == "event_name"
    renamed = stripe_client.v1.billing.meters.update(created.id, {"display_name": "Tokens"})
    assert renamed.display_name == "Tokens"
    with pytest.raises(stripe.InvalidRequestError):  # only display_name can change
        stripe_client.v1.billing.meters.update(created.id, {"event_name": "other"})
    inactive = stripe_client.v1.billing.meters.deactivate(created.id)
    assert inactive.status == "inactive"
    assert inactive.status_transitions.deactivated_at is not None
    assert stripe_client.v1.billing.meters.reactivate(created.id).status == "active"
    assert [m.id for m in stripe_client.v1.billing.meters.list().data] == [created.id]
    assert stripe_client.v1.billing.meters.retrieve(created.id).display_name == "Tokens"


def test_identifier_dedupe_answers_400_without_retry(stripe_client, customer):
    meter(stripe_client)
    now = NOV_5 + 10 * DAY
    first = usage(stripe_client, customer.id, 5, now, "push-abc-1")
    assert first.identifier == "push-abc-1"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        usage(stripe_client, customer.id, 5, now, "push-abc-1")
    assert caught.value.http_status == 400
    assert "already exists with identifier" in caught.value.user_message
    assert caught.value.code == "duplicate_meter_event"
    assert caught.value.headers["Stripe-Should-Retry"] == "false"


def test_identifier_is_reusable_after_24_hours(stripe_client, customer):
    meter(stripe_client)
    usage(stripe_client, customer.id, 5, NOV_5 + 10 * DAY, "once-a-day")
    advance(stripe_client, customer.test_clock, NOV_5 + 11 * DAY + 1)
    assert usage(stripe_client, customer.id, 5, NOV_5 + 11 * DAY, "once-a-day").identifier


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-35 * DAY, True), (-35 * DAY - 1, False), (300, True), (301, False)],
)
def test_timestamp_window_follows_the_customers_clock(stripe_client, customer, offset, accepted):
    meter(stripe_client)
    clock_now = NOV_5 + 10 * DAY  # the customer's test clock, far from real time
    if accepted:
        assert (
            usage(stripe_client, customer.id, 1, clock_now + offset).timestamp == clock_now + offset
        )
    else:
        with pytest.raises(stripe.InvalidRequestError) as caught:
            usage(stripe_client, customer.id, 1, clock_now + offset)
        assert caught.value.param == "timestamp"


def _summary(client, meter_id, customer_id, start, end, **extra):
    return client.v1.billing.meters.event_summaries.list(
        meter_id, {"customer": customer_id, "start_time": start, "end_time": end, **extra}
    ).data


def test_summaries_are_half_open_and_grouped(stripe_client, customer):
    sums = meter(stripe_client)
    start = NOV_5 + 9 * DAY
    usage(stripe_client, customer.id, 3, start)  # counted: start is inclusive
    usage(stripe_client, customer.id, 4, start + 3599)
    usage(stripe_client, customer.id, -2, start + 3600)  # negative values are accepted
    usage(stripe_client, customer.id, 100, start + DAY)  # excluded: end is exclusive
    (whole,) = _summary(stripe_client, sums.id, customer.id, start, start + DAY)
    assert (whole.aggregated_value, whole.start_time, whole.end_time) == (5, start, start + DAY)
    hourly = _summary(
        stripe_client, sums.id, customer.id, start, start + 3 * 3600, value_grouping_window="hour"
    )
    assert [(s.start_time - start, s.aggregated_value) for s in hourly] == [
        (0, 7),
        (3600, -2),
        (7200, 0),
    ]
    daily = _summary(
        stripe_client, sums.id, customer.id, start, start + 2 * DAY, value_grouping_window="day"
    )
    assert [s.aggregated_value for s in daily] == [5, 100]


@pytest.mark.parametrize(
    ("start_offset", "grouping", "param"),
    [(30, None, "start_time"), (60, "hour", "start_time"), (3600, "day", "start_time")],
)
def test_summary_windows_must_be_aligned(stripe_client, customer, start_offset, grouping, param):
    sums = meter(stripe_client)
    extra = {"value_grouping_window": grouping} if grouping else {}
    with pytest.raises(stripe.InvalidRequestError) as caught:
        _summary(
            stripe_client, sums.id, customer.id, NOV_5 + start_offset, NOV_5 + 2 * DAY, **extra
        )
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("formula", "window", "expected"),
    [("sum", None, 6), ("count", None, 3), ("last", None, 2), ("sum", "hour", 2)],
)
def test_formulas(stripe_client, customer, formula, window, expected):
    extra = {"event_time_window": window} if window else {}
    created = meter(stripe_client, formula=formula, **extra)
    start = NOV_5 + 9 * DAY
    for offset, value in ((10, 3), (20, 1), (30, 2)):  # all in one hour
        usage(stripe_client, customer.id, value, start + offset)
    (summary,) = _summary(stripe_client, created.id, customer.id, start, start + 3600)
    # with an hour window, the last event of each hour wins before the formula applies
    assert summary.aggregated_value == expected


def test_cancel_adjustment_within_24_hours(stripe_client, customer):
    sums = meter(stripe_client)
    now = NOV_5 + 10 * DAY
    usage(stripe_client, customer.id, 40, now - 100, "to-cancel")
    usage(stripe_client, customer.id, 2, now - 50, "to-keep")
    adjustment = stripe_client.v1.billing.meter_event_adjustments.create(
        {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "to-cancel"}}
    )
    assert (adjustment.status, adjustment.cancel.identifier) == ("complete", "to-cancel")
    (summary,) = _summary(stripe_client, sums.id, customer.id, now - 3600, now + 60)
    assert summary.aggregated_value == 2
    advance(stripe_client, customer.test_clock, now + DAY + 1)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "to-keep"}}
        )
    assert "24 hours" in caught.value.user_message


def test_v2_session_and_stream(stripe_sandbox, stripe_client, customer):
    sums = meter(stripe_client)
    session = stripe_client.v2.billing.meter_event_session.create()
    assert session.authentication_token.startswith("ek_test_")
    assert session.expires_at > session.created
    stream_client = stripe.StripeClient(
        session.authentication_token,
        base_addresses={"api": stripe_sandbox.url, "meter_events": stripe_sandbox.url},
    )
    now = NOV_5 + 10 * DAY
    events = [
        {
            "event_name": "api_calls",
            "identifier": f"s-{i}",
            "payload": {"stripe_customer_id": customer.id, "value": "2"},
            "timestamp": "2026-11-15T00:00:00.000Z",
        }
        for i in range(100)
    ]
    events[5]["payload"]["stripe_customer_id"] = "cus_missing"  # validated asynchronously
    stream_client.v2.billing.meter_event_stream.create({"events": events})
    (summary,) = _summary(stripe_client, sums.id, customer.id, now - 60, now + 60)
    assert summary.aggregated_value == 2 * 99
    errors = stripe_sandbox.control.stats()["meter_event_stream_errors"]
    assert [e["identifier"] for e in errors] == ["s-5"]
    with pytest.raises(stripe.InvalidRequestError):
        stream_client.v2.billing.meter_event_stream.create({"events": events + events[:1]})
    bad = stripe.StripeClient(
        "ek_test_not_a_session", base_addresses={"meter_events": stripe_sandbox.url}
    )
    with pytest.raises(stripe.AuthenticationError):
        bad.v2.billing.meter_event_stream.create({"events": events[:1]})


def test_missing_key_is_a_401(stripe_sandbox):
    response = httpx.post(f"{stripe_sandbox.url}/v1/billing/meter_events")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_v2_meter_events_and_adjustments(stripe_client, customer):
    sums = meter(stripe_client)
    created = stripe_client.v2.billing.meter_events.create(
        {
            "event_name": "api_calls",
            "identifier": "v2-1",
            "payload": {"stripe_customer_id": customer.id, "value": "9"},
            "timestamp": "2026-11-15T00:00:00.000Z",
        }
    )
    assert (created.identifier, created.payload["value"]) == ("v2-1", "9")
    with pytest.raises(stripe.StripeError) as caught:  # same identifier, rejected as in v1
        stripe_client.v2.billing.meter_events.create(
            {
                "event_name": "api_calls",
                "identifier": "v2-1",
                "payload": {"stripe_customer_id": customer.id, "value": "9"},
            }
        )
    assert caught.value.http_status == 400
    now = NOV_5 + 10 * DAY
    (summary,) = _summary(stripe_client, sums.id, customer.id, now - 60, now + 60)
    assert summary.aggregated_value == 9
    adjustment = stripe_client.v2.billing.meter_event_adjustments.create(
        {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "v2-1"}}
    )
    assert adjustment.status == "complete"
    (summary,) = _summary(stripe_client, sums.id, customer.id, now - 60, now + 60)
    assert summary.aggregated_value == 0


def test_daily_summaries_page_through_a_whole_month(stripe_client, customer):
    sums = meter(stripe_client)
    start = NOV_5 - 20 * DAY
    for day in range(30):
        if start + day * DAY <= NOV_5 + 10 * DAY:
            usage(stripe_client, customer.id, day, start + day * DAY + 5)
    pages = stripe_client.v1.billing.meters.event_summaries.list(
        sums.id,
        {
            "customer": customer.id,
            "start_time": start,
            "end_time": start + 30 * DAY,
            "value_grouping_window": "day",
            "limit": 7,
        },
    )
    windows = list(pages.auto_paging_iter())
    assert [w.start_time for w in windows] == [start + day * DAY for day in range(30)]
    assert [w.aggregated_value for w in windows][: 31 - 1] == [
        day if start + day * DAY <= NOV_5 + 10 * DAY else 0 for day in range(30)
    ]


def test_concurrent_clients_lose_nothing(stripe_client):
    sums = meter(stripe_client)
    customers = [stripe_client.v1.customers.create({}) for _ in range(4)]
    start = (int(time.time()) // 60) * 60 - 3600

    def send(customer_id: str) -> None:  # Stripe takes one call per customer and meter at once
        for index in range(20):
            usage(stripe_client, customer_id, 3, start + index, f"{customer_id}-{index}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(send, [c.id for c in customers]))
    totals = [
        _summary(stripe_client, sums.id, c.id, start, start + 3600)[0].aggregated_value
        for c in customers
    ]
    assert totals == [60, 60, 60, 60]
