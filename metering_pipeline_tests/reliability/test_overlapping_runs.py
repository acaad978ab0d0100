"""Overlapping runs on one DuckDB warehouse: dbt waits for the file like the pipeline does, and
the marts hold every row once both runs are done.

Two processes each materialize the dbt models (``dg.materialize``, which like
``dagster asset materialize`` bypasses the instance's run queue) for their own hour, while this
process holds the warehouse through the pipeline's own connection and writes the second hour's
validated rows. Before the fix the dbt runs failed at once with DuckDB's "Could not set lock on
file" and their hours were missing from the marts until a sequential rerun.
"""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.usage_world import (
    Item,
    at,
    insert_events,
    query,
    write_catalog_rows,
)

REPO = Path(__file__).resolve().parents[2]
HOURS = ("2026-11-06-10:00", "2026-11-06-11:00")
HOLD_AFTER_READY_SECONDS = 5.0
RUN_MODELS = """
import pathlib, sys
from metering_pipeline_tests.integration.usage_world import run_models
url, hour, ready = sys.argv[1:]
pathlib.Path(ready).touch()
run_models(url, hour, hour)
"""


def _events(hour: int, count: int, step: int) -> list[tuple]:
    return [
        (f"h{hour}-{n}", "cus_a", "api_calls", step * n, at(f"2026-11-06 {hour}:{n:02d}:00"))
        for n in range(1, count + 1)
    ]


FIRST_HOUR, SECOND_HOUR = _events(10, 40, 1), _events(11, 30, 2)


def _wait_until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the model runs did not start"
        time.sleep(0.2)


def test_two_overlapping_runs_both_finish_and_the_marts_hold_every_row(duckdb_url, tmp_path):
    write_catalog_rows(
        duckdb_url, {"api_calls": "sum"}, [Item("si_a", "cus_a", "api_calls", at("2026-10-01"))]
    )
    insert_events(duckdb_url, FIRST_HOUR)
    ready = [tmp_path / f"run-{index}.ready" for index in range(len(HOURS))]

    with Database(duckdb_url).connect():
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", RUN_MODELS, duckdb_url, hour, str(flag)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for hour, flag in zip(HOURS, ready, strict=True)
        ]
        _wait_until(lambda: all(flag.exists() for flag in ready), 120)
        time.sleep(HOLD_AFTER_READY_SECONDS)
        # The validation of the second hour, still writing while both runs want dbt.
        insert_events(duckdb_url, SECOND_HOUR)

    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]

    hourly = query(
        duckdb_url,
        "select usage_hour, sum(quantity), sum(event_count) from analytics.fct_usage_hourly "
        "group by usage_hour order by usage_hour",
    )
    assert [(quantity, count) for _, quantity, count in hourly] == [
        (Decimal(sum(e[3] for e in FIRST_HOUR)), len(FIRST_HOUR)),
        (Decimal(sum(e[3] for e in SECOND_HOUR)), len(SECOND_HOUR)),
    ]
    assert query(duckdb_url, "select count(*) from analytics.stg_usage_events") == [
        (len(FIRST_HOUR) + len(SECOND_HOUR),)
    ]
    assert query(
        duckdb_url,
        "select quantity from analytics.fct_usage_by_period where subscription_item_id = 'si_a'",
    ) == [(Decimal(sum(e[3] for e in FIRST_HOUR + SECOND_HOUR)),)]
