"""The push to Stripe as a reconciler over the meter-event ledger (DESIGN §4.5); no Dagster here."""

from __future__ import annotations

from datetime import timedelta

from metering_pipeline.billing.units import meter_units
from metering_pipeline.push.reconciler import PushReport, push_usage
from metering_pipeline.settings import load_settings
from metering_pipeline.stripe_io import StripeGateway
from metering_pipeline.warehouse import Database

__all__ = ["PushReport", "push_customer_now", "push_usage"]


def push_customer_now(
    customer: str, database: Database | None = None, gateway: StripeGateway | None = None
) -> PushReport:
    """Everything we hold for one Stripe customer, sent now: for the events sensor when a
    subscription change is about to close a metered item's window. Safe beside a scheduled
    push: both take the ledger lock, and pending entries are deduplicated by identifier."""
    settings = load_settings()
    return push_usage(
        database or Database(settings.warehouse_url),
        gateway or StripeGateway.from_settings(settings),
        late_usage_policy=settings.late_usage_policy,
        finalization_grace=timedelta(hours=settings.finalization_grace_hours),
        meter_units=meter_units(settings.meter_units),
        customer=customer,
    )
