"""Deterministic names for what we write to Stripe, so a retry or a re-run is recognised as such.

A meter event's ``identifier`` is how Stripe rejects a second delivery of the same event (for at
least 24 hours); an idempotency key does the same for other writes. Both are derived only from
what the write means, never from a clock or a random value, so a crashed run that is started
again produces the very same names and Stripe deduplicates them.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from metering_pipeline.billing.moments import as_utc

_PREFIX = "mp"


def meter_event_identifier(
    subscription_item_id: str,
    stripe_customer_id: str,
    meter: str,
    period_start: datetime,
    sequence: int,
) -> str:
    """``mp_<hash>_<yyyymmddhhmm>_<sequence>``: at most 100 characters of ``[a-z0-9_]``.

    The subscription item is part of the key because after a mid-period price change two items
    of one customer and meter share a period start; without it their first entries would collide
    and Stripe would drop the second as a duplicate. The period start and sequence stay readable
    so a person can find the ledger row from what Stripe shows.
    """
    if sequence < 1:
        raise ValueError(f"ledger sequence must start at 1, got {sequence}")
    start = as_utc(period_start, "period_start")
    digest = _digest(subscription_item_id, stripe_customer_id, meter, start.isoformat())
    return f"{_PREFIX}_{digest[:32]}_{start:%Y%m%d%H%M}_{sequence}"


def idempotency_key(operation: str, *parts: object) -> str:
    """``mp-<operation>-<hash of parts>`` for writes other than meter events (invoice items, ...).

    Give every part that makes the write unique (customer, subscription item, period, amount):
    Stripe rejects a reused key with different parameters, so the key must change when they do.
    """
    if not operation or not operation.replace("_", "").isalnum():
        raise ValueError(f"idempotency operation {operation!r} must be letters, digits and _")
    return f"{_PREFIX}-{operation}-{_digest(*(str(part) for part in parts))[:48]}"


def _digest(*parts: str) -> str:
    # The unit separator cannot occur in ids, so ("a", "bc") and ("ab", "c") hash differently.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
