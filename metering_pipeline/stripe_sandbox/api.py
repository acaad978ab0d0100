"""The Stripe routes the sandbox serves: one table from (method, path) to a handler.

A handler takes (store, params, **path ids) and returns a stored object (rendered with the
request's `expand[]`) or an already-shaped body (lists, deletion stubs).
"""

from __future__ import annotations

import threading

from . import billing, catalog, metering
from .params import listing, text
from .store import Store


def _retrieve(kind: str):
    return lambda store, params, id: store.get(id, kind)


def _listed(objects_of, url: str):
    return lambda store, params: store.page(objects_of(store, params), params, url)


def _all(kind: str):
    return lambda store, params: store.all(kind)


def _on(kind: str, action):
    """A handler that loads the object named in the path, then applies `action` to it."""
    return lambda store, params, id: action(store, store.get(id, kind), params)


def _search(store: Store, params: dict) -> dict:
    found = catalog.search_customers(store, params)
    page = store.page(found, {"limit": params.get("limit", "10")}, "/v1/customers/search")
    return {**page, "object": "search_result", "next_page": None, "total_count": len(found)}


def _items(store: Store, params: dict) -> list[dict]:
    subscription = store.get(
        text(params, "subscription", required=True), "subscription", "subscription"
    )
    return [store.objects[item_id] for item_id in subscription["_items"]]


def _lines(store: Store, params: dict, id: str) -> dict:
    invoice = billing.refresh(store, store.get(id, "invoice"))
    return _plain_page(store, invoice["_lines"], params, f"/v1/invoices/{id}/lines")


def _plain_page(store: Store, rows: list[dict], params: dict, url: str) -> dict:
    # Stripe lists invoice lines and summaries in their natural order, not newest first.
    return store.page(list(reversed(rows)), params, url)


def _summaries(store: Store, params: dict, id: str) -> dict:
    meter = store.get(id, "billing.meter")
    rows = metering.event_summaries(store, meter, params)
    return _plain_page(store, rows, params, f"/v1/billing/meters/{id}/event_summaries")


def _events(store: Store, params: dict) -> dict:
    events = store.events
    types = listing(params, "types") or ([text(params, "type")] if "type" in params else [])
    if types:
        events = [
            event
            for event in events
            if any(
                event["type"] == wanted
                or (wanted.endswith("*") and event["type"].startswith(wanted[:-1]))
                for wanted in types
            )
        ]
    return store.page(events, params, "/v1/events")


def _advance(store: Store, params: dict, id: str) -> dict:
    clock, target = billing.advance_clock(store, store.get(id, "test_helpers.test_clock"), params)

    def finish() -> None:
        with store.lock:  # saved before any request can see the clock `ready`
            billing.finish_advance(store, clock, target)
            store.changed()

    threading.Thread(target=finish, daemon=True).start()
    return clock


ROUTES: list[tuple[str, str, object]] = [
    # products
    ("POST", "/v1/products", lambda s, p: catalog.create_product(s, p)),
    ("GET", "/v1/products", _listed(lambda s, p: s.all("product"), "/v1/products")),
    ("GET", "/v1/products/{id}", _retrieve("product")),
    ("POST", "/v1/products/{id}", _on("product", catalog.update_product)),
    ("DELETE", "/v1/products/{id}", _on("product", lambda s, o, p: catalog.delete_product(s, o))),
    # prices
    ("POST", "/v1/prices", lambda s, p: catalog.create_price(s, p)),
    ("GET", "/v1/prices", _listed(catalog.list_prices, "/v1/prices")),
    ("GET", "/v1/prices/{id}", _retrieve("price")),
    ("POST", "/v1/prices/{id}", _on("price", catalog.update_price)),
    # customers
    ("POST", "/v1/customers", lambda s, p: catalog.create_customer(s, p)),
    ("GET", "/v1/customers", _listed(catalog.list_customers, "/v1/customers")),
    ("GET", "/v1/customers/search", _search),
    ("GET", "/v1/customers/{id}", _retrieve("customer")),
    ("POST", "/v1/customers/{id}", _on("customer", catalog.update_customer)),
    (
        "DELETE",
        "/v1/customers/{id}",
        _on("customer", lambda s, o, p: catalog.delete_customer(s, o)),
    ),
    # billing meters, meter events, adjustments, summaries
    ("POST", "/v1/billing/meters", lambda s, p: catalog.create_meter(s, p)),
    (
        "GET",
        "/v1/billing/meters",
        _listed(
            lambda s, p: [
                m for m in s.all("billing.meter") if "status" not in p or m["status"] == p["status"]
            ],
            "/v1/billing/meters",
        ),
    ),
    ("GET", "/v1/billing/meters/{id}", _retrieve("billing.meter")),
    ("POST", "/v1/billing/meters/{id}", _on("billing.meter", catalog.update_meter)),
    (
        "POST",
        "/v1/billing/meters/{id}/deactivate",
        _on("billing.meter", lambda s, o, p: catalog.set_meter_status(s, o, False)),
    ),
    (
        "POST",
        "/v1/billing/meters/{id}/reactivate",
        _on("billing.meter", lambda s, o, p: catalog.set_meter_status(s, o, True)),
    ),
    ("GET", "/v1/billing/meters/{id}/event_summaries", _summaries),
    ("POST", "/v1/billing/meter_events", lambda s, p: metering.record_meter_event(s, p)),
    (
        "POST",
        "/v1/billing/meter_event_adjustments",
        lambda s, p: metering.cancel_meter_event(s, p),
    ),
    ("POST", "/v2/billing/meter_event_session", lambda s, p: metering.create_session(s)),
    ("POST", "/v2/billing/meter_event_stream", lambda s, p: metering.stream_events(s, p)),
    ("POST", "/v2/billing/meter_events", lambda s, p: metering.create_v2_event(s, p)),
    (
        "POST",
        "/v2/billing/meter_event_adjustments",
        lambda s, p: metering.cancel_v2_event(s, p),
    ),
    # subscriptions and items
    ("POST", "/v1/subscriptions", lambda s, p: billing.create_subscription(s, p)),
    ("GET", "/v1/subscriptions", _listed(billing.list_subscriptions, "/v1/subscriptions")),
    ("GET", "/v1/subscriptions/{id}", _retrieve("subscription")),
    ("POST", "/v1/subscriptions/{id}", _on("subscription", billing.update_subscription)),
    ("DELETE", "/v1/subscriptions/{id}", _on("subscription", billing.cancel_subscription)),
    ("POST", "/v1/subscription_items", lambda s, p: billing.create_item(s, p)),
    ("GET", "/v1/subscription_items", _listed(_items, "/v1/subscription_items")),
    ("GET", "/v1/subscription_items/{id}", _retrieve("subscription_item")),
    ("POST", "/v1/subscription_items/{id}", _on("subscription_item", billing.update_item)),
    ("DELETE", "/v1/subscription_items/{id}", _on("subscription_item", billing.delete_item)),
    # invoices, invoice items, credit notes
    ("POST", "/v1/invoices", lambda s, p: billing.create_invoice(s, p)),
    ("POST", "/v1/invoices/create_preview", lambda s, p: billing.preview_invoice(s, p)),
    ("GET", "/v1/invoices", _listed(billing.list_invoices, "/v1/invoices")),
    ("GET", "/v1/invoices/{id}", lambda s, p, id: billing.refresh(s, s.get(id, "invoice"))),
    ("POST", "/v1/invoices/{id}", _on("invoice", billing.update_invoice)),
    ("DELETE", "/v1/invoices/{id}", _on("invoice", lambda s, o, p: billing.delete_invoice(s, o))),
    ("GET", "/v1/invoices/{id}/lines", _lines),
    (
        "POST",
        "/v1/invoices/{id}/finalize",
        _on("invoice", lambda s, o, p: billing.finalize_invoice(s, o)),
    ),
    ("POST", "/v1/invoices/{id}/void", _on("invoice", lambda s, o, p: billing.void_invoice(s, o))),
    ("POST", "/v1/invoiceitems", lambda s, p: billing.create_invoice_item(s, p)),
    (
        "GET",
        "/v1/invoiceitems",
        _listed(
            lambda s, p: [
                i
                for i in s.all("invoiceitem")
                if ("customer" not in p or i["customer"] == p["customer"])
                and ("invoice" not in p or i["invoice"] == p["invoice"])
                and ("pending" not in p or (i["invoice"] is None) == (p["pending"] == "true"))
            ],
            "/v1/invoiceitems",
        ),
    ),
    ("GET", "/v1/invoiceitems/{id}", _retrieve("invoiceitem")),
    (
        "DELETE",
        "/v1/invoiceitems/{id}",
        _on("invoiceitem", lambda s, o, p: billing.delete_invoice_item(s, o)),
    ),
    ("POST", "/v1/credit_notes", lambda s, p: billing.create_credit_note(s, p)),
    (
        "GET",
        "/v1/credit_notes",
        _listed(
            lambda s, p: [
                c
                for c in s.all("credit_note")
                if "invoice" not in p or c["invoice"] == p["invoice"]
            ],
            "/v1/credit_notes",
        ),
    ),
    ("GET", "/v1/credit_notes/{id}", _retrieve("credit_note")),
    # test clocks
    ("POST", "/v1/test_helpers/test_clocks", lambda s, p: catalog.create_clock(s, p)),
    (
        "GET",
        "/v1/test_helpers/test_clocks",
        _listed(lambda s, p: s.all("test_helpers.test_clock"), "/v1/test_helpers/test_clocks"),
    ),
    ("GET", "/v1/test_helpers/test_clocks/{id}", _retrieve("test_helpers.test_clock")),
    (
        "DELETE",
        "/v1/test_helpers/test_clocks/{id}",
        _on("test_helpers.test_clock", lambda s, o, p: catalog.delete_clock(s, o)),
    ),
    ("POST", "/v1/test_helpers/test_clocks/{id}/advance", _advance),
    # events
    ("GET", "/v1/events", _events),
    ("GET", "/v1/events/{id}", _retrieve("event")),
    ("GET", "/v2/core/events", lambda s, p: metering.list_v2_events(s, p)),
    ("GET", "/v2/core/events/{id}", metering.retrieve_v2_event),
]
