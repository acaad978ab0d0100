"""Subscriptions, their items and periods, invoices, invoice items and credit notes, and the
scheduler that runs period ends, grace periods and finalization in time order.

Metered usage is billed in arrears: at a period end a draft invoice gets one line per metered
item, priced from the meter events received so far; the line keeps following new usage during
the finalization grace period and is frozen when the invoice finalizes.
"""

from __future__ import annotations

import copy
from decimal import Decimal

from .catalog import require_price_active
from .errors import StripeError, missing, param_error
from .metering import usage
from .params import boolean, choice, integer, listing, mapping, merge_metadata, text
from .periods import anchor_from_config, period_containing, step
from .pricing import amount_for
from .store import Store, new_id, require_state

PRORATION = ("create_prorations", "none", "always_invoice")
LIVE_STATUSES = ("active", "trialing", "past_due")


def _metered(price: dict) -> bool:
    return bool(price["recurring"]) and price["recurring"]["usage_type"] == "metered"


def _quantity_fields(quantity: Decimal) -> tuple[int | None, str]:
    whole = quantity == quantity.to_integral_value()
    return (int(quantity) if whole else None), format(quantity.normalize(), "f")


# -- rendering -----------------------------------------------------------------------------------


def render_item(store: Store, item: dict) -> dict:
    price = store.objects[item["price"]]
    item["price"] = copy.deepcopy(price)
    recurring = price["recurring"] or {}
    item["plan"] = {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": price["billing_scheme"],
        "created": price["created"],
        "currency": price["currency"],
        "interval": recurring.get("interval"),
        "interval_count": recurring.get("interval_count"),
        "livemode": False,
        "metadata": price["metadata"],
        "meter": recurring.get("meter"),
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": price["tiers_mode"],
        "transform_usage": price["transform_quantity"],
        "trial_period_days": recurring.get("trial_period_days"),
        "usage_type": recurring.get("usage_type"),
        "_tiers": price["_tiers"],
    }
    return item


def render_subscription(store: Store, subscription: dict) -> dict:
    subscription["items"] = {
        "object": "list",
        "data": [render_item(store, dict(store.objects[i])) for i in subscription["_items"]],
        "has_more": False,
        "total_count": len(subscription["_items"]),
        "url": f"/v1/subscription_items?subscription={subscription['id']}",
    }
    return subscription


def render_invoice(store: Store, invoice: dict) -> dict:
    lines = invoice["_lines"]
    invoice["lines"] = {
        "object": "list",
        "data": lines[:10],
        "has_more": len(lines) > 10,
        "total_count": len(lines),
        "url": f"/v1/invoices/{invoice['id']}/lines",
    }
    return invoice


def install_renderers(store: Store) -> None:
    store.renderers["subscription_item"] = lambda obj: render_item(store, obj)
    store.renderers["subscription"] = lambda obj: render_subscription(store, obj)
    store.renderers["invoice"] = lambda obj: render_invoice(store, obj)


# -- subscriptions -------------------------------------------------------------------------------


def _price_for_item(store: Store, params: dict, param: str) -> dict:
    price_id = text(params, "price")
    if price_id is None:
        raise missing(param)
    price = store.get(price_id, "price", param)
    require_price_active(price, param)
    if not price["recurring"]:
        raise param_error(
            param, f"The price {price_id} is one-time; subscriptions need recurring prices."
        )
    return price


def _check_items(subscription: dict, prices: list[dict]) -> None:
    intervals = {(p["recurring"]["interval"], p["recurring"]["interval_count"]) for p in prices}
    if subscription.get("_interval"):
        intervals.add(subscription["_interval"])
    if len(intervals) > 1:
        raise param_error(
            "items",
            "All items of a subscription must share one billing interval in the sandbox "
            f"(got {sorted(intervals)}).",
        )
    ids = [p["id"] for p in prices]
    if len(ids) != len(set(ids)):
        raise param_error(
            "items", "Cannot add multiple subscription items with the same price to a subscription."
        )
    currencies = {p["currency"] for p in prices}
    if len(currencies) > 1:
        raise param_error("items", "All prices of a subscription must share one currency.")


def _new_item(store: Store, subscription: dict, price: dict, params: dict, now: int) -> dict:
    quantity = None if _metered(price) else integer(params, "quantity", default=1)
    item = store.add(
        "si",
        {
            "object": "subscription_item",
            "created": now,
            "discounts": [],
            "metadata": merge_metadata({}, mapping(params, "metadata")),
            "price": price["id"],
            "quantity": quantity,
            "subscription": subscription["id"],
            "tax_rates": [],
            "billing_thresholds": None,
            "current_period_start": subscription["_period"][0],
            "current_period_end": subscription["_period"][1],
            "_from": now,
            "_history": [],
        },
        livemode_key=False,
    )
    subscription["_items"].append(item["id"])
    return item


def create_subscription(store: Store, params: dict) -> dict:
    customer = store.get(text(params, "customer", required=True), "customer", "customer")
    now = store.now(customer["id"])
    item_params = listing(params, "items")
    if not item_params:
        raise missing("items")
    prices = [
        _price_for_item(store, entry, f"items[{index}][price]")
        for index, entry in enumerate(item_params)
    ]
    subscription = {
        "object": "subscription",
        "_items": [],
        "_interval": None,
    }
    _check_items(subscription, prices)
    interval, count = prices[0]["recurring"]["interval"], prices[0]["recurring"]["interval_count"]

    trial_end = _trial_end(params, prices[0], now)
    anchor = integer(params, "billing_cycle_anchor")
    config = mapping(params, "billing_cycle_anchor_config")
    if anchor is not None and config:
        raise param_error(
            "billing_cycle_anchor", "Use billing_cycle_anchor or billing_cycle_anchor_config."
        )
    if config:
        if "day_of_month" not in config:
            raise missing("billing_cycle_anchor_config[day_of_month]")
        anchor = anchor_from_config(trial_end or now, config, interval)
    if anchor is not None and anchor < (trial_end or now):
        raise param_error(
            "billing_cycle_anchor",
            "billing_cycle_anchor cannot be in the past (or before a trial end).",
        )
    anchor = anchor if anchor is not None else (trial_end or now)
    first_end = trial_end or (anchor if anchor > now else step(anchor, interval, count, 1))

    subscription.update(
        {
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
            "billing_cycle_anchor": anchor,
            "billing_cycle_anchor_config": (
                {key: int(value) for key, value in config.items()} if config else None
            ),
            "billing_mode": {
                "type": choice(
                    mapping(params, "billing_mode"), "type", ("flexible", "classic"), "flexible"
                ),
            },
            "billing_schedules": [],
            "billing_thresholds": None,
            "cancel_at": integer(params, "cancel_at"),
            "cancel_at_period_end": boolean(params, "cancel_at_period_end", False),
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "collection_method": choice(
                params,
                "collection_method",
                ("charge_automatically", "send_invoice"),
                "charge_automatically",
            ),
            "created": now,
            "currency": prices[0]["currency"],
            "customer": customer["id"],
            "customer_account": None,
            "days_until_due": integer(params, "days_until_due"),
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": text(params, "description"),
            "discounts": [],
            "ended_at": None,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "latest_invoice": None,
            "managed_payments": None,
            "metadata": merge_metadata({}, mapping(params, "metadata")),
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": now,
            "status": "trialing" if trial_end else "active",
            "test_clock": customer["test_clock"],
            "transfer_data": None,
            "trial_end": trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": now if trial_end else None,
            "_interval": (interval, count),
            "_period": [now, first_end],
        }
    )
    store.add("sub", subscription)
    for entry, price in zip(item_params, prices, strict=True):
        _new_item(store, subscription, price, entry, now)
    invoice = _invoice_for(store, subscription, "subscription_create", (now, now), advance=True)
    _finalize(store, invoice)
    store.emit("customer.subscription.created", subscription)
    return subscription


def _trial_end(params: dict, price: dict, now: int) -> int | None:
    if "trial_end" in params:
        value = text(params, "trial_end")
        end = now if value == "now" else integer(params, "trial_end")
        if end < now:
            raise param_error("trial_end", "trial_end must be in the future.")
        return end if end > now else None
    days = integer(params, "trial_period_days", default=price["recurring"]["trial_period_days"])
    return now + days * 86400 if days else None


def _items_of(store: Store, subscription: dict) -> list[dict]:
    return [store.objects[item_id] for item_id in subscription["_items"]]


def _set_period(store: Store, subscription: dict, start: int, end: int) -> None:
    subscription["_period"] = [start, end]
    for item in _items_of(store, subscription):
        item["current_period_start"], item["current_period_end"] = start, end


def _require_live(subscription: dict) -> None:
    require_state(
        subscription["status"] not in ("canceled", "incomplete_expired"),
        f"Subscription {subscription['id']} is canceled; it can no longer be changed.",
    )


def _close_metered_interval(
    store: Store, subscription: dict, item: dict, behavior: str, now: int
) -> None:
    """A metered price leaves the item now (price change or removal).

    flexible: Stripe bills the usage it has received so far for the item's part of the period, as
    an invoice item at the old price (none with proration_behavior=none). classic: not billed.
    Usage for that time arriving later belongs to no item, so it is never billed.
    """
    price = store.objects[item["price"]]
    start = max(subscription["_period"][0], item["_from"])
    item["_history"].append({"price": price["id"], "from": item["_from"], "to": now})
    if not _metered(price) or subscription["billing_mode"]["type"] == "classic":
        return
    if behavior == "none":
        return
    meter = store.objects[price["recurring"]["meter"]]
    quantity = max(usage(store, meter, subscription["customer"], start, now, now), Decimal(0))
    create_invoice_item(
        store,
        {
            "customer": subscription["customer"],
            "subscription": subscription["id"],
            "pricing": {"price": price["id"]},
            "quantity_decimal": format(quantity.normalize(), "f"),
            "period": {"start": str(start), "end": str(now)},
            "description": f"Usage of {_product_name(store, price)} until the price change",
        },
        proration=True,
    )


def _apply_item_change(
    store: Store, subscription: dict, entry: dict, index: int, behavior: str, now: int
) -> None:
    param = f"items[{index}]"
    if "id" not in entry:
        price = _price_for_item(store, entry, f"{param}[price]")
        _check_items(subscription, [*_current_prices(store, subscription), price])
        _new_item(store, subscription, price, entry, now)
        return
    item = store.get(text(entry, "id"), "subscription_item", f"{param}[id]")
    require_state(
        item["subscription"] == subscription["id"],
        f"Item {item['id']} belongs to another subscription.",
        f"{param}[id]",
    )
    if boolean(entry, "deleted", False):
        _remove_item(store, subscription, item, behavior, now)
        return
    if "price" in entry and text(entry, "price") != item["price"]:
        price = _price_for_item(store, entry, f"{param}[price]")
        others = [p for p in _current_prices(store, subscription) if p["id"] != item["price"]]
        _check_items(subscription, [*others, price])
        _close_metered_interval(store, subscription, item, behavior, now)
        item["price"], item["_from"] = price["id"], now
        item["quantity"] = None if _metered(price) else integer(entry, "quantity", default=1)
    elif "quantity" in entry:
        item["quantity"] = integer(entry, "quantity")
    item["metadata"] = merge_metadata(item["metadata"], mapping(entry, "metadata"))


def _remove_item(store: Store, subscription: dict, item: dict, behavior: str, now: int) -> None:
    _close_metered_interval(store, subscription, item, behavior, now)
    subscription["_items"].remove(item["id"])
    item["_deleted"] = True


def _require_items_left(subscription: dict, entries: list[dict]) -> None:
    """Stripe validates the item set an update leaves, not each step: deleting the only item and
    adding its replacement in one call is how a plan is usually changed. Checked before anything
    changes, so a refused update leaves no closed interval or invoice item behind."""
    deleted = {
        text(entry, "id") for entry in entries if "id" in entry and boolean(entry, "deleted", False)
    }
    added = sum(1 for entry in entries if "id" not in entry)
    left = len([item for item in subscription["_items"] if item not in deleted]) + added
    require_state(
        left > 0, "A subscription needs at least one item; cancel the subscription instead."
    )


def _current_prices(store: Store, subscription: dict) -> list[dict]:
    return [store.objects[item["price"]] for item in _items_of(store, subscription)]


def update_subscription(store: Store, subscription: dict, params: dict) -> dict:
    _require_live(subscription)
    before = store.render(subscription)
    now = store.now(subscription["customer"])
    behavior = choice(params, "proration_behavior", PRORATION, "create_prorations")
    entries = listing(params, "items")
    _require_items_left(subscription, entries)
    for index, entry in enumerate(entries):
        _apply_item_change(store, subscription, entry, index, behavior, now)
    _settle_changes(store, subscription, behavior)
    if "cancel_at_period_end" in params:
        subscription["cancel_at_period_end"] = boolean(params, "cancel_at_period_end")
    if "cancel_at" in params:
        subscription["cancel_at"] = integer(params, "cancel_at")
    if "pause_collection" in params:
        _set_pause(subscription, params)
    for key in ("description",):
        if key in params:
            subscription[key] = text(params, key)
    subscription["metadata"] = merge_metadata(subscription["metadata"], mapping(params, "metadata"))
    store.emit_update("customer.subscription.updated", subscription, before)
    return subscription


def _set_pause(subscription: dict, params: dict) -> None:
    """`pause_collection` changes how invoices are collected (an update, not a status)."""
    if params["pause_collection"] == "":
        subscription["pause_collection"] = None
        return
    pause = mapping(params, "pause_collection")
    subscription["pause_collection"] = {
        "behavior": choice(
            pause,
            "behavior",
            ("keep_as_draft", "mark_uncollectible", "void"),
            required_as="pause_collection[behavior]",
        ),
        "resumes_at": integer(pause, "resumes_at"),
    }


def _settle_changes(store: Store, subscription: dict, behavior: str) -> None:
    """`always_invoice` bills the invoice items a change created right away."""
    if behavior != "always_invoice":
        return
    now = store.now(subscription["customer"])
    if _pending_items(store, subscription):
        invoice = _invoice_for(
            store, subscription, "subscription_update", (now, now), advance=False, metered=False
        )
        _finalize(store, invoice)


def create_item(store: Store, params: dict) -> dict:
    subscription = store.get(
        text(params, "subscription", required=True), "subscription", "subscription"
    )
    _require_live(subscription)
    before = store.render(subscription)
    behavior = choice(params, "proration_behavior", PRORATION, "create_prorations")
    price = _price_for_item(store, params, "price")
    _check_items(subscription, [*_current_prices(store, subscription), price])
    item = _new_item(store, subscription, price, params, store.now(subscription["customer"]))
    _settle_changes(store, subscription, behavior)
    store.emit_update("customer.subscription.updated", subscription, before)
    return item


def update_item(store: Store, item: dict, params: dict) -> dict:
    subscription = store.objects[item["subscription"]]
    entry = {key: value for key, value in params.items() if key != "proration_behavior"}
    update_subscription(
        store,
        subscription,
        {
            "items": [{**entry, "id": item["id"]}],
            **(
                {"proration_behavior": params["proration_behavior"]}
                if "proration_behavior" in params
                else {}
            ),
        },
    )
    return item


def delete_item(store: Store, item: dict, params: dict) -> dict:
    subscription = store.objects[item["subscription"]]
    update_subscription(
        store,
        subscription,
        {
            "items": [{"id": item["id"], "deleted": "true"}],
            **(
                {"proration_behavior": params["proration_behavior"]}
                if "proration_behavior" in params
                else {}
            ),
        },
    )
    return {"id": item["id"], "object": "subscription_item", "deleted": True}


def cancel_subscription(store: Store, subscription: dict, params: dict) -> dict:
    _require_live(subscription)
    now = store.now(subscription["customer"])
    if boolean(params, "invoice_now", False):
        invoice = _invoice_for(
            store, subscription, "subscription_cycle", (subscription["_period"][0], now), False
        )
        _finalize(store, invoice)
    _end(store, subscription, now, "cancellation_requested")
    return subscription


def _end(store: Store, subscription: dict, at: int, reason: str) -> None:
    subscription["status"] = "canceled"
    subscription["canceled_at"] = subscription["canceled_at"] or at
    subscription["ended_at"] = at
    subscription["cancellation_details"]["reason"] = reason
    store.emit("customer.subscription.deleted", subscription)


def list_subscriptions(store: Store, params: dict) -> list[dict]:
    subscriptions = store.all("subscription")
    status = text(params, "status")
    if status is None:
        subscriptions = [s for s in subscriptions if s["status"] != "canceled"]
    elif status != "all":
        subscriptions = [s for s in subscriptions if s["status"] == status]
    for key in ("customer", "test_clock"):
        if key in params:
            subscriptions = [s for s in subscriptions if s[key] == text(params, key)]
    if "price" in params:
        price_id = text(params, "price")
        subscriptions = [
            s for s in subscriptions if price_id in [p["id"] for p in _current_prices(store, s)]
        ]
    return subscriptions


# -- invoices ------------------------------------------------------------------------------------


def _product_name(store: Store, price: dict) -> str:
    return store.objects[price["product"]]["name"]


def _blank_invoice(store: Store, customer: dict, subscription: dict | None, reason: str) -> dict:
    now = store.now(customer["id"])
    return {
        "object": "invoice",
        "account_country": "US",
        "account_name": "Stripe sandbox",
        "account_tax_ids": None,
        "amount_due": 0,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": subscription is not None,
        "automatic_tax": {
            "enabled": False,
            "liability": None,
            "status": None,
            "disabled_reason": None,
            "provider": None,
        },
        "automatically_finalizes_at": None,
        "billing_reason": reason,
        "collection_method": subscription["collection_method"]
        if subscription
        else "charge_automatically",
        "created": now,
        "currency": subscription["currency"] if subscription else (customer["currency"] or "usd"),
        "custom_fields": None,
        "customer": customer["id"],
        "customer_account": None,
        "customer_address": None,
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "customer_phone": customer["phone"],
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": (
            {
                "quote_details": None,
                "subscription_details": {
                    "metadata": subscription["metadata"],
                    "subscription": subscription["id"],
                },
                "type": "subscription_details",
            }
            if subscription
            else None
        ),
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": now,
        "period_start": now,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "subscription": subscription["id"] if subscription else None,
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "test_clock": customer["test_clock"],
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
        "_lines": [],
        "_subscription": subscription["id"] if subscription else None,
    }


def _line(
    invoice: dict,
    price: dict | None,
    amount: int,
    quantity: Decimal,
    period: tuple[int, int],
    description: str,
    parent: dict,
) -> dict:
    whole, exact = _quantity_fields(quantity)
    return {
        "id": new_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": invoice["currency"],
        "description": description,
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice["id"],
        "livemode": False,
        "metadata": {},
        "parent": parent,
        "period": {"start": period[0], "end": period[1]},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": (
                {"price": price["id"], "product": price["product"]} if price else None
            ),
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"] if price else None,
        },
        "quantity": whole,
        "quantity_decimal": exact,
        "subscription": parent.get("_subscription"),
        "subtotal": amount,
        "taxes": [],
    }


def _item_parent(
    subscription: dict, item_id: str, invoice_item: str | None, proration: bool
) -> dict:
    return {
        "invoice_item_details": None,
        "subscription_item_details": {
            "invoice_item": invoice_item,
            "proration": proration,
            "proration_details": {"credited_items": None},
            "subscription": subscription["id"],
            "subscription_item": item_id,
        },
        "type": "subscription_item_details",
        "_subscription": subscription["id"],
    }


def _pending_items(
    store: Store, subscription: dict | None, customer_id: str | None = None
) -> list[dict]:
    customer_id = customer_id or subscription["customer"]
    return [
        ii
        for ii in store.all("invoiceitem")
        if ii["invoice"] is None
        and ii["customer"] == customer_id
        and (subscription is None or ii["_subscription"] in (None, subscription["id"]))
    ]


def _invoice_for(
    store: Store,
    subscription: dict,
    reason: str,
    metered_window: tuple[int, int],
    advance: bool,
    *,
    metered: bool = True,
    preview: bool = False,
) -> dict:
    """The subscription's invoice: metered usage in arrears over `metered_window` (when
    `metered`), licensed items in advance for the current period (when `advance`), and pending
    invoice items."""
    customer = store.objects[subscription["customer"]]
    invoice = _blank_invoice(store, customer, subscription, reason)
    invoice["id"] = new_id("upcoming_in" if preview else "in")
    invoice["period_start"], invoice["period_end"] = metered_window
    trial = subscription["trial_end"] is not None and metered_window[1] <= subscription["trial_end"]
    for item in _items_of(store, subscription):
        price = store.objects[item["price"]]
        name = _product_name(store, price)
        if _metered(price):
            if not metered:
                continue
            window = (max(metered_window[0], item["_from"]), metered_window[1])
            line = _line(
                invoice,
                price,
                0,
                Decimal(0),
                window,
                f"{'Trial period for ' if trial else ''}{name} (metered usage)",
                _item_parent(subscription, item["id"], None, False),
            )
            line["_source"] = {"item": item["id"], "price": price["id"], "trial": trial}
            invoice["_lines"].append(line)
        elif advance:
            quantity = Decimal(item["quantity"] or 0)
            amount = 0 if subscription["status"] == "trialing" else amount_for(price, quantity)
            invoice["_lines"].append(
                _line(
                    invoice,
                    price,
                    amount,
                    quantity,
                    tuple(subscription["_period"]),
                    f"{item['quantity']} × {name}",
                    _item_parent(subscription, item["id"], None, False),
                )
            )
    for invoice_item in _pending_items(store, subscription):
        invoice["_lines"].append(_invoice_item_line(store, invoice, invoice_item, preview))
    if not preview:
        store.objects[invoice["id"]] = invoice
        subscription["latest_invoice"] = invoice["id"]
    refresh(store, invoice)
    if not preview:
        store.emit("invoice.created", invoice)
    return invoice


def _invoice_item_line(store: Store, invoice: dict, invoice_item: dict, preview: bool) -> dict:
    if not preview:
        invoice_item["invoice"] = invoice["id"]
    price = store.objects.get(invoice_item["_price"]) if invoice_item["_price"] else None
    parent = {
        "invoice_item_details": {
            "invoice_item": invoice_item["id"],
            "proration": invoice_item["proration"],
            "proration_details": {"credited_items": None},
            "subscription": invoice_item["_subscription"],
        },
        "subscription_item_details": None,
        "type": "invoice_item_details",
        "_subscription": invoice_item["_subscription"],
    }
    return _line(
        invoice,
        price,
        invoice_item["amount"],
        Decimal(invoice_item["quantity_decimal"] or invoice_item["quantity"] or 1),
        (invoice_item["period"]["start"], invoice_item["period"]["end"]),
        invoice_item["description"],
        parent,
    )


def refresh(store: Store, invoice: dict) -> dict:
    """Re-price metered lines of a draft from the usage received so far; recompute totals."""
    if invoice["status"] == "draft":
        received_by = store.now(invoice["customer"])
        for line in invoice["_lines"]:
            source = line.get("_source")
            if not source:
                continue
            price = store.objects[source["price"]]
            meter = store.objects[price["recurring"]["meter"]]
            period = line["period"]
            quantity = max(
                usage(
                    store, meter, invoice["customer"], period["start"], period["end"], received_by
                ),
                Decimal(0),
            )
            line["amount"] = line["subtotal"] = (
                0 if source["trial"] else amount_for(price, quantity)
            )
            line["quantity"], line["quantity_decimal"] = _quantity_fields(quantity)
    subtotal = sum(line["amount"] for line in invoice["_lines"])
    invoice["subtotal"] = invoice["subtotal_excluding_tax"] = subtotal
    invoice["total"] = invoice["total_excluding_tax"] = subtotal
    invoice["amount_due"] = max(subtotal - invoice["pre_payment_credit_notes_amount"], 0)
    invoice["amount_remaining"] = max(invoice["amount_due"] - invoice["amount_paid"], 0)
    return invoice


def _finalize(store: Store, invoice: dict) -> dict:
    require_state(
        invoice["status"] == "draft",
        f"Invoice {invoice['id']} is {invoice['status']}; only draft invoices can be finalized.",
    )
    refresh(store, invoice)
    customer = store.objects[invoice["customer"]]
    now = store.now(customer["id"])
    invoice["number"] = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
    customer["next_invoice_sequence"] += 1
    invoice["status"] = "open"
    invoice["automatically_finalizes_at"] = None
    invoice["effective_at"] = invoice["status_transitions"]["finalized_at"] = now
    invoice["ending_balance"] = 0
    store.emit("invoice.finalized", invoice)
    subscription = store.objects.get(invoice["_subscription"] or "")
    pause = subscription["pause_collection"] if subscription else None
    if pause and pause["behavior"] == "mark_uncollectible":
        invoice["status"] = "uncollectible"
        invoice["status_transitions"]["marked_uncollectible_at"] = now
        store.emit("invoice.marked_uncollectible", invoice)
    elif pause and pause["behavior"] == "void":
        void_invoice(store, invoice)
    elif invoice["amount_due"] == 0:
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = now
        store.emit("invoice.paid", invoice)
    return invoice


def finalize_invoice(store: Store, invoice: dict) -> dict:
    return _finalize(store, invoice)


def void_invoice(store: Store, invoice: dict) -> dict:
    require_state(
        invoice["status"] in ("open", "uncollectible"),
        f"Invoice {invoice['id']} is {invoice['status']}; only open invoices can be voided.",
    )
    invoice["status"] = "void"
    invoice["amount_remaining"] = 0
    invoice["status_transitions"]["voided_at"] = store.now(invoice["customer"])
    store.emit("invoice.voided", invoice)
    return invoice


def delete_invoice(store: Store, invoice: dict) -> dict:
    require_state(
        invoice["status"] == "draft", "Only draft invoices can be deleted; void it instead."
    )
    for line in invoice["_lines"]:
        details = line["parent"].get("invoice_item_details")
        if details:
            store.objects[details["invoice_item"]]["invoice"] = None
    invoice["_deleted"] = True
    store.emit("invoice.deleted", invoice)
    return {"id": invoice["id"], "object": "invoice", "deleted": True}


def create_invoice(store: Store, params: dict) -> dict:
    customer = store.get(text(params, "customer", required=True), "customer", "customer")
    subscription = None
    if "subscription" in params:
        subscription = store.get(text(params, "subscription"), "subscription", "subscription")
    invoice = _blank_invoice(store, customer, subscription, "manual")
    invoice["id"] = new_id("in")
    invoice["description"] = text(params, "description")
    invoice["metadata"] = merge_metadata({}, mapping(params, "metadata"))
    invoice["auto_advance"] = boolean(params, "auto_advance", False)
    if invoice["auto_advance"]:
        invoice["automatically_finalizes_at"] = invoice["created"] + 3600
    if "currency" in params:
        invoice["currency"] = text(params, "currency")
    store.objects[invoice["id"]] = invoice
    behavior = choice(params, "pending_invoice_items_behavior", ("include", "exclude"), "exclude")
    if behavior == "include":
        for invoice_item in _pending_items(store, subscription, customer["id"]):
            invoice["_lines"].append(_invoice_item_line(store, invoice, invoice_item, False))
    refresh(store, invoice)
    store.emit("invoice.created", invoice)
    return invoice


def update_invoice(store: Store, invoice: dict, params: dict) -> dict:
    require_state(invoice["status"] == "draft", "Only draft invoices can be updated.")
    if "description" in params:
        invoice["description"] = text(params, "description")
    if "auto_advance" in params:
        invoice["auto_advance"] = boolean(params, "auto_advance")
        if not invoice["auto_advance"]:
            invoice["automatically_finalizes_at"] = None
    invoice["metadata"] = merge_metadata(invoice["metadata"], mapping(params, "metadata"))
    store.emit("invoice.updated", invoice)
    return invoice


def list_invoices(store: Store, params: dict) -> list[dict]:
    invoices = store.all("invoice")
    for key in ("customer", "status"):
        if key in params:
            invoices = [i for i in invoices if i[key] == text(params, key)]
    if "subscription" in params:
        invoices = [i for i in invoices if i["_subscription"] == text(params, "subscription")]
    for invoice in invoices:
        refresh(store, invoice)
    return invoices


def preview_invoice(store: Store, params: dict) -> dict:
    """What the subscription's next invoice would be if its period ended now."""
    subscription_id = text(params, "subscription")
    customer_id = text(params, "customer")
    if subscription_id is None:
        if customer_id is None:
            raise missing("subscription")
        live = [
            s
            for s in store.all("subscription")
            if s["customer"] == customer_id and s["status"] in LIVE_STATUSES
        ]
        if not live:
            raise StripeError(
                f"Customer {customer_id} has no upcoming invoice: no live subscription.",
                status=404,
                code="invoice_upcoming_none",
            )
        subscription = live[-1]
    else:
        subscription = store.get(subscription_id, "subscription", "subscription")
    _require_live(subscription)
    start, end = subscription["_period"]
    invoice = _invoice_for(
        store, subscription, "subscription_cycle", (start, end), True, preview=True
    )
    return invoice


# -- invoice items and credit notes --------------------------------------------------------------


def create_invoice_item(store: Store, params: dict, proration: bool = False) -> dict:
    customer = store.get(text(params, "customer", required=True), "customer", "customer")
    now = store.now(customer["id"])
    pricing = mapping(params, "pricing")
    price = (
        store.get(text(pricing, "price"), "price", "pricing[price]") if "price" in pricing else None
    )
    quantity = Decimal(text(params, "quantity_decimal") or text(params, "quantity") or "1")
    if price is not None:
        amount = amount_for(price, max(quantity, Decimal(0)))
        currency = price["currency"]
    else:
        amount = integer(params, "amount")
        if amount is None:
            raise missing("amount")
        currency = text(params, "currency", default="usd")
    period = mapping(params, "period")
    invoice = None
    if "invoice" in params:
        invoice = store.get(text(params, "invoice"), "invoice", "invoice")
        require_state(
            invoice["status"] == "draft",
            "Invoice items can only be added to draft invoices.",
            "invoice",
        )
    whole, exact = _quantity_fields(quantity)
    subscription_id = text(params, "subscription")
    invoice_item = store.add(
        "ii",
        {
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer["id"],
            "customer_account": None,
            "date": now,
            "description": text(
                params,
                "description",
                default=(_product_name(store, price) if price else "Invoice item"),
            ),
            "discountable": not proration,
            "discounts": [],
            "invoice": None,
            "metadata": merge_metadata({}, mapping(params, "metadata")),
            "net_amount": amount,
            "parent": (
                {
                    "subscription_details": {"subscription": subscription_id},
                    "type": "subscription_details",
                }
                if subscription_id
                else None
            ),
            "period": {
                "start": int(period.get("start", now)),
                "end": int(period.get("end", now)),
            },
            "pricing": {
                "price_details": {"price": price["id"], "product": price["product"]}
                if price
                else None,
                "type": "price_details",
                "unit_amount_decimal": price["unit_amount_decimal"] if price else None,
            },
            "proration": proration,
            "quantity": whole if whole is not None else 1,
            "quantity_decimal": exact,
            "tax_rates": [],
            "test_clock": customer["test_clock"],
            "_price": price["id"] if price else None,
            "_subscription": subscription_id,
        },
    )
    if invoice is not None:
        invoice["_lines"].append(_invoice_item_line(store, invoice, invoice_item, False))
        refresh(store, invoice)
    store.emit("invoiceitem.created", invoice_item)
    return invoice_item


def delete_invoice_item(store: Store, invoice_item: dict) -> dict:
    invoice = store.objects.get(invoice_item["invoice"] or "")
    require_state(
        invoice is None or invoice["status"] == "draft",
        "This invoice item is on a finalized invoice and cannot be deleted.",
    )
    if invoice is not None:
        invoice["_lines"] = [
            line
            for line in invoice["_lines"]
            if (line["parent"].get("invoice_item_details") or {}).get("invoice_item")
            != invoice_item["id"]
        ]
        refresh(store, invoice)
    invoice_item["_deleted"] = True
    store.emit("invoiceitem.deleted", invoice_item)
    return {"id": invoice_item["id"], "object": "invoiceitem", "deleted": True}


def create_credit_note(store: Store, params: dict) -> dict:
    invoice = store.get(text(params, "invoice", required=True), "invoice", "invoice")
    require_state(
        invoice["status"] in ("open", "paid"),
        f"Invoice {invoice['id']} is {invoice['status']}; credit notes need a finalized, "
        "unvoided invoice.",
        "invoice",
    )
    now = store.now(invoice["customer"])
    credit_note = {"object": "credit_note", "id": new_id("cn")}
    lines = []
    for index, entry in enumerate(listing(params, "lines")):
        kind = choice(
            entry,
            "type",
            ("invoice_line_item", "custom_line_item"),
            required_as=f"lines[{index}][type]",
        )
        if kind == "invoice_line_item":
            line_id = text(entry, "invoice_line_item", required=True)
            target = next((line for line in invoice["_lines"] if line["id"] == line_id), None)
            if target is None:
                raise param_error(
                    f"lines[{index}][invoice_line_item]",
                    f"No such line: '{line_id}' on {invoice['id']}.",
                )
            amount = integer(entry, "amount", default=target["amount"])
            unit = None
        else:
            unit = integer(entry, "unit_amount", required=True)
            amount = unit * integer(entry, "quantity", default=1)
        lines.append(
            {
                "id": new_id("cnli"),
                "object": "credit_note_line_item",
                "amount": amount,
                "description": text(entry, "description"),
                "discount_amount": 0,
                "discount_amounts": [],
                "invoice_line_item": text(entry, "invoice_line_item"),
                "livemode": False,
                "metadata": None,
                "pretax_credit_amounts": [],
                "quantity": integer(entry, "quantity", default=1),
                "tax_rates": [],
                "taxes": [],
                "type": kind,
                "unit_amount": unit,
                "unit_amount_decimal": str(unit) if unit is not None else None,
            }
        )
    total = sum(line["amount"] for line in lines) if lines else integer(params, "amount")
    if total is None:
        raise missing("lines")
    pre_payment = invoice["status"] == "open"
    limit = (
        invoice["amount_remaining"]
        if pre_payment
        else invoice["amount_paid"] - invoice["post_payment_credit_notes_amount"]
    )
    if not 0 < total <= max(limit, 0) and not (invoice["total"] == 0 and total == 0):
        raise param_error(
            "amount",
            f"The credit note total {total} must be positive and at most {limit}, what is left "
            f"to credit on invoice {invoice['id']}.",
        )
    customer = store.objects[invoice["customer"]]
    credit_note.update(
        {
            "amount": total,
            "amount_shipping": 0,
            "created": now,
            "currency": invoice["currency"],
            "customer": customer["id"],
            "customer_account": None,
            "customer_balance_transaction": None,
            "discount_amount": 0,
            "discount_amounts": [],
            "effective_at": now,
            "invoice": invoice["id"],
            "lines": {
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/credit_notes/{credit_note['id']}/lines",
            },
            "livemode": False,
            "memo": text(params, "memo"),
            "metadata": merge_metadata({}, mapping(params, "metadata")),
            "number": f"{invoice['number']}-CN-{_credit_note_count(store, invoice) + 1:02d}",
            "out_of_band_amount": None,
            "pdf": "",
            "post_payment_amount": 0 if pre_payment else total,
            "pre_payment_amount": total if pre_payment else 0,
            "pretax_credit_amounts": [],
            "reason": choice(
                params,
                "reason",
                ("duplicate", "fraudulent", "order_change", "product_unsatisfactory"),
            ),
            "refunds": [],
            "shipping_cost": None,
            "status": "issued",
            "subtotal": total,
            "subtotal_excluding_tax": total,
            "total": total,
            "total_excluding_tax": total,
            "total_taxes": [],
            "type": "pre_payment" if pre_payment else "post_payment",
            "voided_at": None,
        }
    )
    store.objects[credit_note["id"]] = credit_note
    if pre_payment:
        invoice["pre_payment_credit_notes_amount"] += total
        refresh(store, invoice)
        if invoice["amount_remaining"] == 0:
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now
            store.emit("invoice.paid", invoice)
    else:
        invoice["post_payment_credit_notes_amount"] += total
        customer["balance"] -= total
    store.emit("credit_note.created", credit_note)
    return credit_note


def _credit_note_count(store: Store, invoice: dict) -> int:
    return sum(1 for note in store.all("credit_note") if note["invoice"] == invoice["id"])


# -- the scheduler -------------------------------------------------------------------------------


def _due_actions(store: Store, clock_id: str | None) -> list[tuple[int, int, str, dict]]:
    actions = []
    for subscription in store.all("subscription"):
        if subscription["test_clock"] != clock_id or subscription["status"] not in LIVE_STATUSES:
            continue
        actions.append((subscription["_period"][1], 2, "renew", subscription))
        if subscription["cancel_at"]:
            actions.append((subscription["cancel_at"], 1, "cancel_at", subscription))
        pause = subscription["pause_collection"]
        if pause and pause["resumes_at"]:
            actions.append((pause["resumes_at"], 1, "resume", subscription))
    for invoice in store.all("invoice"):
        if (
            invoice["test_clock"] == clock_id
            and invoice["status"] == "draft"
            and invoice["automatically_finalizes_at"]
        ):
            actions.append((invoice["automatically_finalizes_at"], 0, "finalize", invoice))
    return actions


def run_due(store: Store, clock: dict | None, until: int) -> None:
    """Run, in time order, every period end, cancellation and finalization due by `until`."""
    clock_id = clock["id"] if clock else None
    while True:
        due = [action for action in _due_actions(store, clock_id) if action[0] <= until]
        if not due:
            return
        at, _, kind, obj = min(due, key=lambda action: (action[0], action[1]))
        if clock:
            clock["frozen_time"] = max(clock["frozen_time"], at)
        if kind == "finalize":
            _finalize(store, obj)
        elif kind == "renew":
            _renew(store, obj, at)
        elif kind == "cancel_at":
            invoice = _invoice_for(store, obj, "subscription_cycle", (obj["_period"][0], at), False)
            _schedule_finalization(store, obj, invoice, at)
            _end(store, obj, at, "cancellation_requested")
        else:
            before = store.render(obj)
            obj["pause_collection"] = None
            store.emit_update("customer.subscription.updated", obj, before)


def _schedule_finalization(store: Store, subscription: dict, invoice: dict, at: int) -> None:
    pause = subscription["pause_collection"]
    if not (pause and pause["behavior"] == "keep_as_draft"):
        invoice["automatically_finalizes_at"] = at + store.finalization_grace_seconds


def _renew(store: Store, subscription: dict, at: int) -> None:
    before = store.render(subscription)
    start, end = subscription["_period"]
    ending = subscription["cancel_at_period_end"]
    if subscription["status"] == "trialing" and subscription["trial_end"] == end:
        subscription["status"] = "active"
    interval, count = subscription["_interval"]
    anchor = subscription["billing_cycle_anchor"]
    next_end = anchor if anchor > end else period_containing(anchor, interval, count, end)[1]
    if not ending:
        _set_period(store, subscription, end, next_end)
    invoice = _invoice_for(store, subscription, "subscription_cycle", (start, end), not ending)
    _schedule_finalization(store, subscription, invoice, at)
    if ending:
        _end(store, subscription, at, "cancellation_requested")
    else:
        store.emit_update("customer.subscription.updated", subscription, before)


def advance_clock(store: Store, clock: dict, params: dict) -> tuple[dict, int]:
    target = integer(params, "frozen_time", required=True)
    require_state(
        clock["status"] == "ready",
        f"Test clock {clock['id']} is already advancing; wait until its status is ready.",
    )
    if target <= clock["frozen_time"]:
        raise param_error(
            "frozen_time",
            f"Test clocks only move forward: {target} is not after the current frozen_time "
            f"{clock['frozen_time']}.",
        )
    clock["status"] = "advancing"
    clock["status_details"] = {"advancing": {"target_frozen_time": target}}
    store.emit("test_helpers.test_clock.advancing", clock)
    return clock, target


def finish_advance(store: Store, clock: dict, target: int) -> None:
    with store.lock:
        run_due(store, clock, target)
        clock["frozen_time"] = target
        clock["status"] = "ready"
        clock["status_details"] = {}
        store.emit("test_helpers.test_clock.ready", clock)
