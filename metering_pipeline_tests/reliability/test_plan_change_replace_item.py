"""A plan change sent as Stripe's guide shows it (delete the only item, add its replacement, in
one subscription update) works in the sandbox, as at Stripe, which validates the item set the
update leaves rather than each step; deleting the last item on its own is still refused."""

from __future__ import annotations

import pytest
import stripe

from metering_pipeline_tests.sandbox.support import (
    advance,
    clocked_customer,
    invoices,
    meter,
    metered_price,
    subscribe,
    ts,
    usage,
)

NOV_5, DEC_5 = ts(2026, 11, 5), ts(2026, 12, 5)


def test_replacing_the_only_item_in_one_update_bills_both_prices(stripe_client):
    api_calls = meter(stripe_client)
    old = metered_price(stripe_client, api_calls.id, unit_amount=10, name="Old plan")
    new = metered_price(stripe_client, api_calls.id, unit_amount=20, name="New plan")
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, old.id)
    (item,) = subscription["items"].data
    advance(stripe_client, clock.id, ts(2026, 11, 10))
    usage(stripe_client, customer.id, 100, ts(2026, 11, 10))
    advance(stripe_client, clock.id, ts(2026, 11, 15, 15, 23, 11))

    changed = stripe_client.v1.subscriptions.update(
        subscription.id, {"items": [{"id": item.id, "deleted": True}, {"price": new.id}]}
    )

    (replacement,) = changed["items"].data
    assert replacement.id != item.id and replacement.price.id == new.id
    advance(stripe_client, clock.id, ts(2026, 11, 20))
    usage(stripe_client, customer.id, 30, ts(2026, 11, 20))
    advance(stripe_client, clock.id, DEC_5 + 7200)
    (invoice,) = invoices(stripe_client, customer.id)
    lines = stripe_client.v1.invoices.line_items.list(invoice.id).data
    # flexible mode: the old price's usage so far (100 x 10c) as an invoice item at the change,
    # the new price's usage (30 x 20c) on its own item
    assert sorted(line.amount for line in lines) == [600, 1000]
    assert invoice.amount_due == 1600


def test_an_update_that_leaves_no_item_is_refused_and_changes_nothing(stripe_client):
    api_calls = meter(stripe_client)
    price = metered_price(stripe_client, api_calls.id, unit_amount=10)
    customer, clock = clocked_customer(stripe_client, NOV_5)
    subscription = subscribe(stripe_client, customer.id, price.id)
    (item,) = subscription["items"].data
    advance(stripe_client, clock.id, ts(2026, 11, 10))
    usage(stripe_client, customer.id, 100, ts(2026, 11, 10))

    with pytest.raises(stripe.InvalidRequestError, match="at least one item"):
        stripe_client.v1.subscriptions.update(
            subscription.id, {"items": [{"id": item.id, "deleted": True}]}
        )
    with pytest.raises(stripe.InvalidRequestError, match="at least one item"):
        stripe_client.v1.subscription_items.delete(item.id)

    after = stripe_client.v1.subscriptions.retrieve(subscription.id)
    assert [i.id for i in after["items"].data] == [item.id]
    # the refused update created no invoice item for the old price
    assert stripe_client.v1.invoice_items.list({"customer": customer.id}).data == []
