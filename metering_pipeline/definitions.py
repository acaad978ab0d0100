"""The Definitions object of the code location; nothing else."""

import dagster as dg

from metering_pipeline.defs import (
    automation,
    corrections,
    extract,
    push,
    quality,
    reconcile,
    stripe_catalog,
    transform,
)
from metering_pipeline.defs.resources import default_resources

defs = dg.Definitions.merge(
    dg.Definitions(resources=default_resources(), executor=dg.in_process_executor),
    extract.defs,
    quality.defs,
    stripe_catalog.defs,
    transform.defs,
    push.defs,
    reconcile.defs,
    automation.defs,
    corrections.defs,
)
