"""The one door to Stripe: every call passes a rate limiter, our retry loop and error mapping.

The SDK's own retries are off (``max_network_retries=0``) so that every attempt is counted, rate
limited and visible in run metadata, and so a retry decision is made in one place:

- retried: connection failures (timeouts, refused or dropped connections), 409, 429 and 5xx,
  unless Stripe's ``Stripe-Should-Retry`` header says ``false``; anything it marks ``true`` is
  retried too. Writes stay safe to repeat: meter events carry their ledger identifier, and other
  writes an idempotency key that is the same on every attempt.
- backoff: exponential from ``backoff_base`` seconds, capped at ``backoff_cap``, with jitter
  (each wait is a random point in the upper half of its step) so parallel runs do not retry in
  lockstep.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

import stripe

from metering_pipeline.billing.catalog import Catalog, Invoice, StripeEvent
from metering_pipeline.billing.ledger import meter_value
from metering_pipeline.billing.meter_errors import METER_ERROR_EVENTS, MeterErrorReport
from metering_pipeline.billing.moments import as_utc
from metering_pipeline.settings import Settings
from metering_pipeline.stripe_io import convert
from metering_pipeline.stripe_io.errors import (
    CallContext,
    StripeAuthenticationError,
    StripeRejectedError,
    StripeUnavailableError,
    redact,
)
from metering_pipeline.stripe_io.rate_limit import TokenBucket

API_VERSION = "2026-10-28.endive"
PAGE_SIZE = 100
T = TypeVar("T")
Delivery = Literal["sent", "already_delivered"]


@dataclass
class GatewayStats:
    """Counters for run metadata: HTTP attempts, retries among them, calls that finally failed."""

    api_calls: int = 0
    retries: int = 0
    failures: int = 0
    rate_limit_wait_seconds: float = 0.0

    def __sub__(self, before: GatewayStats) -> GatewayStats:
        return GatewayStats(
            **{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)}
        )

    def as_metadata(self) -> dict[str, float | int]:
        return {f"stripe_{f.name}": getattr(self, f.name) for f in fields(self)}


class StripeGateway:
    """Reads the catalog and usage summaries, writes meter events and invoice items."""

    def __init__(
        self,
        api_key: str,
        api_base: str | None,
        meter_events_base: str | None,
        requests_per_second: float,
        max_retries: int,
        *,
        timeout_seconds: float = 30.0,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not api_key:
            raise ValueError("StripeGateway needs an API key; set STRIPE_API_KEY")
        bases: dict[str, str] = {}
        if api_base:
            bases["api"] = api_base.rstrip("/")
        if meter_events_base:
            bases["meter_events"] = meter_events_base.rstrip("/")
        self._key = api_key
        self._client = stripe.StripeClient(
            api_key,
            stripe_version=API_VERSION,
            base_addresses=bases,  # type: ignore[arg-type]
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout_seconds),
        )
        self.max_retries = max_retries
        self._limiter = TokenBucket(requests_per_second, sleep=sleep)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sleep = sleep
        self._stats = GatewayStats()
        self._stats_lock = threading.Lock()
        self._meter_locks: dict[tuple[str, str], threading.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> StripeGateway:
        return cls(
            settings.stripe_api_key.reveal(),
            settings.stripe_api_base,
            settings.stripe_meter_events_base,
            settings.stripe_requests_per_second,
            settings.stripe_max_retries,
        )

    def __repr__(self) -> str:
        return f"StripeGateway(max_retries={self.max_retries}, rate={self._limiter.rate}/s)"

    @property
    def stats(self) -> GatewayStats:
        """A snapshot; subtract an earlier snapshot to get one run's figures."""
        with self._stats_lock:
            return GatewayStats(
                self._stats.api_calls,
                self._stats.retries,
                self._stats.failures,
                self._limiter.waited_seconds,
            )

    # Reads ---------------------------------------------------------------------------------

    def fetch_catalog(self) -> Catalog:
        """Customers, meters, prices (tiers included) and subscriptions of every status."""
        v1 = self._client.v1
        customers = [convert.customer(c) for c in self._pages("list customers", v1.customers.list)]
        meters = [convert.meter(m) for m in self._pages("list meters", v1.billing.meters.list)]
        prices = {
            p["id"]: convert.price(p)
            for p in self._pages("list prices", v1.prices.list, {"expand": ["data.tiers"]})
        }
        subscriptions = [
            convert.subscription(s, self._subscription_items(s), prices)
            for s in self._pages("list subscriptions", v1.subscriptions.list, {"status": "all"})
        ]
        return Catalog(
            tuple(customers), tuple(meters), tuple(prices.values()), tuple(subscriptions)
        )

    def list_events(self, after: str | None, types: list[str]) -> list[StripeEvent]:
        """Events of ``types`` newer than event id ``after`` (all retained ones if None), oldest
        first, so a sensor can keep the last id as its cursor."""
        params: dict[str, Any] = {"types": types, "limit": PAGE_SIZE}
        events: list[Any] = []
        if after is None:
            events = list(self._pages("list events", self._client.v1.events.list, params))
            events.reverse()  # Stripe lists newest first
        else:
            cursor = after
            while True:
                page = self._call(
                    "list events",
                    CallContext(),
                    lambda cursor=cursor: self._client.v1.events.list(
                        params={**params, "ending_before": cursor}
                    ),
                )
                if not page.data:
                    break
                events.extend(event.to_dict() for event in reversed(page.data))
                cursor = page.data[0]["id"]
                if not page.has_more:
                    break
        return [convert.event(event) for event in events]

    def list_meter_error_reports(self, since: datetime | None) -> list[MeterErrorReport]:
        """Stripe's reports of meter events it accepted then found invalid, created at or after
        ``since`` (every retained one, 30 days, if None), oldest first, from the v2 events API
        (``GET /v2/core/events``, paged by ``next_page_url``)."""
        params: dict[str, Any] = {"types": list(METER_ERROR_EVENTS), "limit": PAGE_SIZE}
        if since is not None:
            params["created"] = {"gte": _rfc3339(since)}
        operation = "list meter error reports"
        page = self._call(
            operation, CallContext(), lambda: self._client.v2.core.events.list(params=params)
        )
        events = list(page.data)
        while page.next_page_url:
            url = page.next_page_url
            page = self._call(
                operation,
                CallContext(),
                lambda url=url: self._client.deserialize(
                    self._client.raw_request("get", url), api_mode="V2"
                ),
            )
            events.extend(page.data)
        reports = [convert.meter_error_report(event.to_dict()) for event in events]
        return sorted(reports, key=lambda report: (report.created, report.id))

    def meter_error_report(self, event_id: str) -> MeterErrorReport:
        """One error-report event by id (``GET /v2/core/events/{id}``)."""
        event = self._call(
            "read meter error report",
            CallContext(),
            lambda: self._client.v2.core.events.retrieve(event_id),
        )
        return convert.meter_error_report(event.to_dict())

    def meter_event_summaries(
        self, meter_id: str, customer: str, start: datetime, end: datetime, *, meter: str = ""
    ) -> Decimal:
        """Stripe's aggregated usage for a customer on a meter over ``[start, end)``.

        Stripe only answers on minute boundaries and is eventually consistent: a value read just
        after sending can lag by a few minutes.
        """
        context = CallContext(customer=customer, meter=meter or meter_id, period=(start, end))
        for name, value in (("start", as_utc(start, "start")), ("end", as_utc(end, "end"))):
            if value.second or value.microsecond:
                raise ValueError(
                    f"meter event summaries for {context.describe()}: {name}={value.isoformat()} "
                    "is not on a minute boundary, which Stripe requires"
                )
        params = {
            "customer": customer,
            "start_time": int(start.timestamp()),
            "end_time": int(end.timestamp()),
        }
        summaries_service = self._client.v1.billing.meters.event_summaries
        summaries = self._pages(
            "read meter event summaries",
            lambda params: summaries_service.list(meter_id, params=params),
            params,
            context,
        )
        return sum((Decimal(str(s["aggregated_value"])) for s in summaries), Decimal(0))

    def clock_time(self, test_clock: str | None) -> datetime:
        """Stripe's "now" for a customer: its test clock's frozen time, else the wall clock.

        Meter-event timestamps and open periods are judged against this clock, so a customer on
        a test clock must be read from it, not from our machine.
        """
        if test_clock is None:
            return datetime.now(UTC)
        clock = self._call(
            "read test clock",
            CallContext(),
            lambda: self._client.v1.test_helpers.test_clocks.retrieve(test_clock),
        )
        return datetime.fromtimestamp(clock["frozen_time"], tz=UTC)

    def invoice_preview(self, customer: str, subscription: str) -> Invoice:
        """What the subscription's current period would bill now (``invoices.create_preview``)."""
        context = CallContext(customer=customer, subscription=subscription)
        preview = self._call(
            "preview invoice",
            context,
            lambda: self._client.v1.invoices.create_preview(
                params={"customer": customer, "subscription": subscription}
            ),
        )
        preview = preview.to_dict()
        return convert.invoice(preview, preview["lines"]["data"])

    def list_invoices(
        self,
        *,
        customer: str | None = None,
        subscription: str | None = None,
        status: str | None = None,
    ) -> list[Invoice]:
        """Invoices, newest first, each with all its lines."""
        params = {
            key: value
            for key, value in (
                ("customer", customer),
                ("subscription", subscription),
                ("status", status),
            )
            if value
        }
        context = CallContext(customer=customer, subscription=subscription)
        return [
            convert.invoice(obj, self._invoice_lines(obj, context))
            for obj in self._pages("list invoices", self._client.v1.invoices.list, params, context)
        ]

    # Writes --------------------------------------------------------------------------------

    def send_meter_event(
        self,
        event_name: str,
        stripe_customer_id: str,
        value: Decimal,
        timestamp: datetime,
        identifier: str,
        *,
        context: CallContext | None = None,
    ) -> Delivery:
        """Deliver one meter event; ``already_delivered`` when Stripe already holds ``identifier``.

        Stripe rejects a repeated identifier with a 400, which after a lost answer or a crashed
        run is the proof that the first attempt arrived: the caller marks the entry sent.
        """
        context = context or CallContext(customer=stripe_customer_id, meter=event_name)
        operation = f"send meter event {identifier}"
        try:
            text = meter_value(value)
        except ValueError as error:
            raise ValueError(f"{operation} ({context.describe()}): {error}") from None
        params = {
            "event_name": event_name,
            "payload": {"stripe_customer_id": stripe_customer_id, "value": text},
            "identifier": identifier,
            "timestamp": int(as_utc(timestamp, "timestamp").timestamp()),
        }
        with self._meter_lock(stripe_customer_id, event_name):
            answer = self._call(
                operation,
                context,
                lambda: self._client.v1.billing.meter_events.create(params=params),
                accept=_duplicate_identifier,
            )
        return "sent" if answer is not None else "already_delivered"

    def create_invoice_item(
        self,
        *,
        customer: str,
        amount: int,
        currency: str,
        description: str,
        idempotency_key: str,
        subscription: str | None = None,
        metadata: Mapping[str, str] | None = None,
        context: CallContext | None = None,
    ) -> str:
        """Add ``amount`` minor units to the customer's next invoice; returns the item's id.

        The idempotency key makes a retry, or a re-run with the same key, return the same item.
        """
        params: dict[str, Any] = {
            "customer": customer,
            "amount": amount,
            "currency": currency,
            "description": description,
            "metadata": dict(metadata or {}),
        }
        if subscription:
            params["subscription"] = subscription
        item = self._call(
            "create invoice item",
            context or CallContext(customer=customer, subscription=subscription),
            lambda: self._client.v1.invoice_items.create(
                params=params, options={"idempotency_key": idempotency_key}
            ),
        )
        return item["id"]

    # The retry loop ------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        context: CallContext,
        request: Callable[[], T],
        accept: Callable[[stripe.StripeError], bool] | None = None,
    ) -> T | None:
        """``request()`` with rate limit and retries; None when ``accept`` takes the error."""
        attempt = 0
        while True:
            self._limiter.acquire()
            self._count(api_calls=1)
            try:
                return request()
            except stripe.StripeError as error:
                if accept is not None and accept(error):
                    return None
                if attempt >= self.max_retries or not _retryable(error):
                    self._count(failures=1)
                    raise self._mapped(operation, context, error, attempt) from None
            attempt += 1
            self._count(retries=1)
            step = min(self._backoff_cap, self._backoff_base * 2 ** (attempt - 1))
            self._sleep(step * (0.5 + random.random() / 2))

    def _pages(
        self,
        operation: str,
        list_page: Callable[..., Any],
        params: Mapping[str, Any] | None = None,
        context: CallContext | None = None,
    ) -> Iterator[Any]:
        """Every object of a list endpoint as a plain dict, each page through the retry loop."""
        params = {"limit": PAGE_SIZE, **(params or {})}
        while True:
            page = self._call(
                operation, context or CallContext(), lambda params=params: list_page(params=params)
            )
            yield from (item.to_dict() for item in page.data)
            if not page.has_more or not page.data:
                return
            params = {**params, "starting_after": page.data[-1]["id"]}

    def _subscription_items(self, subscription: Any) -> list[Any]:
        embedded = subscription["items"]
        if not embedded.get("has_more"):
            return embedded["data"]
        return list(
            self._pages(
                "list subscription items",
                self._client.v1.subscription_items.list,
                {"subscription": subscription["id"]},
                CallContext(subscription=subscription["id"]),
            )
        )

    def _invoice_lines(self, invoice: Any, context: CallContext) -> list[Any]:
        embedded = invoice["lines"]
        if not embedded.get("has_more"):
            return embedded["data"]
        lines_service = self._client.v1.invoices.line_items
        return list(
            self._pages(
                "list invoice lines",
                lambda params: lines_service.list(invoice["id"], params=params),
                None,
                context,
            )
        )

    def _meter_lock(self, customer: str, event_name: str) -> threading.Lock:
        """Stripe takes one meter-event call at a time per customer and meter; queue here
        rather than collect 429s when a push runs on several threads."""
        with self._stats_lock:
            return self._meter_locks.setdefault((customer, event_name), threading.Lock())

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self._stats, name, getattr(self._stats, name) + value)

    def _mapped(
        self, operation: str, context: CallContext, error: stripe.StripeError, retries: int
    ) -> Exception:
        detail = redact(error.user_message or type(error).__name__, self._key).rstrip(". ")
        status = error.http_status
        common = {"http_status": status, "code": error.code, "request_id": error.request_id}
        if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
            return StripeAuthenticationError(
                operation,
                context,
                f"Stripe refused the API key (HTTP {status}): {detail}",
                "Check that STRIPE_API_KEY is current and, for a restricted key, that it has "
                "write access to Billing meter events, invoices and invoice items and read "
                "access to customers, prices, subscriptions and events",
                **common,
            )
        if _retryable(error):
            answer = f"HTTP {status}" if status else "no answer (connection failed)"
            return StripeUnavailableError(
                operation,
                context,
                f"still failing after {retries} retries, last with {answer}: {detail}",
                "Stripe may or may not have recorded a write; run again later, the ledger "
                "re-sends with the same identifier and Stripe drops what it already holds, or "
                "raise METERING_STRIPE_MAX_RETRIES",
                **common,
            )
        return StripeRejectedError(
            operation,
            context,
            f"Stripe rejected the request (HTTP {status}, {error.code or 'no code'}): {detail}",
            "Nothing was recorded; correct the data or the Stripe setup named above and run again",
            **common,
        )


def _rfc3339(moment: datetime) -> str:
    """A v2 API timestamp: UTC, milliseconds, ``Z``."""
    utc = as_utc(moment, "since")
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _duplicate_identifier(error: stripe.StripeError) -> bool:
    """Stripe's answer to a meter event whose identifier it already holds."""
    message = error.user_message or ""
    return error.http_status == 400 and (
        error.code == "duplicate_meter_event" or "already exists with identifier" in message
    )


def _retryable(error: stripe.StripeError) -> bool:
    should_retry = {key.lower(): value for key, value in (error.headers or {}).items()}.get(
        "stripe-should-retry"
    )
    if should_retry in ("true", "false"):
        return should_retry == "true"
    if isinstance(error, stripe.APIConnectionError):
        return True
    status = error.http_status or 0
    return status in (409, 429) or status >= 500
