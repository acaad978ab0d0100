"""One rule for instants across billing: aware datetimes only, compared in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(moment: datetime, name: str) -> datetime:
    """``moment`` in UTC; a naive datetime is refused, since guessing its zone shifts usage."""
    if moment.tzinfo is None:
        raise ValueError(
            f"{name}={moment.isoformat()} has no time zone; pass an aware UTC datetime"
        )
    return moment.astimezone(UTC)
