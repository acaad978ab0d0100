"""Stripe objects (the SDK's, made plain dicts by ``to_dict()``) into ``billing`` catalog values.

Field names follow API 2026-10-28.endive: invoices and lines point to their subscription through
``parent``; a metered price names its meter in ``recurring.meter``; ``billing_mode.type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from metering_pipeline.billing.catalog import (
    Customer,
    Invoice,
    InvoiceLine,
    Meter,
    Price,
    StripeEvent,
    Subscription,
    SubscriptionItem,
    Tier,
)
from metering_pipeline.billing.meter_errors import MeterErrorReport, MeterEventError

Obj = Mapping[str, Any]


def moment(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def customer(obj: Obj) -> Customer:
    return Customer(
        id=obj["id"],
        metadata=dict(obj.get("metadata") or {}),
        test_clock=_id(obj.get("test_clock")),
        email=obj.get("email"),
    )


def meter(obj: Obj) -> Meter:
    window = obj.get("event_time_window")
    return Meter(
        id=obj["id"],
        event_name=obj["event_name"],
        display_name=obj.get("display_name") or obj["event_name"],
        formula=obj["default_aggregation"]["formula"],
        event_time_window=window or None,
        status=obj.get("status") or "active",
    )


def price(obj: Obj) -> Price:
    recurring = obj.get("recurring") or {}
    transform = obj.get("transform_quantity") or {}
    return Price(
        id=obj["id"],
        product_id=_id(obj.get("product")) or "",
        currency=obj["currency"],
        billing_scheme=obj.get("billing_scheme") or "per_unit",
        unit_amount_decimal=_decimal(obj.get("unit_amount_decimal"), obj.get("unit_amount")),
        tiers_mode=obj.get("tiers_mode"),
        tiers=tuple(_tier(tier) for tier in obj.get("tiers") or ()),
        transform_divide_by=transform.get("divide_by"),
        transform_round=transform.get("round"),
        meter_id=recurring.get("meter"),
        usage_type=recurring.get("usage_type"),
        interval=recurring.get("interval") or "month",
        interval_count=recurring.get("interval_count") or 1,
    )


def _tier(obj: Obj) -> Tier:
    unit = _decimal(obj.get("unit_amount_decimal"), obj.get("unit_amount"))
    flat = _decimal(obj.get("flat_amount_decimal"), obj.get("flat_amount"))
    return Tier(obj.get("up_to"), unit or Decimal(0), flat or Decimal(0))


def subscription(obj: Obj, items: list[Obj], prices: Mapping[str, Price]) -> Subscription:
    """``items`` are all the subscription's items (the embedded list holds only the first page);
    ``prices`` supplies each item's price with its tiers, which an embedded price lacks."""
    customer_id = _id(obj["customer"]) or ""
    mode = (obj.get("billing_mode") or {}).get("type") or "flexible"
    return Subscription(
        id=obj["id"],
        customer_id=customer_id,
        status=obj["status"],
        billing_mode=mode,
        billing_cycle_anchor=moment(obj["billing_cycle_anchor"]),
        created=moment(obj["created"]),
        items=tuple(
            SubscriptionItem(
                id=item["id"],
                subscription_id=obj["id"],
                customer_id=customer_id,
                price=prices.get(item["price"]["id"]) or price(item["price"]),
                created=moment(item["created"]),
                current_period_start=moment(item["current_period_start"]),
                current_period_end=moment(item["current_period_end"]),
            )
            for item in items
        ),
        canceled_at=moment(obj.get("canceled_at")),
        ended_at=moment(obj.get("ended_at")),
        test_clock=_id(obj.get("test_clock")),
    )


def event(obj: Obj) -> StripeEvent:
    data = obj["data"]
    previous = data.get("previous_attributes")
    return StripeEvent(
        id=obj["id"],
        type=obj["type"],
        created=moment(obj["created"]),
        data_object=_json_safe(data["object"]),
        previous_attributes=_json_safe(previous) if previous is not None else None,
    )


def meter_error_report(obj: Obj) -> MeterErrorReport:
    """A v2 ``v1.billing.meter.error_report_triggered`` / ``no_meter_found`` event (the SDK's
    typed event, as a dict). Stripe's API reference names the failed event in
    ``sample_errors[].request.identifier``; the usage guide's example shows
    ``request.idempotency_key`` instead: either is read, here and nowhere else."""
    data = obj.get("data") or {}
    reason = data.get("reason") or {}
    counts, errors = [], []
    for error_type in reason.get("error_types") or ():
        code = error_type.get("code") or "unknown"
        counts.append((code, int(error_type.get("error_count") or 0)))
        for sample in error_type.get("sample_errors") or ():
            request = sample.get("request") or {}
            identifier = request.get("identifier") or request.get("idempotency_key") or None
            errors.append(MeterEventError(code, sample.get("error_message") or "", identifier))
    return MeterErrorReport(
        id=obj["id"],
        type=obj["type"],
        created=_iso(obj["created"]),
        meter_id=(obj.get("related_object") or {}).get("id"),
        summary=data.get("developer_message_summary") or "",
        validation_start=_iso(data.get("validation_start")),
        validation_end=_iso(data.get("validation_end")),
        error_count=int(reason.get("error_count") or sum(count for _, count in counts)),
        counts=tuple(counts),
        errors=tuple(errors),
    )


def _iso(value: str | None) -> datetime | None:
    """A v2 timestamp (RFC 3339, ``Z``) as an aware datetime."""
    return None if not value else datetime.fromisoformat(value.replace("Z", "+00:00"))


def invoice(obj: Obj, lines: list[Obj]) -> Invoice:
    """``lines`` are all the invoice's lines (the embedded list holds only the first page)."""
    parent = obj.get("parent") or {}
    subscription_id = (parent.get("subscription_details") or {}).get("subscription")
    return Invoice(
        id=obj.get("id"),
        customer_id=_id(obj["customer"]) or "",
        subscription_id=_id(subscription_id or obj.get("subscription")),
        status=obj.get("status"),
        currency=obj["currency"],
        subtotal=obj["subtotal"],
        total=obj["total"],
        period_start=moment(obj["period_start"]),
        period_end=moment(obj["period_end"]),
        lines=tuple(invoice_line(line) for line in lines),
        created=moment(obj.get("created")),
        automatically_finalizes_at=moment(obj.get("automatically_finalizes_at")),
    )


def invoice_line(obj: Obj) -> InvoiceLine:
    parent = obj.get("parent") or {}
    item_details = parent.get("subscription_item_details") or {}
    invoice_item_details = parent.get("invoice_item_details") or {}
    price_details = (obj.get("pricing") or {}).get("price_details") or {}
    quantity = obj.get("quantity_decimal") or obj.get("quantity")
    return InvoiceLine(
        id=obj["id"],
        amount=obj["amount"],
        currency=obj["currency"],
        quantity=None if quantity is None else Decimal(str(quantity)),
        period_start=moment(obj["period"]["start"]),
        period_end=moment(obj["period"]["end"]),
        subscription_item_id=_id(item_details.get("subscription_item")),
        price_id=_id(price_details.get("price")),
        invoice_item_id=_id(
            invoice_item_details.get("invoice_item") or item_details.get("invoice_item")
        ),
        description=obj.get("description"),
    )


def _id(value: Any) -> str | None:
    """An id, whether Stripe sent it bare or as an expanded object."""
    if value is None or isinstance(value, str):
        return value
    return value["id"]


def _decimal(text: str | None, whole: int | None) -> Decimal | None:
    if text is not None:
        return Decimal(str(text))
    return None if whole is None else Decimal(whole)


def _json_safe(value: Any) -> Any:
    """The SDK parses ``*_decimal`` fields into Decimal; events are stored as JSON, so keep text."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return str(value) if isinstance(value, Decimal) else value
