"""Row routing: every raw row of a window goes to accepted or to quarantine with a reason.

All of it is one SQL statement in the warehouse (no Python loop over rows), so a month of
events validates at the database's speed. Re-validating a window deletes its previous output
in the same transaction: the result depends only on the raw rows and the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from metering_pipeline.quality.corrections import hold_catalog_corrections
from metering_pipeline.quality.tables import ensure_quality_tables, reason
from metering_pipeline.sources.reader import PLACED_BY_OCCURRED, PLACED_BY_RECEIVED
from metering_pipeline.sources.tables import ensure_extract_tables, sql_literal, use_utc
from metering_pipeline.warehouse import Connection

# Spelled without "?" and "%": warehouse.Connection turns "?" into psycopg placeholders.
NUMBER_PATTERN = r"[+-]{0,1}([0-9]+([.][0-9]*){0,1}|[.][0-9]+)([eE][+-]{0,1}[0-9]+){0,1}"
# The largest magnitude decimal(38, 12) holds; beyond it a value is out of bounds whatever
# the settings say, rather than an overflow error.
DECIMAL_LIMIT = Decimal("1e26")
CLOCK_SKEW = "interval '5 minutes'"
# U+FFFD: the extract's stand-in for a NUL byte, which the warehouse cannot store.
REPLACEMENT_CHAR = "chr(65533)"
# Concurrent validations of overlapping windows would both delete, then both insert.
LOCK_KEY = "metering.validated_usage_events"


@dataclass(frozen=True)
class ValidationRules:
    quantity_min: Decimal
    quantity_max: Decimal
    customer_metadata_key: str
    # Longer event ids are quarantined (event_id_too_long): an idempotency key that long is a
    # producer bug (a payload pasted into the id), and no row should bill on it unseen.
    event_id_max_length: int = 255


@dataclass(frozen=True)
class ValidationSummary:
    extracted: int
    accepted: int
    quarantined: int
    duplicates: int
    by_reason: dict[str, int] = field(default_factory=dict)


def dialect_expressions(kind: str) -> dict[str, str]:
    """The three expressions the engines spell differently; everything else is shared SQL."""
    if kind == "duckdb":
        return {
            "is_number": f"coalesce(regexp_full_match(trim(quantity), '{NUMBER_PATTERN}'), false)",
            "as_double": "try_cast(trim(quantity) as double)",
            "as_decimal": "try_cast(trim(quantity) as decimal(38, 12))",
            "id_hash": "hash(event_id)",
        }
    return {
        "is_number": f"coalesce(trim(quantity) ~ '^{NUMBER_PATTERN}$', false)",
        "as_double": f"case when trim(quantity) ~ '^{NUMBER_PATTERN}$' "
        "then cast(trim(quantity) as double precision) end",
        "as_decimal": f"case when trim(quantity) ~ '^{NUMBER_PATTERN}$' and "
        f"abs(cast(trim(quantity) as double precision)) < 1e26 "
        "then cast(trim(quantity) as decimal(38, 12)) end",
        "id_hash": "hashtextextended(event_id, 0)",
    }


def routing_sql(
    kind: str, start: datetime, end: datetime, now: datetime, rules: ValidationRules
) -> str:
    """The statement that classifies the window's rows into ``_routed`` (one row per raw row)."""
    d = dialect_expressions(kind)
    low, high = rules.quantity_min, rules.quantity_max
    hour = "cast(partition_hour as varchar)"
    rerun = "' and re-run partition hour ' || " + hour + " || '.'"
    quote = sql_literal("'")
    by_occurred, by_received = sql_literal(PLACED_BY_OCCURRED), sql_literal(PLACED_BY_RECEIVED)
    placed_how = (
        f"case placed when {by_received} then 'the hour of its received_at' "
        "else 'the first extract that read it, which keeps it there' end"
    )
    return f"""
create temp table _routed as
with
raw as (
    select * from metering.raw_usage_events
),

in_window as (
    select * from raw
    where partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}
),

-- rows of other hours that share an event_id with this window: duplicates span partitions.
-- Matching on a 64-bit hash keeps the lookup small; a collision only brings in an extra row
-- from outside the window, which is never written.
related as (
    select * from in_window
    union all
    select * from raw
    where (partition_hour < {sql_literal(start)} or partition_hour >= {sql_literal(end)})
        and {d["id_hash"]} in (select {d["id_hash"]} from in_window)
),

meters as (
    select distinct event_name from metering.stripe_meters
),

customer_map as (
    select
        metering_customer_id,
        min(stripe_customer_id) as stripe_customer_id,
        count(distinct stripe_customer_id) as matches
    from metering.stripe_customers
    where metering_customer_id is not null
    group by metering_customer_id
),

literal_customers as (
    select distinct stripe_customer_id from metering.stripe_customers
),

parsed as (
    select
        related.*,
        {d["is_number"]} as quantity_is_number,
        {d["as_double"]} as quantity_double,
        {d["as_decimal"]} as quantity_decimal,
        concat_ws(', ',
            case when coalesce(trim(event_id), '') = '' then 'event_id' end,
            case when coalesce(trim(customer_id), '') = '' then 'customer_id' end,
            case when coalesce(trim(meter), '') = '' then 'meter' end,
            case when coalesce(trim(quantity), '') = '' then 'quantity' end
        ) as missing_fields,
        concat_ws(' and ',
            case when occurred_at is null then 'occurred_at' end,
            case when received_at is null then 'received_at' end
        ) as missing_timestamps,
        -- rows placed before this column existed were placed by occurred_at or received_at
        coalesce(placed_by, case when occurred_at is null then {by_received}
            else {by_occurred} end) as placed,
        strpos(concat_ws('', event_id, customer_id, meter, quantity, reason),
            {REPLACEMENT_CHAR}) > 0 as has_unreadable_text,
        coalesce(
            customer_map.stripe_customer_id,
            case when left(related.customer_id, 4) = 'cus_'
                then literal_customers.stripe_customer_id end
        ) as stripe_customer_id,
        coalesce(customer_map.matches, 0) as customer_matches,
        meters.event_name is not null as meter_known
    from related
    left join customer_map on customer_map.metering_customer_id = related.customer_id
    left join literal_customers on literal_customers.stripe_customer_id = related.customer_id
    left join meters on meters.event_name = related.meter
),

checked as (
    select
        parsed.*,
        case
            when missing_timestamps <> '' then {reason("missing_timestamp")}
            when placed <> {by_occurred} then {reason("out_of_range")}
            when missing_fields <> '' then {reason("missing_field")}
            when has_unreadable_text then {reason("unreadable_text")}
            when length(event_id) > {rules.event_id_max_length}
                then {reason("event_id_too_long")}
            when not quantity_is_number then {reason("bad_quantity")}
            when quantity_double < {low} or quantity_double > {high}
                or abs(quantity_double) >= {DECIMAL_LIMIT} then {reason("quantity_out_of_bounds")}
            when quantity_double < 0 and coalesce(trim(reason), '') = ''
                then {reason("negative_without_reason")}
            when occurred_at < partition_hour or occurred_at >= partition_hour + interval '1 hour'
                then {reason("outside_partition")}
            when occurred_at > {sql_literal(now)} + {CLOCK_SKEW}
                or received_at > {sql_literal(now)} + {CLOCK_SKEW} then {reason("in_future")}
            when not meter_known then {reason("unknown_meter")}
            when customer_matches > 1 or stripe_customer_id is null
                then {reason("unmapped_customer")}
        end as reason_code
    from parsed
),

-- among rows that pass every other rule, the first received of an event_id wins; only ids
-- seen more than once need the costly ordering, the rest are first by definition
valid as (
    select * from checked where reason_code is null
),

-- grouping 10M ids by hash is far lighter than by text; a collision only sends a few more
-- rows through the ordering below, which partitions by the id itself
repeated as (
    select {d["id_hash"]} as id_hash from valid group by {d["id_hash"]} having count(*) > 1
),

ranked as (
    select
        valid.*,
        row_number() over arrival as arrival_rank,
        first_value(customer_id) over arrival as first_customer_id,
        first_value(meter) over arrival as first_meter,
        first_value(quantity_decimal) over arrival as first_quantity,
        first_value(quantity) over arrival as first_quantity_text,
        first_value(occurred_at) over arrival as first_occurred_at,
        first_value(received_at) over arrival as first_received_at,
        first_value(reason) over arrival as first_reason,
        first_value(partition_hour) over arrival as first_partition_hour
    from valid
    where {d["id_hash"]} in (select id_hash from repeated)
    window arrival as (
        partition by event_id
        order by received_at, partition_hour, occurred_at, customer_id, meter, quantity_decimal,
            reason, quantity
    )
),

judged as (
    select
        ranked.*,
        arrival_rank > 1 and not (
            customer_id = first_customer_id
            and meter = first_meter
            and quantity_decimal = first_quantity
            and occurred_at = first_occurred_at
            and reason is not distinct from first_reason
        ) as is_conflict
    from ranked
),

routed as (
    select
        event_id, customer_id, meter, quantity, occurred_at, received_at, reason, properties,
        partition_hour, stripe_customer_id, quantity_decimal,
        case when is_conflict then {reason("conflicting_duplicate")} end as reason_code,
        case when is_conflict then
            'event_id ' || {quote} || event_id || {quote} || ' was first received at '
            || cast(first_received_at as varchar) || ' (partition hour '
            || cast(first_partition_hour as varchar) || ') with customer_id '
            || first_customer_id || ', meter ' || first_meter || ', quantity '
            || first_quantity_text || ', occurred_at ' || cast(first_occurred_at as varchar)
            || '; this row differs, so the first is billed and this one is held. If the first '
            || 'was wrong, send a correction with a new event_id and a reason.'
        end as quarantine_reason,
        not is_conflict and arrival_rank > 1 as is_duplicate
    from judged

    union all

    select
        event_id, customer_id, meter, quantity, occurred_at, received_at, reason, properties,
        partition_hour, stripe_customer_id, quantity_decimal,
        cast(null as varchar) as reason_code,
        cast(null as varchar) as quarantine_reason,
        false as is_duplicate
    from valid
    where {d["id_hash"]} not in (select id_hash from repeated)

    union all

    select
        event_id, customer_id, meter, quantity, occurred_at, received_at, reason, properties,
        partition_hour, stripe_customer_id, quantity_decimal, reason_code,
        case reason_code
            when {reason("missing_timestamp")} then missing_timestamps || ' of event '
                || coalesce(event_id, '(no event_id)') || ' is missing or unreadable, so the row '
                || 'is kept in partition hour ' || {hour} || ' (' || {placed_how}
                || '); fix the timestamp in the source and re-run this hour and the hour of the '
                || 'corrected time.'
            when {reason("out_of_range")} then 'occurred_at ' || cast(occurred_at as varchar)
                || ' of event ' || coalesce(event_id, '(no event_id)') || ' is '
                || case when received_at is not null
                    and occurred_at > received_at + {CLOCK_SKEW}
                    then 'after its received_at ' || cast(received_at as varchar)
                        || ' (beyond 5 minutes of clock skew)'
                    else 'before the first partition (METERING_PARTITIONS_START) or after the '
                        || 'extract that read it' end
                || ', so no hour can bill it; it is kept in partition hour ' || {hour} || ' ('
                || {placed_how} || '). Fix occurred_at in the source and re-run this hour and '
                || 'the hour of the corrected time.'
            when {reason("missing_field")} then 'Required field(s) ' || missing_fields
                || ' empty in event ' || coalesce(event_id, '(no event_id)')
                || '; fill them in the source' || {rerun}
            when {reason("unreadable_text")} then 'event ' || event_id || ' holds a NUL byte '
                || 'or an undecodable character (shown as U+FFFD) in event_id, customer_id, meter,'
                || ' quantity or reason, which cannot be billed as delivered; fix the row in the'
                || ' source' || {rerun}
            when {reason("event_id_too_long")} then 'event_id of ' || cast(length(event_id)
                as varchar) || ' characters (starting ' || {quote} || left(event_id, 40)
                || {quote} || ') is longer than {rules.event_id_max_length} '
                || '(METERING_EVENT_ID_MAX_LENGTH); send a shorter idempotency key' || {rerun}
            when {reason("bad_quantity")} then 'quantity ' || {quote} || quantity || {quote}
                || ' of event ' || event_id || ' is not a finite decimal number; correct it in the'
                || ' source' || {rerun}
            when {reason("quantity_out_of_bounds")} then 'quantity ' || quantity
                || ' of event ' || event_id || ' is outside [{low}, {high}] '
                || '(METERING_QUANTITY_MIN/MAX); correct the row or widen the bounds' || {rerun}
            when {reason("negative_without_reason")} then 'quantity ' || quantity || ' of event '
                || event_id || ' is negative but reason is empty; negative usage is accepted only'
                || ' as a refund or correction, so set reason (e.g. refund) in the source'
                || {rerun}
            when {reason("outside_partition")} then 'occurred_at ' || cast(occurred_at as varchar)
                || ' of event ' || event_id || ' is outside partition hour ' || {hour}
                || '; re-extract the hour that contains it.'
            when {reason("in_future")} then 'occurred_at ' || cast(occurred_at as varchar)
                || ' or received_at ' || cast(received_at as varchar) || ' of event '
                || event_id || ' is after the validation time ' || {sql_literal(now.isoformat())}
                || ' (beyond 5 minutes of clock skew); fix the timestamp in the source'
                || {rerun}
            when {reason("unknown_meter")} then 'meter ' || {quote} || meter || {quote}
                || ' of event ' || event_id || ' is no Stripe billing meter event_name in'
                || ' metering.stripe_meters; create the meter in Stripe or fix the name, sync the'
                || ' catalog' || {rerun}
            when {reason("unmapped_customer")} then 'customer_id ' || {quote} || customer_id
                || {quote} || ' of event ' || event_id || case when customer_matches > 1
                    then ' matches ' || cast(customer_matches as varchar)
                        || ' Stripe customers; keep metadata '
                        || {sql_literal(rules.customer_metadata_key)} || ' on exactly one'
                    else ' maps to no Stripe customer; set metadata '
                        || {sql_literal(rules.customer_metadata_key)} || '=' || customer_id
                        || ' on the Stripe customer (or send a cus_ id)'
                end || ', sync the catalog' || {rerun}
        end as quarantine_reason,
        false as is_duplicate
    from checked
    where reason_code is not null
)

select * from routed
where partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}
"""


def validate_window(
    connection: Connection, start: datetime, end: datetime, now: datetime, rules: ValidationRules
) -> ValidationSummary:
    """Replace the window's accepted, quarantined and partition_quality rows; return counts."""
    with connection.advisory_lock(LOCK_KEY):
        return _replace_window(connection, start, end, now, rules)


def _replace_window(
    connection: Connection, start: datetime, end: datetime, now: datetime, rules: ValidationRules
) -> ValidationSummary:
    use_utc(connection)
    ensure_extract_tables(connection)
    ensure_quality_tables(connection)
    window = f"partition_hour >= {sql_literal(start)} and partition_hour < {sql_literal(end)}"
    connection.execute("drop table if exists _routed")
    connection.execute(routing_sql(connection.kind, start, end, now, rules))
    hold_catalog_corrections(connection, start, end, now)
    for table in ("accepted_usage_events", "quarantined_usage_events", "partition_quality"):
        connection.execute(f"delete from metering.{table} where {window}")
    connection.execute(
        """
        insert into metering.accepted_usage_events (event_id, customer_id, stripe_customer_id,
            meter, quantity, occurred_at, received_at, reason, partition_hour)
        select event_id, customer_id, stripe_customer_id, meter, quantity_decimal, occurred_at,
            received_at, reason, partition_hour
        from _routed
        where reason_code is null
        """
    )
    connection.execute(
        f"""
        insert into metering.quarantined_usage_events (event_id, customer_id, meter, quantity,
            occurred_at, received_at, reason, properties, partition_hour, reason_code,
            quarantine_reason, quarantined_at)
        select event_id, customer_id, meter, quantity, occurred_at, received_at, reason,
            properties, partition_hour, reason_code, quarantine_reason, {sql_literal(now)}
        from _routed
        where reason_code is not null
        """
    )
    connection.execute(
        f"""
        insert into metering.partition_quality (partition_hour, extracted, accepted, quarantined,
            duplicates, validated_at)
        with counts as (
            select
                partition_hour,
                count(*) as extracted,
                sum(case when reason_code is null then 1 else 0 end) as accepted,
                sum(case when reason_code is not null then 1 else 0 end) as quarantined,
                sum(case when is_duplicate then 1 else 0 end) as duplicates
            from _routed
            group by partition_hour
        )
        select
            watermarks.partition_hour,
            coalesce(counts.extracted, 0),
            coalesce(counts.accepted, 0),
            coalesce(counts.quarantined, 0),
            coalesce(counts.duplicates, 0),
            {sql_literal(now)}
        from metering.extraction_watermarks as watermarks
        left join counts on counts.partition_hour = watermarks.partition_hour
        where watermarks.partition_hour >= {sql_literal(start)}
            and watermarks.partition_hour < {sql_literal(end)}
        """
    )
    by_reason = dict(
        connection.fetchall(
            "select reason_code, count(*) from _routed where reason_code is not null "
            "group by reason_code order by reason_code"
        )
    )
    totals = connection.fetchone(
        "select count(*), coalesce(sum(case when is_duplicate then 1 else 0 end), 0) from _routed"
    )
    connection.execute("drop table _routed")
    extracted, duplicates = (int(totals[0]), int(totals[1])) if totals else (0, 0)
    quarantined = sum(int(v) for v in by_reason.values())
    return ValidationSummary(
        extracted=extracted,
        accepted=extracted - quarantined,
        quarantined=quarantined,
        duplicates=duplicates,
        by_reason={k: int(v) for k, v in by_reason.items()},
    )
