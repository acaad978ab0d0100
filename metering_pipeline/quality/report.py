"""What the checks read back: counts per hour straight from the tables, and the raw schema.

The checks recount from the tables instead of trusting what validation said it wrote, so a bug
in routing (a row written twice, or not at all) shows up as a failed check.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from metering_pipeline.quality.tables import ReasonCode
from metering_pipeline.sources.reader import PLACED_BY_FIRST_EXTRACT, Placement, count_owned_rows
from metering_pipeline.sources.tables import HELD_ROW_COLUMNS, sql_literal, use_utc
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
    "placed_by": "text",
}
# rows with nothing a bill could use: a window of only these is broken, not merely dirty
UNPARSEABLE: tuple[ReasonCode, ...] = (
    "missing_timestamp",
    "missing_field",
    "unreadable_text",
    "bad_quantity",
)


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


@dataclass(frozen=True)
class SourceRecount:
    """The window's rows in the source, recounted by their own query, against the extract.

    The extract must hold every row that had landed when it began (``arrived``) and nothing
    the source does not give to the window (``total``); rows landing during the extract may
    or may not be in it."""

    arrived: int
    total: int
    extracted: int
    extracted_at: datetime | None

    @property
    def missing(self) -> int:
        return max(self.arrived - self.extracted, 0)

    @property
    def surplus(self) -> int:
        return max(self.extracted - self.total, 0)

    @property
    def adds_up(self) -> bool:
        return self.extracted_at is not None and not self.missing and not self.surplus


def source_recount(
    connection: Connection,
    *,
    source_url: str,
    source_dir: Path | None,
    start: datetime,
    end: datetime,
    first_hour: datetime,
) -> SourceRecount:
    """Recount the source rows ``[start, end)`` owns, as of the window's last extract."""
    use_utc(connection)
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    extracted_at, extracted = connection.fetchone(
        f"select min(extracted_at), (select count(*) from metering.raw_usage_events "
        f"where {window}) from metering.extraction_watermarks where {window}"
    ) or (None, 0)
    if extracted_at is None:
        return SourceRecount(0, 0, int(extracted), None)
    owned = count_owned_rows(
        url=source_url,
        directory=source_dir,
        placement=Placement(start=start, end=end, as_of=extracted_at, first_hour=first_hour),
    )
    held_elsewhere = (
        set(
            connection.fetchall(
                f"select {', '.join(HELD_ROW_COLUMNS)} from metering.raw_usage_events "
                f"where placed_by = {sql_literal(PLACED_BY_FIRST_EXTRACT)} and not ({window})"
            )
        )
        if owned.first_extract
        else set()
    )
    mine = [arrived for row, arrived in owned.first_extract if row not in held_elsewhere]
    return SourceRecount(
        arrived=owned.placed_arrived + sum(mine),
        total=owned.placed_total + len(mine),
        extracted=int(extracted),
        extracted_at=extracted_at,
    )
