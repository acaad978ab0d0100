"""Meter events (v1 and the v2 session/stream), adjustments, event summaries, and usage sums."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from decimal import Decimal

from .errors import StripeError, missing, param_error
from .params import choice, decimal, integer, mapping, text
from .store import Store, new_id

IDENTIFIER_TTL = 24 * 3600
ADJUSTMENT_WINDOW = 24 * 3600
MAX_AGE = 35 * 86400
MAX_AHEAD = 5 * 60
SESSION_TTL = 15 * 60
STREAM_BATCH = 100
WINDOW_SECONDS = {"hour": 3600, "day": 86400}


def active_meter(store: Store, event_name: str) -> dict:
    for meter in store.all("billing.meter"):
        if meter["event_name"] == event_name and meter["status"] == "active":
            return meter
    raise param_error(
        "event_name",
        f"No active meter found with event_name '{event_name}'. Create a billing meter with this "
        "event_name, or reactivate it.",
        "resource_missing",
    )


def record_meter_event(store: Store, params: dict) -> dict:
    """Validate and store one meter event, as `POST /v1/billing/meter_events` does."""
    event_name = text(params, "event_name", required=True)
    meter = active_meter(store, event_name)
    payload = mapping(params, "payload")
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    customer_id = text(payload, customer_key)
    if customer_id is None:
        raise missing(f"payload[{customer_key}]")
    customer = store.objects.get(customer_id)
    if not customer or customer.get("object") != "customer" or customer.get("_deleted"):
        raise param_error(
            f"payload[{customer_key}]",
            f"No such customer: '{customer_id}'. Meter events must name an existing customer.",
            "resource_missing",
        )
    now = store.now(customer_id)
    value = decimal(payload, value_key, default=Decimal(1))
    if len(value.normalize().as_tuple().digits) > 15:
        raise param_error(f"payload[{value_key}]", "Values are limited to 15 significant digits.")
    timestamp = integer(params, "timestamp", default=now)
    if timestamp < now - MAX_AGE:
        raise param_error(
            "timestamp",
            f"The timestamp {timestamp} is more than 35 days before the current time {now}; "
            "Stripe no longer accepts usage that old.",
        )
    if timestamp > now + MAX_AHEAD:
        raise param_error(
            "timestamp",
            f"The timestamp {timestamp} is more than 5 minutes after the current time {now}.",
        )
    identifier = text(params, "identifier") or secrets.token_hex(16)
    if len(identifier) > 100:
        raise param_error("identifier", "The identifier must be at most 100 characters.")
    previous = store.meter_event_ids.get(identifier)
    if previous and previous["_received"] > now - IDENTIFIER_TTL:
        raise StripeError(
            f"An event already exists with identifier {identifier}.",
            param="identifier",
            code="duplicate_meter_event",
            should_retry=False,
        )
    event = {
        "object": "billing.meter_event",
        "created": now,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": {key: str(val) for key, val in payload.items()},
        "timestamp": timestamp,
        "_customer": customer_id,
        "_value": value,
        "_received": now,
        "_canceled": False,
    }
    store.meter_events.append(event)
    store.meter_event_ids[identifier] = event
    return event


def cancel_meter_event(store: Store, params: dict) -> dict:
    event_name = text(params, "event_name", required=True)
    if choice(params, "type", ("cancel",), "cancel") != "cancel":
        raise param_error("type", "Only type=cancel is supported.")
    identifier = text(mapping(params, "cancel"), "identifier")
    if identifier is None:
        raise missing("cancel[identifier]")
    event = store.meter_event_ids.get(identifier)
    if event is None or event["event_name"] != event_name:
        raise param_error(
            "cancel[identifier]",
            f"No meter event with identifier '{identifier}' for event_name '{event_name}'.",
            "resource_missing",
        )
    if store.now(event["_customer"]) - event["_received"] > ADJUSTMENT_WINDOW:
        raise param_error(
            "cancel[identifier]",
            f"The meter event '{identifier}' was received more than 24 hours ago and can no "
            "longer be canceled; send a negative correction instead.",
        )
    event["_canceled"] = True
    return {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": False,
        "status": "complete",
        "type": "cancel",
    }


def aggregate(meter: dict, events: list[dict]) -> Decimal:
    """Apply the meter's formula; with an `event_time_window`, the last event of a window wins."""
    if meter["event_time_window"]:
        size = WINDOW_SECONDS[meter["event_time_window"]]
        last_per_window: dict[int, dict] = {}
        for event in sorted(events, key=lambda e: e["timestamp"]):
            last_per_window[event["timestamp"] // size] = event
        events = list(last_per_window.values())
    formula = meter["default_aggregation"]["formula"]
    if formula == "count":
        return Decimal(len(events))
    if formula == "last":
        return max(events, key=lambda e: e["timestamp"])["_value"] if events else Decimal(0)
    return sum((event["_value"] for event in events), Decimal(0))


def usage(
    store: Store,
    meter: dict,
    customer_id: str,
    start: int,
    end: int,
    received_before: int | None = None,
) -> Decimal:
    """The meter's value for a customer over [start, end), counting only events received by
    `received_before` (Stripe bills what it has received when it prices a line)."""
    events = [
        event
        for event in store.meter_events
        if event["event_name"] == meter["event_name"]
        and event["_customer"] == customer_id
        and not event["_canceled"]
        and start <= event["timestamp"] < end
        and (received_before is None or event["_received"] <= received_before)
    ]
    return aggregate(meter, events)


def event_summaries(store: Store, meter: dict, params: dict) -> list[dict]:
    customer_id = text(params, "customer", required=True)
    store.get(customer_id, "customer", "customer")
    start = integer(params, "start_time", required=True)
    end = integer(params, "end_time", required=True)
    grouping = choice(params, "value_grouping_window", ("hour", "day"))
    step = {"hour": 3600, "day": 86400, None: 60}[grouping]
    for name, instant in (("start_time", start), ("end_time", end)):
        if instant % step:
            unit = {"hour": "an hour boundary", "day": "00:00 UTC", None: "a minute boundary"}
            raise param_error(name, f"{name} must be aligned to {unit[grouping]}.")
    if end <= start:
        raise param_error("end_time", "end_time must be after start_time.")
    windows = (
        [(start, end)]
        if grouping is None
        else [(left, min(left + step, end)) for left in range(start, end, step)]
    )
    summaries = []
    for left, right in windows:
        value = usage(store, meter, customer_id, left, right)
        summaries.append(
            {
                # stable ids, so `starting_after` pages through a long series of windows
                "id": "mtrusg_"
                + hashlib.sha256(
                    f"{meter['id']}|{customer_id}|{left}|{right}".encode()
                ).hexdigest()[:24],
                "object": "billing.meter_event_summary",
                "aggregated_value": int(value)
                if value == value.to_integral_value()
                else float(value),
                "end_time": right,
                "livemode": False,
                "meter": meter["id"],
                "start_time": left,
            }
        )
    return summaries


# -- v2: meter event session and stream ---------------------------------------------------------


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _from_iso(value: str, param: str) -> int:
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise param_error(param, f"Invalid timestamp {value!r}: use ISO 8601.") from None


def create_session(store: Store) -> dict:
    now = store.now()
    token = f"ek_test_{secrets.token_urlsafe(32)}"
    session = {
        "id": new_id("mes"),
        "object": "v2.billing.meter_event_session",
        "authentication_token": token,
        "created": _iso(now),
        "expires_at": _iso(now + SESSION_TTL),
        "livemode": False,
    }
    store.sessions[token] = {"expires_at": now + SESSION_TTL}
    return session


def check_session(store: Store, token: str | None) -> None:
    session = store.sessions.get(token or "")
    if session is None:
        raise StripeError(
            "The meter event stream needs a session token from POST "
            "/v2/billing/meter_event_session as its API key.",
            status=401,
            type="authentication_error",
        )
    if store.now() >= session["expires_at"]:
        raise StripeError(
            "This meter event session expired (tokens last 15 minutes); create a new session.",
            status=401,
            type="temporary_session_expired",
        )


def _v1_params(event: dict, where: str) -> dict:
    params = {
        "event_name": event.get("event_name"),
        "payload": {key: str(val) for key, val in (event.get("payload") or {}).items()},
        "identifier": event.get("identifier"),
    }
    if event.get("timestamp"):
        params["timestamp"] = str(_from_iso(event["timestamp"], f"{where}timestamp"))
    return params


def create_v2_event(store: Store, body: dict) -> dict:
    """`POST /v2/billing/meter_events`: validated synchronously, ISO timestamps."""
    event = record_meter_event(store, _v1_params(body, ""))
    return {
        "object": "v2.billing.meter_event",
        "created": _iso(event["created"]),
        "event_name": event["event_name"],
        "identifier": event["identifier"],
        "livemode": False,
        "payload": event["payload"],
        "timestamp": _iso(event["timestamp"]),
    }


def cancel_v2_event(store: Store, body: dict) -> dict:
    adjustment = cancel_meter_event(store, body)
    return {
        "id": new_id("mtradj"),
        "object": "v2.billing.meter_event_adjustment",
        "cancel": adjustment["cancel"],
        "created": _iso(store.now()),
        "event_name": adjustment["event_name"],
        "livemode": False,
        "status": "complete",
        "type": "cancel",
    }


def stream_events(store: Store, body: dict) -> dict:
    """Accept up to 100 events; each is validated afterwards, like Stripe's asynchronous stream.
    Rejected events are kept with their reason, readable in `GET /_sandbox/stats`."""
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise param_error("events", "events must be a non-empty list.")
    if len(events) > STREAM_BATCH:
        raise param_error(
            "events", f"At most {STREAM_BATCH} events per request (got {len(events)})."
        )
    for index, event in enumerate(events):
        try:
            record_meter_event(store, _v1_params(event, f"events[{index}]."))
        except StripeError as error:
            store.stream_errors.append(
                {"identifier": event.get("identifier"), "message": error.message}
            )
    return {}
