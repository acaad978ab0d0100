"""Stripe catalog sync: customers, meters, prices, subscription-item intervals, billing periods."""

from metering_pipeline.defs.stripe_catalog.assets import defs

__all__ = ["defs"]
