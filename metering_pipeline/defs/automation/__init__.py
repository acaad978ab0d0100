"""Automation: the hourly schedule, the late-rows and Stripe-events sensors, and alerts."""

import dagster as dg

from metering_pipeline.defs.automation.alerts import check_failure_alert, run_failure_alert
from metering_pipeline.defs.automation.jobs import (
    customer_final_push,
    hourly_usage,
    period_reconciliation,
    stripe_catalog_sync,
)
from metering_pipeline.defs.automation.late_rows import late_usage_rows
from metering_pipeline.defs.automation.meter_errors import (
    meter_event_rejections,
    stripe_meter_errors,
)
from metering_pipeline.defs.automation.schedules import hourly_usage_schedule
from metering_pipeline.defs.automation.stripe_events import stripe_events

defs = dg.Definitions(
    jobs=[
        hourly_usage,
        stripe_catalog_sync,
        period_reconciliation,
        customer_final_push,
        meter_event_rejections,
    ],
    schedules=[hourly_usage_schedule],
    sensors=[
        late_usage_rows,
        stripe_events,
        stripe_meter_errors,
        run_failure_alert,
        check_failure_alert,
    ],
)
