"""The push reconciler's arithmetic (DESIGN §4.5): desired state minus sent state is what to send.

One key is one (subscription item, billing period). The ledger holds every meter event we ever
created for it, with a sequence number and a status:

- ``sent``: Stripe acknowledged it (or rejected it as a duplicate identifier: delivered before).
- ``pending``: written before the call, outcome unknown (the run crashed, or the answer was lost).
  It may already count at Stripe, so it counts here too, and it is re-sent with its own identifier
  and timestamp: Stripe then either takes it or rejects the duplicate; both mean delivered.
- ``failed``: Stripe's answer proved it was not recorded (a 4xx other than the duplicate).
  It never counts. An uncertain outcome (timeout, 5xx after the retry budget) must stay ``pending``.
- ``rejected``: Stripe answered 200, then reported the event invalid (an error-report event
  naming its identifier: unknown customer, bad value, no meter...). It never counts either, so
  the next push sends the difference again under a new identifier.
- ``expired``: a pending entry whose identifier Stripe may have forgotten, and which Stripe's
  meter event summaries prove it never received. It never counts; a new entry (next sequence,
  new identifier) carries what is still owed.

Stripe enforces a meter event identifier's uniqueness "within a rolling 24 hour period"
(https://docs.stripe.com/api/v2/billing/meter-events/create; v1: "at least 24 hours",
https://docs.stripe.com/api/billing/meter-event/create). So a pending entry is re-sent blind only
while it is younger than ``IDENTIFIER_SAFE_AGE``; after that a re-send could be counted twice, and
Stripe's summaries decide instead (``recheck``, ``verify_expired``). Summaries are "an eventually
consistent view of the reported usage" and "might not immediately reflect recently received meter
events" (https://docs.stripe.com/api/billing/meter-event-summary,
https://docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api); Stripe gives no
figure, so they are read only ``SUMMARIES_SETTLE`` after our last attempt to send the entry.

What "what Stripe counts" means depends on the meter formula:

- ``sum``: Stripe adds every event, so it counts the sum of sent and pending values; the new event
  carries the difference ``desired - counted`` (negative when a refund lowered the total).
- ``last``: Stripe keeps only the latest event by timestamp, so a difference would be wrong: after
  sending 7 then wanting 9, a delta of 2 would bill 2. The event carries ``desired`` itself, and is
  needed only when the latest counted value differs from it. Because timestamp order decides, each
  new event must be stamped strictly after the previous ones (see ``event_timestamp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from metering_pipeline.billing.modes import PushFormula
from metering_pipeline.billing.moments import as_utc

EntryStatus = Literal["pending", "sent", "failed", "rejected", "expired"]
COUNTED_STATUSES: tuple[EntryStatus, ...] = ("sent", "pending")

STRIPE_MAX_EVENT_AGE = timedelta(days=35)
STRIPE_MAX_EVENT_AHEAD = timedelta(minutes=5)
STRIPE_MAX_SIGNIFICANT_DIGITS = 15
_SECOND = timedelta(seconds=1)
IDENTIFIER_WINDOW = timedelta(hours=24)
# Time in hand below Stripe's 24 h: a run plans, then sends (rate limit, retries, a long backlog)
# minutes later, and our clock may differ from Stripe's.
IDENTIFIER_MARGIN = timedelta(minutes=30)
IDENTIFIER_SAFE_AGE = IDENTIFIER_WINDOW - IDENTIFIER_MARGIN
SUMMARIES_SETTLE = timedelta(minutes=15)

Recheck = Literal["resend", "verify", "wait"]
Verdict = Literal["delivered", "lost", "mismatch"]


@dataclass(frozen=True)
class LedgerEntry:
    sequence: int
    value: Decimal
    status: EntryStatus


@dataclass(frozen=True)
class PushPlan:
    """What one run does for one key.

    ``resend``: pending entries to deliver again, unchanged, before anything new. ``value``: the
    new entry's value, or None when Stripe already counts what we want. ``sequence``: the new
    entry's sequence number. ``counted``: what Stripe counts once the resends land.
    """

    resend: tuple[LedgerEntry, ...]
    value: Decimal | None
    sequence: int
    counted: Decimal | None


def plan_push(formula: PushFormula, desired: Decimal, entries: Sequence[LedgerEntry]) -> PushPlan:
    """The pending entries to re-send and the one new event (at most) for a key in this run.

    ``counted`` is the sum of counted entries for ``sum``, and the latest counted value for
    ``last`` (None when nothing was sent yet). Call it under the key's lock, with every entry.
    """
    counted_entries = sorted(
        (entry for entry in entries if entry.status in COUNTED_STATUSES),
        key=lambda entry: entry.sequence,
    )
    resend = tuple(entry for entry in counted_entries if entry.status == "pending")
    sequence = max((entry.sequence for entry in entries), default=0) + 1
    if formula == "sum":
        counted = sum((entry.value for entry in counted_entries), Decimal(0))
        delta = desired - counted
        return PushPlan(resend, delta if delta != 0 else None, sequence, counted)
    if formula == "last":
        latest = counted_entries[-1].value if counted_entries else None
        needed = desired != latest if latest is not None else desired != 0
        return PushPlan(resend, desired if needed else None, sequence, latest)
    raise ValueError(f"meter formula {formula!r} cannot be pushed to; use sum or last")


def recheck(
    age: timedelta, since_last_attempt: timedelta, settle: timedelta = SUMMARIES_SETTLE
) -> Recheck:
    """What a pending entry may do: ``resend`` it blind (Stripe still dedupes its identifier),
    ``verify`` it against Stripe's summaries (the identifier may be forgotten), or ``wait`` for
    the summaries to settle after our last attempt.

    ``age``: since the entry was written, on whichever clock ran furthest (ours, or the
    customer's test clock, which Stripe may apply to the window).
    """
    if age < IDENTIFIER_SAFE_AGE:
        return "resend"
    return "verify" if since_last_attempt >= settle else "wait"


@dataclass(frozen=True)
class HeldEvent:
    """A meter event as Stripe aggregates it: its value and timestamp."""

    value: Decimal
    timestamp: datetime


def stripe_aggregate(formula: PushFormula, events: Sequence[HeldEvent]) -> Decimal:
    """What a meter's summary shows for ``events``: their sum, or the latest one's value."""
    if formula == "sum":
        return sum((event.value for event in events), Decimal(0))
    latest = max(events, key=lambda event: event.timestamp, default=None)
    return latest.value if latest is not None else Decimal(0)


def verify_expired(
    formula: PushFormula,
    acknowledged: Sequence[HeldEvent],
    uncertain: Sequence[HeldEvent],
    held: Decimal,
) -> Verdict:
    """Did Stripe receive the ``uncertain`` entries? ``held``: its summary for the customer and
    meter over the same range as ``acknowledged`` (the entries it confirmed).

    ``delivered`` when ``held`` is what Stripe shows with them, ``lost`` when it is what it shows
    without them; anything else (part of them, or usage sent outside the ledger) is a
    ``mismatch`` that a person must look at before anything more is sent.
    """
    if held == stripe_aggregate(formula, [*acknowledged, *uncertain]):
        return "delivered"
    if held == stripe_aggregate(formula, acknowledged):
        return "lost"
    return "mismatch"


def event_timestamp(
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    after: datetime | None = None,
    safety: timedelta = timedelta(hours=1),
) -> datetime | None:
    """A whole second for a new event: inside ``[window_start, window_end)`` and accepted by Stripe.

    ``window_*`` is the item's active part of the billing period (the event must be attributed to
    that item); ``now`` is Stripe's clock, or the customer's test clock. Stripe accepts timestamps
    up to 35 days old (we keep ``safety`` in hand for slow runs) and 5 minutes ahead. ``after`` is
    the latest timestamp already used for the key, needed for ``last`` meters where the latest
    event wins: the result is strictly later. While the window is open the event is stamped
    ``now``; once it has closed (finalization grace period) it goes one second after ``after``,
    or at the window's last second, so later corrections still find a later second free.
    Returns None when no such second exists: the usage can no longer reach this item's invoice
    and belongs in the late-usage queue.
    """
    now = _floor_second(as_utc(now, "now"))
    start = _ceil_second(as_utc(window_start, "window_start"))
    last_second = _ceil_second(as_utc(window_end, "window_end")) - _SECOND
    if after is not None:
        after = _floor_second(as_utc(after, "after"))
    if after is not None and (now > last_second or now <= after):
        candidate = after + _SECOND
    else:
        candidate = min(now, last_second)
    earliest = max(start, now - STRIPE_MAX_EVENT_AGE + safety)
    if candidate < earliest or candidate > min(last_second, now + STRIPE_MAX_EVENT_AHEAD):
        return None
    return candidate


def meter_value(value: Decimal) -> str:
    """The string Stripe's ``payload.value`` gets; whole numbers of at most 15 digits only.

    Stripe recommends whole numbers (scale fractional units, e.g. send milliseconds rather than
    seconds); a fraction or a longer number would be rounded on Stripe's side and drift from us.
    """
    if not value.is_finite() or value != value.to_integral_value():
        raise ValueError(
            f"meter event value {value} is not a whole number; Stripe would round it. "
            "Scale the meter's unit (e.g. report milli-units) so usage is whole"
        )
    digits = len(str(abs(int(value))))
    if digits > STRIPE_MAX_SIGNIFICANT_DIGITS:
        raise ValueError(f"meter event value {value} has {digits} digits; Stripe keeps 15")
    return str(int(value))


def _floor_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _ceil_second(moment: datetime) -> datetime:
    return moment if moment.microsecond == 0 else _floor_second(moment) + _SECOND
