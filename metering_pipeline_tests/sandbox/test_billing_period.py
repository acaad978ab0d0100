"""Whole billing periods on test clocks: period ends, the finalization grace period, finalized
invoices asserted to the cent, anchors, cancellation, pausing, trials and mid-period changes."""

from __future__ import annotations

import pytest
import stripe

from .support import (
    GRADUATED,
    advance,
    clocked_customer,
    invoices,
    meter,
    metered_price,
    subscribe,
    ts,
    usage,
)

NOV_5 = ts(2026, 11, 5)
DEC_5 = ts(2026, 12, 5)
HOUR = 3600


@pytest.fixture
def api_meter(stripe_client):
    return meter(stripe_client)


@pytest.fixture
def graduated(stripe_client, api_meter):
    return metered_price(
        stripe_client,
        api_meter.id,
        billing_scheme="tiered",
        tiers_mode="graduated",
        tiers=GRADUATED,
    )


def test_whole_period_from_subscription_to_finalized_invoice(stripe_client, graduated):
    client = stripe_client
    customer, clock = clocked_customer(client, NOV_5, metadata={"metering_customer_id": "acme"})
    subscription = subscribe(client, customer.id, graduated.id)
    item = subscription["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (NOV_5, DEC_5)
    assert subscription.billing_mode.type == "flexible"

    advance(client, clock.id, ts(2026, 11, 25))
    usage(client, customer.id, 4000, ts(2026, 11, 10), "e1")
    usage(client, customer.id, 7000, ts(2026, 11, 20), "e2")
    with pytest.raises(stripe.InvalidRequestError):  # a retry of e2 is not counted twice
        usage(client, customer.id, 7000, ts(2026, 11, 20), "e2")
    usage(client, customer.id, -500, ts(2026, 11, 21), "refund-1")
    advance(client, clock.id, DEC_5 - 60)
    usage(client, customer.id, 500, DEC_5 - 61, "e3")  # last second-ish of the period

    advance(client, clock.id, DEC_5 + 30)
    (draft,) = invoices(client, customer.id)
    assert draft.status == "draft"
    assert draft.automatically_finalizes_at == DEC_5 + HOUR
    assert (draft.period_start, draft.period_end) == (NOV_5, DEC_5)
    # 11000 units so far: 1000 × 1¢ + 9000 × 0.8¢ + 1000 × 0.5¢ = $87.00
    assert draft.amount_due == 8700
    renewed = client.v1.subscriptions.retrieve(subscription.id)["items"].data[0]
    assert (renewed.current_period_start, renewed.current_period_end) == (DEC_5, ts(2027, 1, 5))

    # Usage for the ended period that arrives during the grace hour still counts...
    usage(client, customer.id, 1000, ts(2026, 11, 30), "late-in-grace")
    # ...and usage stamped after the period end belongs to the next one.
    usage(client, customer.id, 999, DEC_5 + 10, "next-period")
    advance(client, clock.id, DEC_5 + HOUR + 1)

    (final,) = invoices(client, customer.id)
    assert final.id == draft.id
    assert final.status == "open"
    assert final.number is not None
    # 12000 units: 1000 × 1¢ + 9000 × 0.8¢ + 2000 × 0.5¢ = $92.00
    assert final.amount_due == 9200
    (line,) = client.v1.invoices.line_items.list(final.id).data
    assert (line.quantity, line.amount) == (12000, 9200)
    assert (line.period.start, line.period.end) == (NOV_5, DEC_5)
    assert line.parent.subscription_item_details.subscription_item == item.id

    # Once finalized, the invoice is frozen: more usage for November changes nothing.
    usage(client, customer.id, 5000, ts(2026, 11, 30), "too-late")
    assert client.v1.invoices.retrieve(final.id).amount_due == 9200

    types = [e.type for e in reversed(client.v1.events.list({"limit": 100}).data)]
    created, finalized = types.index("invoice.created", 3), types.index("invoice.finalized", 3)
    assert "customer.subscription.created" in types and created < finalized


def test_draft_amount_follows_usage_until_finalization(stripe_client, graduated):
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscribe(stripe_client, customer.id, graduated.id)
    usage(stripe_client, customer.id, 1000, NOV_5 + 10)
    advance(stripe_client, clock.id, DEC_5 + 5)
    (draft,) = invoices(stripe_client, customer.id)
    assert draft.amount_due == 1000
    usage(stripe_client, customer.id, 1000, DEC_5 - 10)
    assert stripe_client.v1.invoices.retrieve(draft.id).amount_due == 1800
    finalized = stripe_client.v1.invoices.finalize_invoice(draft.id)
    assert (finalized.status, finalized.amount_due) == ("open", 1800)
    usage(stripe_client, customer.id, 1000, DEC_5 - 10)
    assert stripe_client.v1.invoices.retrieve(draft.id).amount_due == 1800
    with pytest.raises(stripe.InvalidRequestError):
        stripe_client.v1.invoices.finalize_invoice(draft.id)


def test_configurable_grace_period():
    from metering_pipeline.stripe_sandbox import run_sandbox

    with run_sandbox(requests_per_second=1000, finalization_grace_seconds=72 * HOUR) as sandbox:
        client = stripe.StripeClient(
            "sk_test_grace", base_addresses={"api": sandbox.url, "meter_events": sandbox.url}
        )
        price = metered_price(client, meter(client).id, unit_amount=1)
        customer, clock = clocked_customer(client, NOV_5)
        subscribe(client, customer.id, price.id)
        advance(client, clock.id, DEC_5 + 71 * HOUR)
        (invoice,) = invoices(client, customer.id)
        assert invoice.status == "draft"
        assert invoice.automatically_finalizes_at == DEC_5 + 72 * HOUR
        advance(client, clock.id, DEC_5 + 72 * HOUR)
        assert invoices(client, customer.id)[0].status == "paid"  # $0 invoices are paid at once


def test_negative_period_total_bills_zero(stripe_client, graduated):
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscribe(stripe_client, customer.id, graduated.id)
    usage(stripe_client, customer.id, 100, NOV_5 + 10)
    usage(stripe_client, customer.id, -300, NOV_5 + 20)
    advance(stripe_client, clock.id, DEC_5 + 2 * HOUR)
    (invoice,) = invoices(stripe_client, customer.id)
    assert invoice.amount_due == 0
    assert invoice.lines.data[0].quantity == 0


def test_anchor_on_the_31st_lands_on_short_months_ends(stripe_client, graduated):
    jan_15 = ts(2027, 1, 15)
    customer, clock = clocked_customer(stripe_client, jan_15)
    subscription = subscribe(
        stripe_client,
        customer.id,
        graduated.id,
        billing_cycle_anchor_config={"day_of_month": 31, "hour": 0, "minute": 0, "second": 0},
    )
    assert subscription.billing_cycle_anchor == ts(2027, 1, 31)
    periods = []
    for stop in (ts(2027, 1, 31), ts(2027, 2, 28), ts(2027, 3, 31)):
        item = stripe_client.v1.subscriptions.retrieve(subscription.id)["items"].data[0]
        periods.append((item.current_period_start, item.current_period_end))
        advance(stripe_client, clock.id, stop)
    assert periods == [
        (jan_15, ts(2027, 1, 31)),  # the first, shorter period up to the anchor
        (ts(2027, 1, 31), ts(2027, 2, 28)),
        (ts(2027, 2, 28), ts(2027, 3, 31)),  # back to the 31st, no drift
    ]


def test_billing_cycle_anchor_timestamp(stripe_client, graduated):
    customer, _ = clocked_customer(stripe_client, NOV_5)
    anchor = ts(2026, 11, 20, 12)
    subscription = subscribe(stripe_client, customer.id, graduated.id, billing_cycle_anchor=anchor)
    item = subscription["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (NOV_5, anchor)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        subscribe(stripe_client, customer.id, graduated.id, billing_cycle_anchor=NOV_5 - 1)
    assert caught.value.param == "billing_cycle_anchor"


@pytest.mark.parametrize(
    ("mode", "behavior", "expected_lines"),
    [
        # flexible: usage received before the change is billed at the old price (100 × 10¢)
        ("flexible", None, {"old": 1000, "new": 600}),
        ("flexible", "none", {"new": 600}),
        # classic: usage before the change is not billed at all
        ("classic", None, {"new": 600}),
    ],
)
def test_metered_price_change_mid_period(stripe_client, api_meter, mode, behavior, expected_lines):
    old = metered_price(stripe_client, api_meter.id, unit_amount=10, name="Old plan")
    new = metered_price(stripe_client, api_meter.id, unit_amount=20, name="New plan")
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, old.id, billing_mode={"type": mode})
    item = subscription["items"].data[0]
    advance(stripe_client, clock.id, ts(2026, 11, 10))
    usage(stripe_client, customer.id, 100, ts(2026, 11, 10))
    advance(stripe_client, clock.id, ts(2026, 11, 15))

    change = {"price": new.id} | ({"proration_behavior": behavior} if behavior else {})
    changed = stripe_client.v1.subscription_items.update(item.id, change)
    assert (changed.id, changed.price.id) == (item.id, new.id)
    # Usage for the old item's time that reaches Stripe after the change is never billed.
    usage(stripe_client, customer.id, 50, ts(2026, 11, 12))
    advance(stripe_client, clock.id, ts(2026, 11, 20))
    usage(stripe_client, customer.id, 30, ts(2026, 11, 20))
    advance(stripe_client, clock.id, DEC_5 + 2 * HOUR)

    (invoice,) = invoices(stripe_client, customer.id)
    lines = stripe_client.v1.invoices.line_items.list(invoice.id).data
    by_kind = {
        ("old" if line.parent.type == "invoice_item_details" else "new"): line.amount
        for line in lines
    }
    assert by_kind == expected_lines
    assert invoice.amount_due == sum(expected_lines.values())
    metered = next(line for line in lines if line.parent.type == "subscription_item_details")
    assert metered.period.start == ts(2026, 11, 15)


def test_removing_a_metered_item_bills_usage_so_far_in_flexible_mode(stripe_client, api_meter):
    seats = stripe_client.v1.prices.create(
        {
            "currency": "usd",
            "unit_amount": 5000,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Seats"},
        }
    )
    price = metered_price(stripe_client, api_meter.id, unit_amount=10)
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, seats.id, price.id)
    first = invoices(stripe_client, customer.id, "subscription_create")[0]
    assert first.amount_due == 5000  # seats are billed in advance, usage in arrears
    metered_item = next(i for i in subscription["items"].data if i.price.id == price.id)
    usage(stripe_client, customer.id, 40, NOV_5 + 100)
    advance(stripe_client, clock.id, ts(2026, 11, 10))
    deleted = stripe_client.v1.subscription_items.delete(metered_item.id)
    assert deleted.deleted is True
    pending = stripe_client.v1.invoice_items.list({"customer": customer.id, "pending": True}).data
    assert [(ii.amount, ii.proration) for ii in pending] == [(400, True)]
    advance(stripe_client, clock.id, DEC_5 + 2 * HOUR)
    (invoice,) = invoices(stripe_client, customer.id)
    assert invoice.amount_due == 400 + 5000  # the usage so far, plus next month's seats


def test_cancel_at_period_end_bills_the_last_period_then_ends(stripe_client, graduated):
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, graduated.id)
    stripe_client.v1.subscriptions.update(subscription.id, {"cancel_at_period_end": True})
    usage(stripe_client, customer.id, 500, NOV_5 + 10)
    advance(stripe_client, clock.id, DEC_5 + 2 * HOUR)
    ended = stripe_client.v1.subscriptions.retrieve(subscription.id)
    assert (ended.status, ended.ended_at) == ("canceled", DEC_5)
    (invoice,) = invoices(stripe_client, customer.id)
    assert (invoice.status, invoice.amount_due) == ("open", 500)
    types = [e.type for e in stripe_client.v1.events.list({"limit": 100}).data]
    assert "customer.subscription.deleted" in types


@pytest.mark.parametrize(("invoice_now", "billed"), [(True, [300]), (False, [])])
def test_cancel_now(stripe_client, graduated, invoice_now, billed):
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, graduated.id)
    usage(stripe_client, customer.id, 300, NOV_5 + 10)
    advance(stripe_client, clock.id, ts(2026, 11, 10))
    canceled = stripe_client.v1.subscriptions.cancel(subscription.id, {"invoice_now": invoice_now})
    assert (canceled.status, canceled.canceled_at) == ("canceled", ts(2026, 11, 10))
    advance(stripe_client, clock.id, ts(2027, 1, 10))
    assert [i.amount_due for i in invoices(stripe_client, customer.id)] == billed


@pytest.mark.parametrize(
    ("behavior", "status"),
    [("keep_as_draft", "draft"), ("mark_uncollectible", "uncollectible"), ("void", "void")],
)
def test_pause_collection(stripe_client, graduated, behavior, status):
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, graduated.id)
    paused = stripe_client.v1.subscriptions.update(
        subscription.id, {"pause_collection": {"behavior": behavior}}
    )
    assert paused.pause_collection.behavior == behavior
    usage(stripe_client, customer.id, 10, NOV_5 + 10)
    advance(stripe_client, clock.id, DEC_5 + 2 * HOUR)
    assert [i.status for i in invoices(stripe_client, customer.id)] == [status]
    resumed = stripe_client.v1.subscriptions.update(subscription.id, {"pause_collection": ""})
    assert resumed.pause_collection is None


def test_trial_usage_is_not_billed(stripe_client, graduated):
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, graduated.id, trial_period_days=14)
    assert (subscription.status, subscription.trial_end) == ("trialing", NOV_5 + 14 * 86400)
    usage(stripe_client, customer.id, 700, NOV_5 + 10)
    advance(stripe_client, clock.id, NOV_5 + 14 * 86400 + 2 * HOUR)
    assert stripe_client.v1.subscriptions.retrieve(subscription.id).status == "active"
    (trial_invoice,) = invoices(stripe_client, customer.id)
    assert trial_invoice.amount_due == 0
    assert trial_invoice.lines.data[0].description.startswith("Trial period")
    advance(stripe_client, clock.id, NOV_5 + 15 * 86400)
    usage(stripe_client, customer.id, 200, NOV_5 + 15 * 86400)
    advance(stripe_client, clock.id, ts(2026, 12, 19, 2))
    assert [i.amount_due for i in invoices(stripe_client, customer.id)] == [0, 200]


def test_manual_invoice_with_invoice_items_and_a_credit_note(stripe_client):
    customer = stripe_client.v1.customers.create({"email": "ops@example.com"})
    stripe_client.v1.invoice_items.create(
        {"customer": customer.id, "amount": 1234, "currency": "usd", "description": "Setup"}
    )
    invoice = stripe_client.v1.invoices.create(
        {"customer": customer.id, "pending_invoice_items_behavior": "include"}
    )
    stripe_client.v1.invoice_items.create(
        {"customer": customer.id, "amount": 766, "currency": "usd", "invoice": invoice.id}
    )
    assert stripe_client.v1.invoices.retrieve(invoice.id).amount_due == 2000
    finalized = stripe_client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open"
    line = finalized.lines.data[0]
    note = stripe_client.v1.credit_notes.create(
        {
            "invoice": invoice.id,
            "lines": [{"type": "invoice_line_item", "invoice_line_item": line.id, "amount": 234}],
        }
    )
    assert (note.amount, note.type, note.status) == (234, "pre_payment", "issued")
    assert stripe_client.v1.invoices.retrieve(invoice.id).amount_remaining == 1766
    with pytest.raises(stripe.InvalidRequestError):  # more than is left to credit
        stripe_client.v1.credit_notes.create({"invoice": invoice.id, "amount": 5000})


def test_always_invoice_bills_the_old_price_usage_at_once(stripe_client, api_meter):
    old = metered_price(stripe_client, api_meter.id, unit_amount=10, name="Old plan")
    new = metered_price(stripe_client, api_meter.id, unit_amount=20, name="New plan")
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, old.id)
    advance(stripe_client, clock.id, ts(2026, 11, 10))
    usage(stripe_client, customer.id, 25, ts(2026, 11, 9))
    stripe_client.v1.subscriptions.update(
        subscription.id,
        {
            "items": [{"id": subscription["items"].data[0].id, "price": new.id}],
            "proration_behavior": "always_invoice",
        },
    )
    (update,) = invoices(stripe_client, customer.id, "subscription_update")
    assert (update.status, update.amount_due) == ("open", 250)
    assert [line.amount for line in update.lines.data] == [250]
    advance(stripe_client, clock.id, DEC_5 + 2 * HOUR)
    (cycle,) = invoices(stripe_client, customer.id)
    assert cycle.amount_due == 0  # nothing since the change; the old usage is not billed twice


def test_test_clocks_move_forward_only_and_take_their_customers_along(stripe_client):
    customer, clock = clocked_customer(stripe_client, NOV_5)
    assert [c.id for c in stripe_client.v1.test_helpers.test_clocks.list().data] == [clock.id]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV_5 - 1})
    assert caught.value.param == "frozen_time"
    deleted = stripe_client.v1.test_helpers.test_clocks.delete(clock.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.retrieve(customer.id)
    assert caught.value.http_status == 404


def test_objects_on_a_clock_use_its_time_others_real_time(stripe_client, api_meter):
    import time

    customer, _ = clocked_customer(stripe_client, NOV_5)
    plain = stripe_client.v1.customers.create({})
    assert customer.created == NOV_5
    assert abs(plain.created - time.time()) < 5
    price = metered_price(stripe_client, api_meter.id, unit_amount=1)
    assert subscribe(stripe_client, customer.id, price.id).start_date == NOV_5
