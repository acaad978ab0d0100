"""dbt transformations: staging, attribution to subscription items, hourly and period marts."""

from metering_pipeline.defs.transform.assets import defs

__all__ = ["defs"]
