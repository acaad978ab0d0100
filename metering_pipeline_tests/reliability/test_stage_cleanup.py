"""A killed extract leaves nothing behind, and stage tables old extracts left are dropped.

Before, each extract staged its rows in ``metering.raw_usage_stage_<random>``; a SIGKILL skipped
the ``finally`` that dropped it, so the table stayed for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

from metering_pipeline.sources.extract import extract_window
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_extract import HOUR, make_source, query

STAGES_SQL = (
    "select table_name from information_schema.tables "
    "where table_name like '%raw_usage_stage%' order by 1"
)
# The child extracts with a source that hands out one batch, then hangs until it is killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timedelta
    from metering_pipeline.sources import extract
    from metering_pipeline.warehouse import Database

    real = extract.read_usage_batches

    def hanging(**kwargs):
        yield from real(**kwargs)
        print("staged", flush=True)  # the batch is in the stage when the reader is asked again
        time.sleep(600)

    extract.read_usage_batches = hanging
    hour = datetime.fromisoformat(sys.argv[3])
    extract.extract_window(
        source_url=sys.argv[1], source_dir=None, warehouse=Database(sys.argv[2]),
        start=hour, end=hour + timedelta(hours=1), batch_rows=1000,
        first_hour=datetime.fromisoformat("2026-01-01T00:00:00+00:00"),
    )
    """
)


def rows(count: int) -> list[tuple]:
    return [
        (f"e{i}", "customer_0001", "api_calls", "1", HOUR + timedelta(seconds=i))
        for i in range(count)
    ]


def extract(source: str, warehouse_url: str) -> None:
    extract_window(
        source_url=source, source_dir=None, warehouse=Database(warehouse_url), start=HOUR,
        end=HOUR + timedelta(hours=1), batch_rows=1000, first_hour=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip


def test_a_killed_extract_leaves_no_stage_table(tmp_path, warehouse_url):
    source = make_source(tmp_path, rows(50))
    extract(source, warehouse_url)  # the hour's previous extract, which must survive the kill
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, source, warehouse_url, HOUR.isoformat()],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout.readline().strip() == "staged"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert query(warehouse_url, STAGES_SQL) == []
    assert query(warehouse_url, "select count(*) from metering.raw_usage_events") == [(50,)]


def test_stage_tables_left_by_older_extracts_are_dropped_unless_in_use(tmp_path, warehouse_url):
    source = make_source(tmp_path, rows(5))
    extract(source, warehouse_url)
    with Database(warehouse_url).connect() as connection:
        for name in ("raw_usage_stage_0a1b2c3d4e5f", "raw_usage_stage_busy"):
            connection.execute(
                f"create table metering.{name} as select * from metering.raw_usage_events"
            )
    if warehouse_url.startswith("postgresql"):
        # a live extract of the old kind still writes its stage: that one must stay
        with Database(warehouse_url).connect() as busy:
            busy.execute(
                "insert into metering.raw_usage_stage_busy select * from metering.raw_usage_events"
            )
            extract(source, warehouse_url)
            assert query(warehouse_url, STAGES_SQL) == [("raw_usage_stage_busy",)]
    extract(source, warehouse_url)
    assert query(warehouse_url, STAGES_SQL) == []
    assert query(warehouse_url, "select count(*) from metering.raw_usage_events") == [(5,)]
