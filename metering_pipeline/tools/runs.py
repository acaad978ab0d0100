"""``metering backfill`` and ``metering reconcile``: the code location's own jobs, from the CLI.

Each command runs a job of the code location (``stripe_catalog_sync``, ``hourly_usage``,
``period_reconciliation``) in this process, recorded in the local Dagster instance, so the runs
are the same jobs the UI and the schedules launch and ``metering dev`` shows them afterwards.
A range of hours is one run (every hourly asset has a single-run backfill policy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from metering_pipeline.instance import prepare_dagster_home
from metering_pipeline.settings import Settings

HOUR_FORMAT = "%Y-%m-%d-%H:%M"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# The console keeps to one line per step; every event is in the run's logs in the UI.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class RunFailedError(RuntimeError):
    """A job's run failed; the message names the run, the step and the reason."""


@dataclass(frozen=True)
class Finished:
    run_id: str
    metadata: dict[str, dict[str, object]]  # asset or check name -> its metadata values
    checks: dict[str, bool]  # check name -> passed


def backfill(
    settings: Settings, start: datetime, end: datetime, say: Callable[[str], None] = print
) -> Finished:
    """Sync the catalog, then run ``hourly_usage`` over the hours of ``[start, end)``."""
    first, end = _hour(start, "--from"), _hour(end, "--to")
    if end <= first:
        raise ValueError(f"--to {end:%Y-%m-%dT%H:%M}Z must be after --from {first:%Y-%m-%dT%H:%M}Z")
    last = end - timedelta(hours=1)
    hours = int((end - first) / timedelta(hours=1))
    with _instance(settings) as instance:
        say("1/2 stripe_catalog_sync: customers, meters, prices, subscriptions, billing periods")
        _run(instance, "stripe_catalog_sync", say)
        say(f"2/2 hourly_usage: {hours} hour(s) [{first:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC")
        finished = _run(instance, "hourly_usage", say, tags=hour_range_tags(first, last))
    quality = finished.metadata.get("validated_usage_events", {})
    push = finished.metadata.get("stripe_meter_events", {})
    say(
        f"    {quality.get('extracted', 0):,} rows extracted = {quality.get('accepted', 0):,} "
        f"accepted + {quality.get('quarantined', 0):,} quarantined; "
        f"{push.get('events_sent', 0)} meter event(s) sent to Stripe"
    )
    return finished


def billing_period_keys(settings: Settings) -> list[str]:
    """The billing periods the catalog sync discovered, oldest first."""
    with _instance(settings) as instance:
        return sorted(instance.get_dynamic_partitions("billing_periods"))


def reconcile(settings: Settings, period: str, say: Callable[[str], None] = print) -> Finished:
    """Run ``period_reconciliation`` for one billing period key."""
    with _instance(settings) as instance:
        known = instance.get_dynamic_partitions("billing_periods")
        if period not in known:
            raise ValueError(
                f"no billing period {period!r}; known periods: {', '.join(sorted(known)) or 'none'}"
                " (run `metering backfill` first: its catalog sync discovers them)"
            )
        say(f"period_reconciliation, billing period {period}")
        return _run(instance, "period_reconciliation", say, partition_key=period)


def _instance(settings: Settings) -> dg.DagsterInstance:
    prepare_dagster_home(settings)
    return dg.DagsterInstance.get()


def hour_range_tags(first: datetime, last: datetime) -> dict[str, str]:
    """The tags that make one run of the hours ``first``..``last`` (inclusive), as Dagster's
    single-run backfill launches it."""
    return {RANGE_START_TAG: first.strftime(HOUR_FORMAT), RANGE_END_TAG: last.strftime(HOUR_FORMAT)}


def run_job(
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    resources: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    """One run of a code-location job in this process, recorded in ``instance``.

    With ``resources`` the very same job (its assets, checks and selection) is bound to them
    instead of the code location's: the demo and the benchmark point it at their own sandbox
    and source without a copy of the asset chain.
    """
    from metering_pipeline.definitions import defs

    if resources is not None:
        defs = dg.Definitions(
            assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=resources
        )
    return defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        run_config=QUIET_CONSOLE,
        tags=dict(tags or {}),
        partition_key=partition_key,
        raise_on_error=False,
    )


def _run(
    instance: dg.DagsterInstance,
    job_name: str,
    say: Callable[[str], None],
    *,
    tags: dict[str, str] | None = None,
    partition_key: str | None = None,
) -> Finished:
    result = run_job(instance, job_name, tags=tags, partition_key=partition_key)
    metadata: dict[str, dict[str, object]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {
            name: value.value for name, value in materialization.metadata.items()
        }
    checks = {}
    for event in result.get_asset_check_evaluations():
        checks[event.check_name] = event.passed
        metadata[event.check_name] = {name: value.value for name, value in event.metadata.items()}
    if not result.success:
        raise RunFailedError(failure_message(result, job_name))
    failed = [name for name, passed in checks.items() if not passed]
    note = f"; failed checks: {', '.join(failed)}" if failed else ""
    say(f"    run {result.run_id[:8]} succeeded{note}")
    return Finished(result.run_id, metadata, checks)


def failure_message(result: dg.ExecuteInProcessResult, job_name: str) -> str:
    """Which step of a failed run failed, and why, in one sentence."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            reason = error.message.strip() if error else "no message"
            user = event.step_failure_data.user_failure_data
            if user is not None and user.description:
                reason = user.description
            return (
                f"{job_name} run {result.run_id[:8]} failed at step {event.step_key}: {reason} "
                "(the whole log is in the UI: metering dev)"
            )
    return f"{job_name} run {result.run_id[:8]} failed; read its log in the UI (metering dev)"


def _hour(moment: datetime, option: str) -> datetime:
    """A UTC hour; an instant inside an hour is refused rather than silently widened."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment != moment.replace(minute=0, second=0, microsecond=0):
        raise ValueError(f"{option} {moment:%Y-%m-%dT%H:%M:%S}Z is not on the hour")
    return moment
