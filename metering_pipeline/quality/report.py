"""What the checks read back: counts per hour straight from the tables, and the raw schema.

The checks recount from the tables instead of trusting what validation said it wrote, so a bug
in routing (a row written twice, or not at all) shows up as a failed check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from metering_pipeline.sources.tables import sql_literal, use_utc
from metering_pipeline.warehouse import Connection

RAW_TYPES = {
    "event_id": "text",
    "customer_id": "text",
    "meter": "text",
    "quantity": "text",
    "occurred_at": "timestamp",
    "received_at": "timestamp",
    "reason": "text",
    "properties": "text",
    "partition_hour": "timestamp",
    "extracted_at": "timestamp",
}
UNPARSEABLE = ("missing_field", "bad_quantity")


@dataclass(frozen=True)
class HourCounts:
    partition_hour: datetime
    extracted: int
    accepted: int
    quarantined: int

    @property
    def adds_up(self) -> bool:
        return self.extracted == self.accepted + self.quarantined


@dataclass(frozen=True)
class WindowCounts:
    hours: tuple[HourCounts, ...]
    by_reason: dict[str, int]

    @property
    def extracted(self) -> int:
        return sum(h.extracted for h in self.hours)

    @property
    def accepted(self) -> int:
        return sum(h.accepted for h in self.hours)

    @property
    def quarantined(self) -> int:
        return sum(h.quarantined for h in self.hours)

    @property
    def quarantine_share(self) -> float:
        return self.quarantined / self.extracted if self.extracted else 0.0


def window_counts(connection: Connection, start: datetime, end: datetime) -> WindowCounts:
    use_utc(connection)
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    rows = connection.fetchall(
        f"""
        with raw as (
            select partition_hour, count(*) as n from metering.raw_usage_events
            where {window} group by partition_hour
        ),
        accepted as (
            select partition_hour, count(*) as n from metering.accepted_usage_events
            where {window} group by partition_hour
        ),
        quarantined as (
            select partition_hour, count(*) as n from metering.quarantined_usage_events
            where {window} group by partition_hour
        ),
        hours as (
            select partition_hour from raw
            union select partition_hour from accepted
            union select partition_hour from quarantined
        )
        select hours.partition_hour, coalesce(raw.n, 0), coalesce(accepted.n, 0),
            coalesce(quarantined.n, 0)
        from hours
        left join raw on raw.partition_hour = hours.partition_hour
        left join accepted on accepted.partition_hour = hours.partition_hour
        left join quarantined on quarantined.partition_hour = hours.partition_hour
        order by hours.partition_hour
        """
    )
    by_reason = connection.fetchall(
        f"select reason_code, count(*) from metering.quarantined_usage_events where {window} "
        "group by reason_code order by reason_code"
    )
    return WindowCounts(
        hours=tuple(HourCounts(row[0], int(row[1]), int(row[2]), int(row[3])) for row in rows),
        by_reason={code: int(count) for code, count in by_reason},
    )


def raw_schema_problems(connection: Connection) -> list[str]:
    """Differences between ``metering.raw_usage_events`` and its contract, as sentences."""
    rows = connection.fetchall(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = 'metering' and table_name = 'raw_usage_events'"
    )
    found = {name: type_name.lower() for name, type_name in rows}
    problems = []
    for name, family in RAW_TYPES.items():
        if name not in found:
            problems.append(f"column {name} is missing")
        elif family == "text" and found[name] not in ("text", "varchar", "character varying"):
            problems.append(f"column {name} is {found[name]}, expected text")
        elif family == "timestamp" and not found[name].startswith("timestamp"):
            problems.append(f"column {name} is {found[name]}, expected timestamptz")
    problems.extend(f"unexpected column {name}" for name in found.keys() - RAW_TYPES.keys())
    return problems
