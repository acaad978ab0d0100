"""Extract: the hourly copy of the source into the warehouse."""

import dagster as dg

from metering_pipeline.defs.extract.assets import raw_usage_events

defs = dg.Definitions(assets=[raw_usage_events])
