"""Meter events Stripe accepted and then reported invalid: a 200 is not yet delivery.

Stripe validates a meter event's content after answering 200 and reports the invalid ones as
``v1.billing.meter.error_report_triggered`` / ``v1.billing.meter.no_meter_found`` events of its
v2 events API. The ``stripe_meter_errors`` sensor follows them by cursor and, for every tick
that finds new reports, launches one ``meter_event_rejections`` run. That run marks the ledger
entries the reports name ``rejected`` (never counted, so the next push sends the usage again
under a new identifier) and then fails with what was rejected and what to fix: a red run in
the UI and the run-failure alert. A cause left unfixed makes the next push's event rejected
again, which is a new report, a new failed run and a new alert: loud every time, never a
silent loop.

(No ``from __future__ import annotations``: Dagster reads the op's config class at runtime.)
"""

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import dagster as dg

from metering_pipeline.billing.meter_errors import (
    ERROR_REPORT_TRIGGERED,
    MeterErrorReport,
    rejection_summary,
)
from metering_pipeline.defs.automation.jobs import TRIGGER_TAG, WAREHOUSE_TAGS
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.push.tables import ensure_push_tables, mark_rejected

# Stripe's events become readable a little after their `created`; re-reading this far back
# (and skipping ids already seen) never misses one that shows up late.
OVERLAP = timedelta(minutes=10)


@dataclass
class ErrorsCursor:
    """``since``: the newest report seen; ``seen``: ids of reports created within ``OVERLAP``
    of it, so the overlapping re-read skips them."""

    since: datetime | None = None
    seen: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> "ErrorsCursor":
        if not text:
            return cls()
        data = json.loads(text)
        since = data.get("since")
        return cls(datetime.fromisoformat(since) if since else None, data.get("seen", []))

    def dump(self) -> str:
        since = self.since.isoformat() if self.since else None
        return json.dumps({"since": since, "seen": self.seen}, sort_keys=True)

    def query_from(self) -> datetime | None:
        return None if self.since is None else self.since - OVERLAP

    def advance(self, reports: list[MeterErrorReport]) -> "ErrorsCursor":
        if not reports:
            return self
        # every report of the overlap is read again each tick, so `seen` needs only those
        since = max([report.created for report in reports] + ([self.since] if self.since else []))
        return ErrorsCursor(since, sorted(r.id for r in reports if r.created >= since - OVERLAP))


class RejectionsConfig(dg.Config):
    event_ids: list[str]


@dg.op(pool="stripe_push")
def reject_meter_events(
    config: RejectionsConfig,
    stripe: StripeResource,
    warehouse: WarehouseResource,
) -> None:
    """Mark the ledger entries Stripe's error reports name ``rejected``, then fail with the
    names. In the push pool, so it never interleaves with a push recording its answers."""
    gateway = stripe.gateway()
    reports = [gateway.meter_error_report(event_id) for event_id in config.event_ids]
    rejections = [
        (error.identifier, f"rejected by Stripe ({report.id}): {error.code}: {error.message}")
        for report in reports
        for error in report.errors
        if error.identifier
    ]
    with warehouse.database.connect() as conn:
        ensure_push_tables(conn)
        marked = mark_rejected(conn, rejections)
    entries = {
        row.identifier: f"{row.stripe_customer_id}/{row.meter} {row.period_start:%Y-%m-%d} "
        f"#{row.sequence} value {row.value.normalize():f}"
        for row in marked
    }
    raise dg.Failure(
        description=rejection_summary(reports, entries),
        metadata={
            "reports": [report.id for report in reports],
            "rejected_events": sum(report.error_count for report in reports),
            "ledger_entries_rejected": len(marked),
            "not_in_ledger": len({identifier for identifier, _ in rejections} - set(entries)),
            "unnamed_by_stripe": sum(report.unnamed for report in reports),
        },
    )


@dg.job(tags=WAREHOUSE_TAGS)
def meter_event_rejections() -> None:
    """Record Stripe's error reports in the ledger and fail loudly (launched by the
    ``stripe_meter_errors`` sensor)."""
    reject_meter_events()


@dg.sensor(
    job=meter_event_rejections,
    minimum_interval_seconds=60,
    description="Follows Stripe's meter error reports (v2 events): each tick with new reports "
    "launches a meter_event_rejections run that marks the named ledger entries rejected and "
    "fails with what to fix.",
)
def stripe_meter_errors(
    context: dg.SensorEvaluationContext, stripe: StripeResource
) -> dg.SensorResult:
    cursor = ErrorsCursor.parse(context.cursor)
    reports = stripe.gateway().list_meter_error_reports(cursor.query_from())
    new = [report for report in reports if report.id not in cursor.seen]
    cursor = cursor.advance(reports)
    if not new:
        return dg.SensorResult(cursor=cursor.dump(), skip_reason="no new meter error reports")
    rejected = sum(report.error_count for report in new)
    context.log.error(
        f"Stripe reported {rejected} meter event(s) invalid after accepting them "
        f"({', '.join(report.id for report in new)}); launching meter_event_rejections"
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"meter_errors:{new[-1].id}",
                job_name=meter_event_rejections.name,
                run_config={
                    "ops": {"reject_meter_events": {"config": {"event_ids": [r.id for r in new]}}}
                },
                tags={TRIGGER_TAG: ERROR_REPORT_TRIGGERED},
            )
        ],
        cursor=cursor.dump(),
    )
