"""Alerts when a run fails or a check fails: a log line, and a JSON POST to
``METERING_ALERT_WEBHOOK_URL`` when set (``text`` makes it readable in Slack-style hooks).

Everything sent passes through ``redact``: the Stripe key, and anything shaped like a Stripe
key, never leaves in an alert even if an error message carried it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import dagster as dg
import httpx
from dagster._core.events import DagsterEventType
from dagster_shared.error import SerializableErrorInfo

from metering_pipeline.settings import load_settings

_STRIPE_KEY = re.compile(r"\b(sk|rk|pk|whsec)_(test|live)_[A-Za-z0-9]+")
_MAX_ERROR_CHARS = 1000


def redact(text: str) -> str:
    key = load_settings().stripe_api_key.reveal()
    return _STRIPE_KEY.sub("****", text.replace(key, "****") if key else text)


def send_alert(payload: dict[str, Any], log: Callable[[str], None]) -> None:
    """Log the alert and POST it to the webhook; a webhook that fails is logged, not raised,
    so one bad endpoint never stops the alerts that follow."""
    url = load_settings().alert_webhook_url
    log(payload["text"])
    if not url:
        return
    try:
        httpx.post(url, json=payload, timeout=10).raise_for_status()
    except httpx.HTTPError as error:
        log(f"the alert webhook did not accept the alert ({type(error).__name__}: {error})")


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    """The asset-check evaluations of a run that did not pass."""
    failures = []
    for record in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = record.get_dagster_event().event_specific_data
        if evaluation.passed:
            continue
        failures.append(
            {
                "asset": evaluation.asset_key.to_user_string(),
                "check": evaluation.check_name,
                "severity": evaluation.severity.value,
                "partition": evaluation.partition,
                "description": redact(evaluation.description or ""),
            }
        )
    return failures


def _check_lines(checks: list[dict[str, Any]]) -> str:
    return "".join(
        f"\n- check {check['check']} on {check['asset']}"
        f"{' [' + check['partition'] + ']' if check['partition'] else ''} "
        f"({check['severity']}): {check['description'] or 'no description'}"
        for check in checks
    )


def _root_cause(error: SerializableErrorInfo) -> str:
    """The exception the code raised, not Dagster's "error occurred while executing" wrapper."""
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


def _partition(run: dg.DagsterRun) -> str | None:
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start = tags.get("dagster/asset_partition_range_start")
    return f"{start}..{tags.get('dagster/asset_partition_range_end')}" if start else None


@dg.run_failure_sensor(
    description="Logs and posts (METERING_ALERT_WEBHOOK_URL) every failed run of this code "
    "location, with the failing step's error and any failed checks.",
)
def run_failure_alert(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    steps = context.get_step_failure_events()
    errors = [
        f"{event.step_key}: {_root_cause(event.event_specific_data.error)}"
        for event in steps
        if event.event_specific_data and event.event_specific_data.error
    ] or [context.failure_event.message or "the run failed before any step ran"]
    error = redact("\n".join(errors))[:_MAX_ERROR_CHARS]
    checks = failed_checks(context.instance, run.run_id)
    partition = _partition(run)
    send_alert(
        {
            "text": f"Run {run.run_id} of job {run.job_name}"
            f"{' for ' + partition if partition else ''} failed: {error}"
            f"{_check_lines(checks)}\nOpen the run in the Dagster UI for the full log.",
            "kind": "run_failure",
            "job": run.job_name,
            "run_id": run.run_id,
            "partition": partition,
            "error": error,
            "failed_checks": checks,
        },
        context.log.error,
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    description="Logs and posts (METERING_ALERT_WEBHOOK_URL) the failed asset checks of runs "
    "that succeeded (non-blocking checks); failed runs are reported by run_failure_alert.",
)
def check_failure_alert(context: dg.RunStatusSensorContext) -> None:
    run = context.dagster_run
    checks = failed_checks(context.instance, run.run_id)
    if not checks:
        return
    partition = _partition(run)
    send_alert(
        {
            "text": f"{len(checks)} asset check(s) failed in run {run.run_id} of job "
            f"{run.job_name}{' for ' + partition if partition else ''}:{_check_lines(checks)}",
            "kind": "check_failure",
            "job": run.job_name,
            "run_id": run.run_id,
            "partition": partition,
            "failed_checks": checks,
        },
        context.log.warning,
    )
