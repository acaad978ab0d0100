"""Reconciliation per billing period (ours vs ledger vs Stripe), its blocking check, and repair."""

from metering_pipeline.defs.reconcile.assets import defs

__all__ = ["defs"]
