"""A push run killed while it holds the only ``stripe_push`` slot must not block every later push.

End to end with the real daemon: ``dagster-daemon run`` in a subprocess against a temporary
DAGSTER_HOME holding the project's own ``dagster.yaml``, runs launched through the run queue
(``dagster job launch``), the run worker of the first run killed with SIGKILL while its step
holds the slot, and a second push run waiting on that slot. Calling the monitoring functions
directly would skip the part that failed in production: that the shipped config starts the
monitoring daemon at all, and with timings that free the slot promptly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.config import dagster_instance_config

from metering_pipeline.defs.automation.jobs import PERIOD_TAG, WAREHOUSE_TAG
from metering_pipeline.instance import INSTANCE_TEMPLATE, prepare_dagster_home
from metering_pipeline.settings import load_settings
from metering_pipeline_tests.reliability import pool_holder

REPO = Path(__file__).resolve().parents[2]
DEPLOYED_INSTANCE = REPO / "deploy" / "postgres" / "dagster.yaml"
BIN = Path(sys.executable).parent
LOCATION = ["-m", pool_holder.__name__]
DEADLINE_SECONDS = 60.0
QUEUE_PASSES_SECONDS = 6.0


def _wait_for(what: str, condition: Callable[[], object], seconds: float, log: Path) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}; daemon log:\n"
                + log.read_text()[-4000:])  # fmt: skip


@pytest.fixture
def daemon_home(tmp_path: Path) -> Iterator[tuple[dg.DagsterInstance, dict[str, str], Path]]:
    """A DAGSTER_HOME with the project's instance config (storage created) and a running daemon
    that has started its run queue."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(REPO),
        pool_holder.PROBE_DIR_VARIABLE: str(tmp_path),
    }
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", *LOCATION],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(
            "the daemon's run queue to start",
            lambda: "QUEUED_RUN_COORDINATOR" in instance.get_daemon_heartbeats(),
            DEADLINE_SECONDS,
            log,
        )
        yield instance, env, log
    finally:
        instance.dispose()
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


def _launch(env: dict[str, str], hold_seconds: float) -> None:
    config = {"ops": {"push_stand_in": {"config": {"hold_seconds": hold_seconds}}}}
    launch = subprocess.run(
        [str(BIN / "dagster"), "job", "launch", *LOCATION, "-j", pool_holder.push_job.name,
         "--config-json", json.dumps(config)],
        env=env, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert launch.returncode == 0, launch.stderr[-3000:]


def test_a_killed_push_is_failed_its_slot_freed_and_the_next_push_runs(daemon_home, tmp_path):
    instance, env, log = daemon_home
    _launch(env, hold_seconds=600)
    pid_file = _wait_for(
        "the first push to hold the slot",
        lambda: next(iter(tmp_path.glob("*.pid")), None),
        DEADLINE_SECONDS,
        log,
    )
    dead_run_id = pid_file.stem
    held = instance.event_log_storage.get_concurrency_info(pool_holder.PUSH_POOL)
    assert [slot.run_id for slot in held.claimed_slots] == [dead_run_id]
    _launch(env, hold_seconds=0)
    (waiting_run_id,) = [run.run_id for run in instance.get_runs() if run.run_id != dead_run_id]
    # The run queue holds a run whose pool is full: a dequeue pass later it still waits.
    time.sleep(QUEUE_PASSES_SECONDS)
    assert instance.get_run_by_id(waiting_run_id).status == dg.DagsterRunStatus.QUEUED
    assert instance.get_run_by_id(dead_run_id).status == dg.DagsterRunStatus.STARTED

    killed_at = time.monotonic()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    _wait_for(
        "the killed push to be failed",
        lambda: instance.get_run_by_id(dead_run_id).status == dg.DagsterRunStatus.FAILURE,
        DEADLINE_SECONDS,
        log,
    )
    failed_seconds = time.monotonic() - killed_at
    _wait_for(
        "the second push to succeed after the first was killed",
        lambda: instance.get_run_by_id(waiting_run_id).status == dg.DagsterRunStatus.SUCCESS,
        DEADLINE_SECONDS,
        log,
    )
    recovered_seconds = time.monotonic() - killed_at

    assert instance.get_run_by_id(dead_run_id).status == dg.DagsterRunStatus.FAILURE
    assert (tmp_path / f"{waiting_run_id}.pid").exists()
    info = instance.event_log_storage.get_concurrency_info(pool_holder.PUSH_POOL)
    assert info.slot_count == 1
    assert not [slot.run_id for slot in info.claimed_slots]
    print(f"killed push failed {failed_seconds:.1f} s after the kill; the next push was done "
          f"{recovered_seconds:.1f} s after it")  # fmt: skip


def _validated(config: Path) -> dict:
    """The instance config as Dagster reads it, checked against Dagster's schema."""
    values, _ = dagster_instance_config(str(config.parent), config.name)
    return dict(values)


def test_local_and_deployed_instances_enforce_the_same_limits_and_monitor_runs(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://dagster@127.0.0.1:5432/dagster")
    local, deployed = _validated(INSTANCE_TEMPLATE), _validated(DEPLOYED_INSTANCE)

    for config in (local, deployed):
        limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
        assert {limit["key"] for limit in limits} == {WAREHOUSE_TAG, PERIOD_TAG}
        assert all(limit["limit"] == 1 for limit in limits)
        assert config["concurrency"]["pools"]["default_limit"] == 1
        monitoring = config["run_monitoring"]
        assert monitoring["enabled"] is True
        # A dead run's slot is free within a minute (the daemon polls, then waits this long).
        assert (
            monitoring["poll_interval_seconds"] + monitoring["free_slots_after_run_end_seconds"]
            <= 60
        )
        # The default launcher cannot resume runs; Dagster refuses the instance otherwise.
        assert monitoring["max_resume_run_attempts"] == 0
    assert (
        local["concurrency"]["runs"]["tag_concurrency_limits"]
        == deployed["concurrency"]["runs"]["tag_concurrency_limits"]
    )
    assert local["concurrency"]["pools"] == deployed["concurrency"]["pools"]
    assert local["run_monitoring"] == deployed["run_monitoring"]


def test_an_existing_instance_without_run_monitoring_is_called_out(tmp_path, monkeypatch):
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", raising=False)
    with pytest.warns(UserWarning, match="does not enable run_monitoring"):
        prepare_dagster_home(load_settings({"METERING_HOME": str(tmp_path)}))
