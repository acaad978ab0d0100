"""Meter events (v1 and the v2 session/stream), adjustments, event summaries, usage sums, and
the error reports Stripe emits for events it accepted but found invalid afterwards.

Which rule is checked when (each row cites its page in the README's behaviour table):

- always synchronously (400): the request's shape (`event_name`, `payload` a hash, identifier
  at most 100 characters), and an identifier Stripe already holds (the 24 h window);
- `POST /v1/billing/meter_events` and `POST /v2/billing/meter_events` reject a timestamp outside
  35 days back / 5 minutes ahead at once;
- the v1 endpoint answers 200 for an event whose content is invalid (no active meter, inactive
  meter, no customer key, unknown customer, bad value) and reports it afterwards as a
  `v1.billing.meter.error_report_triggered` (or `v1.billing.meter.no_meter_found`) v2 event;
  the v2 endpoint, "validated synchronously", answers 400 for the same cases;
- the v2 stream validates everything asynchronously, timestamps included.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from urllib.parse import urlencode

from .errors import StripeError, missing, param_error
from .params import choice, integer, mapping, text
from .store import Store, new_id

IDENTIFIER_TTL = 24 * 3600
ADJUSTMENT_WINDOW = 24 * 3600
MAX_AGE = 35 * 86400
MAX_AHEAD = 5 * 60
SESSION_TTL = 15 * 60
STREAM_BATCH = 100
WINDOW_SECONDS = {"hour": 3600, "day": 86400}
MAX_DIGITS = 15
# Stripe's reports carry "sample errors", not every failed event; the sandbox names at most
# this many per error code in one report, so consumers must handle unnamed failures.
SAMPLE_ERRORS = 10
VALIDATION_WINDOW = 10  # seconds, as in Stripe's example reports
ERROR_REPORT = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"


class InvalidMeterEvent(Exception):
    """An event Stripe validates asynchronously and found invalid: `code` is Stripe's
    `reason.error_types[].code`; `meter` the meter the report is about (None: no meter)."""

    def __init__(self, code: str, message: str, param: str, meter: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.meter = code, message, param, meter

    def as_request_error(self) -> StripeError:
        return param_error(self.param, self.message, self.code)


def active_meter(store: Store, event_name: str) -> dict:
    for meter in store.all("billing.meter"):
        if meter["event_name"] == event_name and meter["status"] == "active":
            return meter
    for meter in store.all("billing.meter"):
        if meter["event_name"] == event_name:
            raise InvalidMeterEvent(
                "archived_meter",
                f"Meter {meter['id']} with event_name '{event_name}' is inactive; events sent "
                "to it are not recorded. Reactivate it.",
                "event_name",
                meter,
            )
    raise InvalidMeterEvent(
        "no_meter",
        f"No meter was found matching event_name {event_name}.",
        "event_name",
    )


def _content(store: Store, event_name: str, payload: dict) -> tuple[dict, str, Decimal]:
    """The meter, customer and value of an event, or `InvalidMeterEvent`."""
    meter = active_meter(store, event_name)
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    customer_id = payload.get(customer_key)
    if not isinstance(customer_id, str) or not customer_id:
        raise InvalidMeterEvent(
            "meter_event_no_customer_defined",
            f"Customer mapping key {customer_key} not found in payload.",
            f"payload[{customer_key}]",
            meter,
        )
    customer = store.objects.get(customer_id)
    if not customer or customer.get("object") != "customer" or customer.get("_deleted"):
        raise InvalidMeterEvent(
            "meter_event_customer_not_found",
            f"No customer found with id '{customer_id}' (payload key {customer_key}).",
            f"payload[{customer_key}]",
            meter,
        )
    raw = payload.get(value_key)
    if raw is None or raw == "":
        if meter["default_aggregation"]["formula"] != "count":
            raise InvalidMeterEvent(
                "meter_event_value_not_found",
                f"Value key {value_key} not found in payload.",
                f"payload[{value_key}]",
                meter,
            )
        raw = "1"
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise InvalidMeterEvent(
            "meter_event_invalid_value",
            f"Value {raw!r} under payload key {value_key} is not a number.",
            f"payload[{value_key}]",
            meter,
        )
    if len(value.normalize().as_tuple().digits) > MAX_DIGITS:
        raise InvalidMeterEvent(
            "meter_event_value_too_many_digits",
            f"Value {raw} has more than {MAX_DIGITS} significant digits.",
            f"payload[{value_key}]",
            meter,
        )
    return meter, customer_id, value


def _timestamp_error(timestamp: int, now: int) -> InvalidMeterEvent | None:
    if timestamp < now - MAX_AGE:
        return InvalidMeterEvent(
            "timestamp_too_far_in_past",
            f"The timestamp {timestamp} is more than 35 days before the current time {now}; "
            "Stripe no longer accepts usage that old.",
            "timestamp",
        )
    if timestamp > now + MAX_AHEAD:
        return InvalidMeterEvent(
            "timestamp_in_future",
            f"The timestamp {timestamp} is more than 5 minutes after the current time {now}.",
            "timestamp",
        )
    return None


def record_meter_event(
    store: Store,
    params: dict,
    validation: str = "async",
    failures: list[tuple[InvalidMeterEvent, str]] | None = None,
) -> dict:
    """Validate and store one meter event, as `POST /v1/billing/meter_events` does.

    `validation`: ``async`` (v1: invalid content answers 200 and is reported by an error-report
    event), ``sync`` (v2 `meter_events`: answers 400) or ``stream`` (timestamps too are checked
    afterwards; a repeated identifier is dropped silently). With `failures`, invalid events are
    collected there for one report per request instead of reported one by one."""
    event_name = text(params, "event_name", required=True)
    payload = {key: str(val) for key, val in mapping(params, "payload").items()}
    identifier = text(params, "identifier") or secrets.token_hex(16)
    if len(identifier) > 100:
        raise param_error("identifier", "The identifier must be at most 100 characters.")
    customer_id = payload.get("stripe_customer_id")
    known = customer_id if isinstance(customer_id, str) and customer_id in store.objects else None
    now = store.now(known)
    timestamp = integer(params, "timestamp", default=now)
    event = {
        "object": "billing.meter_event",
        "created": now,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": payload,
        "timestamp": timestamp,
    }
    try:
        late = _timestamp_error(timestamp, now)
        if late and validation != "stream":
            raise late.as_request_error()
        previous = store.meter_event_ids.get(identifier)
        if previous and previous["_received"] > now - IDENTIFIER_TTL:
            if validation == "stream":
                return event
            raise StripeError(
                f"An event already exists with identifier {identifier}.",
                param="identifier",
                code="duplicate_meter_event",
                should_retry=False,
            )
        meter, customer_id, value = _content(store, event_name, payload)
        if late:
            late.meter = meter
            raise late
    except InvalidMeterEvent as invalid:
        if validation == "sync":
            raise invalid.as_request_error() from None
        if failures is None:
            report_invalid(store, [(invalid, identifier)])
        else:
            failures.append((invalid, identifier))
        return event
    event.update(_customer=customer_id, _value=value, _received=now, _canceled=False)
    store.meter_events.append(event)
    store.meter_event_ids[identifier] = event
    return event


def report_invalid(store: Store, failures: list[tuple[InvalidMeterEvent, str]]) -> None:
    """Emit Stripe's error reports for events accepted then found invalid: one report per meter
    (`no_meter_found` for events naming no meter), errors grouped by code, samples named."""
    by_meter: dict[str | None, list[tuple[InvalidMeterEvent, str]]] = defaultdict(list)
    for invalid, identifier in failures:
        by_meter[invalid.meter["id"] if invalid.meter else None].append((invalid, identifier))
    now = time.time()
    start = int(now) // VALIDATION_WINDOW * VALIDATION_WINDOW
    for meter_id, group in by_meter.items():
        by_code: dict[str, list[tuple[InvalidMeterEvent, str]]] = defaultdict(list)
        for invalid, identifier in group:
            by_code[invalid.code].append((invalid, identifier))
        count = len(group)
        store.v2_events.append(
            {
                "id": f"evt_test_{secrets.token_hex(24)}",
                "object": "v2.core.event",
                "context": None,
                "created": _iso_ms(now),
                "data": {
                    "developer_message_summary": f"There {'is' if count == 1 else 'are'} "
                    f"{count} invalid event{'' if count == 1 else 's'}",
                    "reason": {
                        "error_count": count,
                        "error_types": [
                            {
                                "code": code,
                                "error_count": len(errors),
                                "sample_errors": [
                                    {
                                        "error_message": invalid.message,
                                        "request": {"identifier": identifier},
                                    }
                                    for invalid, identifier in errors[:SAMPLE_ERRORS]
                                ],
                            }
                            for code, errors in by_code.items()
                        ],
                    },
                    "validation_end": _iso(start + VALIDATION_WINDOW),
                    "validation_start": _iso(start),
                },
                "livemode": False,
                "reason": None,
                "related_object": {
                    "id": meter_id,
                    "type": "billing.meter",
                    "url": f"/v1/billing/meters/{meter_id}",
                }
                if meter_id
                else {},
                "type": ERROR_REPORT if meter_id else NO_METER_FOUND,
            }
        )


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


def _iso_ms(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
    event = record_meter_event(store, _v1_params(body, ""), "sync")
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
    """Accept up to 100 events; each is validated afterwards, like Stripe's asynchronous stream:
    an invalid one is reported by an error-report event (and listed in `GET /_sandbox/stats`)."""
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise param_error("events", "events must be a non-empty list.")
    if len(events) > STREAM_BATCH:
        raise param_error(
            "events", f"At most {STREAM_BATCH} events per request (got {len(events)})."
        )
    failures: list[tuple[InvalidMeterEvent, str]] = []
    for index, event in enumerate(events):
        try:
            record_meter_event(store, _v1_params(event, f"events[{index}]."), "stream", failures)
        except StripeError as error:  # malformed: never recorded, listed in the stats only
            store.stream_errors.append(
                {"identifier": event.get("identifier"), "message": error.message}
            )
    if failures:
        report_invalid(store, failures)
    store.stream_errors += [
        {"identifier": identifier, "message": invalid.message} for invalid, identifier in failures
    ]
    return {}


# -- v2: events ----------------------------------------------------------------------------------

MAX_EVENT_TYPES = 20


def list_v2_events(store: Store, params: dict) -> dict:
    """`GET /v2/core/events`: newest first, filtered by `types`, `object_id` (the related
    object) and `created[gt|gte|lt|lte]`; `next_page_url` carries the filters and a `page`
    token (the last id returned), so events arriving meanwhile never shift a page."""
    types = params.get("types") or []
    if isinstance(types, str):
        types = [types]
    if len(types) > MAX_EVENT_TYPES:
        raise param_error("types", f"At most {MAX_EVENT_TYPES} event types (got {len(types)}).")
    limit = integer(params, "limit", default=20)
    if not 1 <= limit <= 100:
        raise param_error("limit", "Invalid limit: must be between 1 and 100.")
    created = mapping(params, "created")
    bounds = {op: _from_iso_ms(text(created, op), f"created[{op}]") for op in created}
    object_id = text(params, "object_id")

    def wanted(event: dict) -> bool:
        moment = _from_iso_ms(event["created"], "created")
        return (
            (not types or event["type"] in types)
            and (object_id is None or event["related_object"].get("id") == object_id)
            and all(
                {"gt": moment > b, "gte": moment >= b, "lt": moment < b, "lte": moment <= b}[op]
                for op, b in bounds.items()
            )
        )

    found = [event for event in reversed(store.v2_events) if wanted(event)]
    page = text(params, "page")
    if page:
        ids = [event["id"] for event in found]
        if page not in ids:
            raise param_error("page", f"Invalid page token '{page}'.")
        found = found[ids.index(page) + 1 :]
    chosen = found[:limit]
    next_url = None
    if len(found) > limit:
        query = [("limit", str(limit)), ("page", chosen[-1]["id"])]
        query += [(f"types[{i}]", name) for i, name in enumerate(types)]
        query += [(f"created[{op}]", text(created, op)) for op in created]
        if object_id:
            query.append(("object_id", object_id))
        next_url = f"/v2/core/events?{urlencode(query)}"
    return {"data": chosen, "next_page_url": next_url, "previous_page_url": None}


def retrieve_v2_event(store: Store, params: dict, id: str) -> dict:
    for event in store.v2_events:
        if event["id"] == id:
            return event
    raise StripeError(f"No such event: '{id}'", status=404, code="resource_missing", param="id")


def _from_iso_ms(value: str | None, param: str) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise param_error(param, f"Invalid timestamp {value!r}: use ISO 8601.") from None
