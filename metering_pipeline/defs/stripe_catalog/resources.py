"""Stripe as a Dagster resource: a ``StripeGateway`` built from settings at run time."""

from __future__ import annotations

import dagster as dg

from metering_pipeline.settings import load_settings
from metering_pipeline.stripe_io import StripeGateway


class StripeResource(dg.ConfigurableResource):
    """Where Stripe is. The key comes from ``STRIPE_API_KEY`` when the run starts, so it never
    sits in run config or the UI; the overrides exist for tests against a sandbox."""

    api_base: str | None = None
    meter_events_base: str | None = None

    def gateway(self) -> StripeGateway:
        settings = load_settings()
        return StripeGateway(
            settings.stripe_api_key.reveal(),
            self.api_base or settings.stripe_api_base,
            self.meter_events_base or self.api_base or settings.stripe_meter_events_base,
            settings.stripe_requests_per_second,
            settings.stripe_max_retries,
        )
