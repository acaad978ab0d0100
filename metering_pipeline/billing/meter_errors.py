"""Stripe's reports of meter events it answered 200 for and then found invalid.

Stripe validates a meter event's content (its meter, customer, value) after accepting it and
reports failures as ``v1.billing.meter.error_report_triggered`` (or
``v1.billing.meter.no_meter_found``) v2 events: per meter and validation window, a count per
error code and *sample* errors naming the event's identifier. The usage of those events is not
billed, so every report is a failure an operator must see, with what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

ERROR_REPORT_TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"
METER_ERROR_EVENTS = (ERROR_REPORT_TRIGGERED, NO_METER_FOUND)

_VALUE = (
    "the value was not a number Stripe accepts (at most 15 significant digits); check the "
    "meter's unit scale and the usage rows behind it"
)
_TIME = (
    "the event time was outside Stripe's window (35 days back, 5 minutes ahead of its clock or "
    "the customer's test clock); check the clocks"
)
ADVICE = {
    "meter_event_customer_not_found": "the customer does not exist in Stripe (deleted, or from "
    "another account or mode); restore it or map the usage to an existing customer, sync the "
    "catalog, then push",
    "meter_event_no_customer_defined": "the event carried no customer under the meter's "
    "customer-mapping key; check the meter's customer_mapping.event_payload_key",
    "meter_event_invalid_value": _VALUE,
    "meter_event_value_not_found": _VALUE,
    "meter_event_value_too_many_digits": _VALUE,
    "archived_meter": "the meter is deactivated; reactivate it in Stripe (or move the price to an "
    "active meter), sync the catalog, then push",
    "no_meter": "no meter has this event name; create or reactivate the meter in Stripe, sync "
    "the catalog, then push",
    "timestamp_too_far_in_past": _TIME,
    "timestamp_in_future": _TIME,
}


@dataclass(frozen=True)
class MeterEventError:
    """One sample error: Stripe's code and message, and the rejected event's identifier."""

    code: str
    message: str
    identifier: str | None


@dataclass(frozen=True)
class MeterErrorReport:
    """One error-report event. ``counts`` holds (code, events) for every error type, including
    events the report does not name; ``errors`` the named samples."""

    id: str
    type: str
    created: datetime
    meter_id: str | None
    summary: str
    validation_start: datetime | None
    validation_end: datetime | None
    error_count: int
    counts: tuple[tuple[str, int], ...]
    errors: tuple[MeterEventError, ...]

    @property
    def unnamed(self) -> int:
        """Rejected events this report does not identify (Stripe names samples only)."""
        return max(self.error_count - sum(1 for e in self.errors if e.identifier), 0)


def rejection_summary(
    reports: Sequence[MeterErrorReport], entries: Mapping[str, str], limit: int = 20
) -> str:
    """What an operator reads when a run fails on error reports: how many events Stripe
    rejected, per code what to fix, which ledger entries (``entries``: identifier -> what it
    billed) were marked, which identifiers the ledger does not hold, and what happens next."""
    total = sum(report.error_count for report in reports)
    lines = [
        f"Stripe rejected {total} meter event(s) after answering 200 (error reports "
        f"{', '.join(report.id for report in reports)}); their usage is NOT billed."
    ]
    by_code: dict[str, int] = {}
    for report in reports:
        for code, count in report.counts:
            by_code[code] = by_code.get(code, 0) + count
    for code, count in sorted(by_code.items()):
        lines.append(f"- {code} ({count}): {ADVICE.get(code, 'see the message below')}.")
    named = [error for report in reports for error in report.errors]
    for error in named[:limit]:
        held = entries.get(error.identifier or "")
        where = f"ledger entry {held}, now `rejected`" if held else "not in our ledger"
        lines.append(f"  - {error.identifier} ({where}): {error.code}: {error.message}")
    if len(named) > limit:
        lines.append(f"  - and {len(named) - limit} more named events")
    unnamed = sum(report.unnamed for report in reports)
    if unnamed:
        lines.append(
            f"- {unnamed} rejected event(s) are not named by Stripe (reports carry samples): "
            "their entries still count as sent; reconcile the affected periods to see the gap."
        )
    lines.append(
        "Rejected entries no longer count as delivered: the next push sends their usage again "
        "under new identifiers. Fix the cause first, or Stripe rejects it again and this job "
        "fails again."
    )
    return "\n".join(lines)
