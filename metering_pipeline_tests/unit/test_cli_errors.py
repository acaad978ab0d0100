"""A configuration mistake gets one or two lines naming the variable, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metering_pipeline.cli import parse_args


def _run(tmp_path, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("METERING_", "STRIPE_"))
    }
    environment |= {"METERING_HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "metering_pipeline.cli", *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("METERING_PARTITIONS_START", "yesterday", "2026-01-01-00:00"),
        ("METERING_PARTITIONS_START", "2026-01-01-00:30", "on the hour"),
        ("METERING_SCHEDULE_LAG_MINUTES", "1440", "between 0 and 1439"),
        ("METERING_WAREHOUSE_URL", "mysql://x", "duckdb:///"),
        ("METERING_LATE_USAGE_POLICY", "ignore", "hold, invoice_item, write_off"),
    ],
)
def test_bad_setting_is_two_lines_without_traceback(tmp_path, variable, value, says):
    result = _run(tmp_path, ["dev"], **{variable: value})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert variable in result.stderr and says in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    assert result.stdout == ""


def test_debug_shows_the_traceback(tmp_path):
    result = _run(tmp_path, ["--debug", "seed"], METERING_SCHEDULE_LAG_MINUTES="-1")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "SettingsError" in result.stderr


def test_dev_takes_a_port_and_passes_other_options_to_dagster():
    args = parse_args(["dev", "-p", "3001", "--host", "0.0.0.0"])
    assert args.port == 3001
    assert args.dagster_args == ["--host", "0.0.0.0"]


def test_other_commands_refuse_unknown_options():
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["seed", "--bogus"])
    assert exit_info.value.code == 2


def test_an_unreachable_warehouse_is_named_before_anything_runs(tmp_path):
    url = "postgresql://metering:s3cret-pw@127.0.0.1:1/warehouse"
    result = _run(tmp_path, ["dev"], METERING_WAREHOUSE_URL=url)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "METERING_WAREHOUSE_URL: cannot connect to" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 2
