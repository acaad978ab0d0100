"""Quality tables of docs/architecture.md, and the catalog tables validation reads.

The catalog sync owns ``stripe_meters`` and ``stripe_customers``; they are created here only if
missing (same columns as the doc), so validation can run before the first sync and says
"unknown meter" instead of failing on a missing table.
"""

from __future__ import annotations

from typing import Literal, get_args

from metering_pipeline.warehouse import Connection

ReasonCode = Literal[
    "missing_timestamp",
    "out_of_range",
    "missing_field",
    "unreadable_text",
    "event_id_too_long",
    "bad_quantity",
    "quantity_out_of_bounds",
    "negative_without_reason",
    "outside_partition",
    "in_future",
    "unknown_meter",
    "unmapped_customer",
    "conflicting_duplicate",
]
# Every quarantine reason, in the order the rules try them: the routing SQL, the checks and
# docs/architecture.md use these names and no others (a unit test holds the doc to this list).
REASON_CODES: tuple[ReasonCode, ...] = get_args(ReasonCode)


def reason(code: ReasonCode) -> str:
    """A reason code as a SQL literal; an unknown name fails here, not in a quarantine table."""
    if code not in REASON_CODES:
        raise ValueError(f"{code!r} is no reason code; known: {', '.join(REASON_CODES)}")
    return f"'{code}'"


_QUALITY_DDL = (
    """
    create table if not exists metering.accepted_usage_events (
        event_id text not null,
        customer_id text not null,
        stripe_customer_id text not null,
        meter text not null,
        quantity decimal(38, 12) not null,
        occurred_at timestamptz not null,
        received_at timestamptz not null,
        reason text,
        partition_hour timestamptz not null
    )
    """,
    """
    create table if not exists metering.quarantined_usage_events (
        event_id text,
        customer_id text,
        meter text,
        quantity text,
        occurred_at timestamptz,
        received_at timestamptz,
        reason text,
        properties text,
        partition_hour timestamptz not null,
        reason_code text not null,
        quarantine_reason text not null,
        quarantined_at timestamptz not null
    )
    """,
    """
    create table if not exists metering.partition_quality (
        partition_hour timestamptz not null primary key,
        extracted bigint not null,
        accepted bigint not null,
        quarantined bigint not null,
        duplicates bigint not null,
        validated_at timestamptz not null
    )
    """,
)

_CATALOG_DDL = (
    """
    create table if not exists metering.stripe_customers (
        stripe_customer_id text not null,
        metering_customer_id text,
        test_clock text,
        email text,
        synced_at timestamptz
    )
    """,
    """
    create table if not exists metering.stripe_meters (
        meter_id text not null,
        event_name text not null,
        display_name text,
        formula text,
        event_time_window text,
        status text,
        aggregation_mode text,
        synced_at timestamptz
    )
    """,
)


def ensure_quality_tables(connection: Connection) -> None:
    connection.ensure_schema()
    for statement in (*_QUALITY_DDL, *_CATALOG_DDL):
        connection.execute(statement)
