"""Writing a billing set-up into Stripe (meters, tiered prices, customers on test clocks,
subscriptions, plan changes) and moving test clocks: what the demo, the end-to-end test and the
benchmark need to stage a billing period. The pipeline itself only reads the catalog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import stripe

from metering_pipeline.stripe_setup.spec import TierSpec

CLOCK_READY_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class ClockedCustomer:
    customer_id: str
    clock_id: str
    subscription_id: str
    items: dict[str, str]  # meter event_name -> subscription item id


class Provisioner:
    """One SDK client for staging, paced under the account's request budget (Stripe answers a
    plain rate-limit 429 without ``Stripe-Should-Retry``, so the SDK would not retry it)."""

    def __init__(
        self, api_key: str, api_base: str | None = None, requests_per_second: float = 20.0
    ) -> None:
        bases = {"api": api_base, "meter_events": api_base} if api_base else {}
        client = stripe.StripeClient(api_key, base_addresses=bases, max_network_retries=5)
        self._v1 = client.v1
        self._interval = 1 / requests_per_second
        self._next_call = 0.0

    @property
    def _api(self):
        """The SDK's v1 services, one request at most every ``1 / requests_per_second`` s."""
        wait = self._next_call - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._next_call = max(self._next_call, time.monotonic()) + self._interval
        return self._v1

    def meter(self, event_name: str, display_name: str) -> str:
        meter = self._api.billing.meters.create(
            {
                "display_name": display_name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
            }
        )
        return meter.id

    def tiered_price(
        self, meter_id: str, product_name: str, mode: str, tiers: tuple[TierSpec, ...]
    ) -> str:
        product = self._api.products.create({"name": product_name})
        price = self._api.prices.create(
            {
                "currency": "usd",
                "product": product.id,
                "billing_scheme": "tiered",
                "tiers_mode": mode,
                "tiers": [tier_params(tier) for tier in tiers],
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            }
        )
        return price.id

    def subscribed_customer(
        self, name: str, metadata: dict[str, str], anchor: datetime, prices: dict[str, str]
    ) -> ClockedCustomer:
        """A customer on its own test clock frozen at ``anchor``, subscribed then to ``prices``
        (meter event_name -> price id), so its billing periods start at ``anchor``."""
        clock = self._api.test_helpers.test_clocks.create(
            {"frozen_time": _seconds(anchor), "name": name}
        )
        customer = self._api.customers.create(
            {"name": name, "test_clock": clock.id, "metadata": metadata}
        )
        subscription = self._api.subscriptions.create(
            {"customer": customer.id, "items": [{"price": p} for p in prices.values()]}
        )
        by_price = {item.price.id: item.id for item in subscription["items"].data}
        return ClockedCustomer(
            customer.id,
            clock.id,
            subscription.id,
            {meter: by_price[price] for meter, price in prices.items()},
        )

    def change_price(self, customer: ClockedCustomer, meter: str, price_id: str) -> None:
        """A mid-period plan change of one metered item, at the customer's clock time."""
        self._api.subscriptions.update(
            customer.subscription_id,
            {"items": [{"id": customer.items[meter], "price": price_id}]},
        )

    def advance(self, clock_ids: list[str], moment: datetime) -> None:
        """Advance clocks and wait until Stripe has run everything they passed (``ready``)."""
        for clock_id in clock_ids:
            self._api.test_helpers.test_clocks.advance(clock_id, {"frozen_time": _seconds(moment)})
        deadline = time.monotonic() + CLOCK_READY_TIMEOUT_SECONDS
        for clock_id in clock_ids:
            while self._api.test_helpers.test_clocks.retrieve(clock_id).status != "ready":
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"test clock {clock_id} did not reach {moment.isoformat()} within "
                        f"{CLOCK_READY_TIMEOUT_SECONDS} s; look at it in the Stripe dashboard"
                    )
                time.sleep(0.2)

    def cycle_invoice(self, customer: ClockedCustomer, period_end: datetime) -> dict:
        """The subscription's invoice for the period ending at ``period_end`` (status, amounts)."""
        invoices = self._api.invoices.list({"customer": customer.customer_id, "limit": 100}).data
        for invoice in invoices:
            if invoice.billing_reason == "subscription_cycle" and invoice.period_end == _seconds(
                period_end
            ):
                return {
                    "id": invoice.id,
                    "status": invoice.status,
                    "amount_due": invoice.amount_due,
                    "total": invoice.total,
                }
        raise LookupError(
            f"customer {customer.customer_id} has no subscription_cycle invoice for the period "
            f"ending {period_end.isoformat()}; has its test clock passed that instant?"
        )


def tier_params(tier: TierSpec) -> dict:
    """One tier as Stripe's create-price parameters take it."""
    spec: dict = {
        "up_to": "inf" if tier.up_to is None else tier.up_to,
        "unit_amount_decimal": str(tier.unit_amount_decimal),
    }
    if tier.flat_amount:
        spec["flat_amount"] = tier.flat_amount
    return spec


def _seconds(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp())
