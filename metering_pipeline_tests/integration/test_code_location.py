"""The code location loads as `dagster dev` loads it, and every part a user looks for is there."""

from __future__ import annotations

import os
import subprocess
import sys

EXPECTED_JOBS = {"hourly_usage", "stripe_catalog_sync", "period_reconciliation", "repair"}
EXPECTED_SCHEDULES = {"hourly_usage_schedule"}
EXPECTED_SENSORS = {"late_usage_rows", "stripe_events"}
EXPECTED_CHECKS = {"counts_add_up", "stripe_agrees_with_usage", "meter_events_delivered"}


def test_the_definitions_module_resolves_every_job_schedule_sensor_and_check():
    from metering_pipeline.definitions import defs

    repo = defs.get_repository_def()
    jobs = {job.name for job in repo.get_all_jobs()}  # resolving builds every job
    assert jobs >= EXPECTED_JOBS
    assert {schedule.name for schedule in repo.schedule_defs} >= EXPECTED_SCHEDULES
    assert {sensor.name for sensor in repo.sensor_defs} >= EXPECTED_SENSORS
    checks = {key.name for key in repo.asset_graph.asset_check_keys}
    assert checks >= EXPECTED_CHECKS
    assets = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert {"raw_usage_events", "fct_usage_by_period", "stripe_meter_events"} <= assets
    assert "billing_period_reconciliation" in assets


def test_dagster_validates_the_code_location_from_pyproject(tmp_path):
    """`dagster definitions validate` loads the module named in pyproject.toml, as the UI does."""
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m",
         "metering_pipeline.definitions"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "DAGSTER_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
