"""Push: usage to Stripe meter events through the ledger, exactly once; late usage queued."""

from metering_pipeline.defs.push.assets import defs

__all__ = ["defs"]
