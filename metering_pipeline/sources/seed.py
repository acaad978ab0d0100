"""Synthetic usage for the source table, generated in SQL inside DuckDB and repeatable by seed.

Every random choice is a hash of (row number, seed, purpose), so the same arguments give the same
rows on any machine. The table is created without NOT NULL constraints on purpose: the hostile
cases model an application that does send broken rows, which the pipeline must quarantine.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv

from metering_pipeline.settings import load_settings
from metering_pipeline.sources.reader import SOURCE_TABLE, redact
from metering_pipeline.sources.tables import RAW_COLUMNS, use_utc
from metering_pipeline.warehouse import Database

# Share of the base events each hostile case adds (at least one row of each case).
HOSTILE_SHARE = {
    "duplicates": 0.004,
    "conflicts": 0.001,
    "late": 0.005,
    "malformed": 0.002,
    "refunds": 0.002,
    "boundaries": 0.001,
}
MALFORMED_KINDS = 7
COPY_BATCH_ROWS = 500_000

_DDL = {
    "duckdb": f"""
        create table if not exists {SOURCE_TABLE} (
            event_id varchar, customer_id varchar, meter varchar, quantity decimal(38, 12),
            occurred_at timestamptz, received_at timestamptz, reason varchar, properties varchar
        )""",
    "postgres": f"""
        create table if not exists {SOURCE_TABLE} (
            event_id text, customer_id text, meter text, quantity numeric,
            occurred_at timestamptz, received_at timestamptz, reason text, properties jsonb
        )""",
}


@dataclass(frozen=True)
class SeedSummary:
    url: str
    rows: int
    seconds: float
    start: datetime
    end: datetime
    customers: int
    meters: tuple[str, ...]
    hostile_rows: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else float("inf")


def customer_id(number: int, customers: int) -> str:
    """``customer_0001``: the application key the seed gives customer ``number`` (1-based)."""
    return f"customer_{number:0{_width(customers)}d}"


def _width(customers: int) -> int:
    return max(4, len(str(customers)))


def seed_usage(
    url: str,
    *,
    customers: int = 50,
    meters: tuple[str, ...] | list[str] = ("api_calls", "storage_gb"),
    start: datetime,
    days: int = 30,
    events: int = 100_000,
    seed: int = 42,
    hostile: bool = False,
    replace: bool = False,
) -> SeedSummary:
    """Append ``events`` usage rows (plus the hostile cases when asked) to ``usage_events``."""
    meters = tuple(meters)
    if customers < 1 or days < 1 or events < 1 or not meters:
        raise ValueError("seed needs at least one customer, one meter, one day and one event")
    start = start.astimezone(UTC) if start.tzinfo else start.replace(tzinfo=UTC)
    end = start + timedelta(days=days)
    counts = (
        {name: max(1, int(events * share)) for name, share in HOSTILE_SHARE.items()}
        if hostile
        else {}
    )
    sql = _generator_sql(customers, meters, start, days, events, seed, counts)
    database = Database(url)
    began = time.perf_counter()
    with database.connect() as connection:
        use_utc(connection)
        connection.execute(_DDL[database.kind])
        if replace:
            connection.execute(f"delete from {SOURCE_TABLE}")
        if database.kind == "duckdb":
            connection.execute(f"insert into {SOURCE_TABLE} ({', '.join(RAW_COLUMNS)}) {sql}")
        else:
            _copy_to_postgres(connection.raw, sql)
    seconds = time.perf_counter() - began
    return SeedSummary(
        url=redact(url),
        rows=events + sum(counts.values()),
        seconds=seconds,
        start=start,
        end=end,
        customers=customers,
        meters=meters,
        hostile_rows=counts,
    )


def _copy_to_postgres(raw, sql: str) -> None:
    """Generate in an in-memory DuckDB and COPY the CSV text into PostgreSQL batch by batch."""
    generator = duckdb.connect()
    try:
        generator.execute("set timezone = 'UTC'")
        reader = generator.sql(sql).to_arrow_reader(COPY_BATCH_ROWS)
        options = pa_csv.WriteOptions(include_header=False)
        with (
            raw.cursor() as cursor,
            cursor.copy(
                f"copy {SOURCE_TABLE} ({', '.join(RAW_COLUMNS)}) from stdin with (format csv)"
            ) as copy,
        ):
            for batch in reader:
                buffer = io.BytesIO()
                pa_csv.write_csv(pa.Table.from_batches([batch]), buffer, options)
                copy.write(buffer.getvalue())
    finally:
        generator.close()


def _uniform(hash_column: str, high: bool) -> str:
    """A uniform value in [0, 1) from one half of a 64-bit row hash: repeatable, parallel-safe."""
    bits = f"({hash_column} >> 32)" if high else f"({hash_column} & 4294967295)"
    return f"({bits} / 4294967296.0)"


def _rows_sql(
    index_source: str,
    customers: int,
    meters: tuple[str, ...],
    start: datetime,
    days: int,
    seed: int,
) -> str:
    """The regular events for the row numbers ``i`` of ``index_source``; two hashes per row.

    ``h2`` is re-hashed: DuckDB combines the hashes of a tuple by XOR, so ``hash(i, s, 1)`` and
    ``hash(i, s, 2)`` differ by a constant and would tie each customer to a slice of the month.
    """
    meter_list = "[" + ", ".join(_quote(m) for m in meters) + "]"
    decimal_meters = [m for m in meters if any(k in m for k in ("gb", "hour", "second"))]
    decimal_list = "[" + ", ".join(_quote(m) for m in decimal_meters) + "]"
    span_us = days * 86_400_000_000
    # Heavier users are rarer: a power law over customer numbers, as in real SaaS usage.
    return f"""
        select
            picked.*,
            'evt_{seed}_' || i as event_id,
            'customer_' || lpad(cast(1 + least({customers - 1},
                cast(floor({customers} * pow({_uniform("h1", False)}, 1.6)) as bigint))
                as varchar), {_width(customers)}, '0') as customer_id,
            meter,
            case when list_contains({decimal_list}, meter)
                then cast(round(0.001 + {_uniform("h1", True)} * 50, 3) as decimal(38, 12))
                else cast(1 + floor({_uniform("h1", True)} * 100) as decimal(38, 12))
            end as quantity,
            occurred_at,
            occurred_at + to_microseconds(cast((h2 >> 33) % 120000000 as bigint)) as received_at,
            case when (h2 >> 32) % 2 = 0 then '{{"region": "eu"}}' else '{{"region": "us"}}' end
                as properties
        from (
            select
                *,
                timestamptz '{start.isoformat()}'
                    + to_microseconds(cast(floor({_uniform("h2", False)} * {span_us}) as bigint))
                    as occurred_at,
                {meter_list}[1 + cast((h2 >> 56) % {len(meters)} as bigint)] as meter
            from (select *, hash(i, {seed}, 1) as h1, hash(hash(i, {seed}, 2)) as h2
                from {index_source})
        ) as picked
    """


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _generator_sql(
    customers: int,
    meters: tuple[str, ...],
    start: datetime,
    days: int,
    events: int,
    seed: int,
    counts: dict[str, int],
) -> str:
    def rows(index_source: str) -> str:
        return _rows_sql(index_source, customers, meters, start, days, seed)

    selects = [
        "select event_id, customer_id, meter, quantity, occurred_at, received_at, "
        f"cast(null as varchar) as reason, properties from ({rows(f'range({events}) as t(i)')})"
    ]
    hostile = {
        # same event again, same content, landing an hour later: harmless, deduplicated by dbt
        "duplicates": "event_id, customer_id, meter, quantity, occurred_at, "
        "received_at + interval 1 hour, null, properties",
        # same event id, another quantity, landing later: the first received one wins
        "conflicts": "event_id, customer_id, meter, quantity + 1, occurred_at, "
        "received_at + interval 2 hour, null, properties",
        # a new event that lands two days after it happened: late-arrival detection
        "late": "'evt_{seed}_late_' || j, customer_id, meter, quantity, occurred_at, "
        "occurred_at + interval 2 day, null, properties",
        # a refund or correction: negative, with its reason, accepted and subtracted
        "refunds": "'evt_{seed}_refund_' || j, customer_id, meter, -quantity, occurred_at, "
        "received_at + interval 3 hour, case when j % 2 = 0 then 'refund' else 'correction' end, "
        "properties",
        # exactly on an hour boundary, and one microsecond before one
        "boundaries": "'evt_{seed}_edge_' || j, customer_id, meter, quantity, "
        "date_trunc('hour', occurred_at) - case when j % 2 = 0 then interval 0 second "
        "else interval 1 microsecond end, received_at, null, properties",
        "malformed": f"""'evt_{{seed}}_bad_' || j,
            case when j % {MALFORMED_KINDS} = 0 then null
                 when j % {MALFORMED_KINDS} = 4 then 'customer_unmapped' else customer_id end,
            case when j % {MALFORMED_KINDS} = 1 then null
                 when j % {MALFORMED_KINDS} = 3 then 'unknown_meter' else meter end,
            case when j % {MALFORMED_KINDS} = 2 then null
                 when j % {MALFORMED_KINDS} = 5 then 10000000000000
                 when j % {MALFORMED_KINDS} = 6 then -quantity else quantity end,
            occurred_at, received_at, null, properties""",
    }
    for purpose, (name, count) in enumerate(counts.items(), start=10):
        columns = hostile[name].replace("{seed}", str(seed))
        picked = (
            f"(select cast(hash(j, {seed}, {purpose}) % {events} as bigint) as i, j "
            f"from range({count}) as h(j))"
        )
        selects.append(f"select {columns} from ({rows(picked)})")
    return " union all ".join(selects)


def seed_command(args: argparse.Namespace) -> None:
    """``metering seed``: write the rows and say how many, how fast, and where."""
    url = args.url or load_settings().source_url
    start = (
        datetime.fromisoformat(args.start)
        if args.start
        else datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        - timedelta(days=args.days)
    )
    summary = seed_usage(
        url,
        customers=args.customers,
        meters=[m.strip() for m in args.meters.split(",") if m.strip()],
        start=start,
        days=args.days,
        events=args.events,
        seed=args.seed,
        hostile=args.hostile,
        replace=args.replace,
    )
    print(
        f"wrote {summary.rows:,} rows to {SOURCE_TABLE} at {summary.url} "
        f"in {summary.seconds:.2f} s "
        f"({summary.rows_per_second:,.0f} rows/s); occurred_at in "
        f"[{summary.start.isoformat()}, {summary.end.isoformat()}), "
        f"{summary.customers} customers, meters {', '.join(summary.meters)}"
    )
    if summary.hostile_rows:
        cases = ", ".join(f"{name} {count:,}" for name, count in summary.hostile_rows.items())
        print(f"hostile rows: {cases}")
