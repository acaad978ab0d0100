"""Quality: routing raw rows to accepted or quarantine, and the checks that guard downstream."""

import dagster as dg

from metering_pipeline.defs.quality.assets import validated_usage_events
from metering_pipeline.defs.quality.checks import (
    counts_add_up,
    great_expectations_suite,
    partition_level_quality,
)

defs = dg.Definitions(
    assets=[validated_usage_events],
    asset_checks=[great_expectations_suite, partition_level_quality, counts_add_up],
)
