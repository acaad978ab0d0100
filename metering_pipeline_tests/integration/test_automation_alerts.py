"""Run-failure and check-failure alerts: logged, and posted to a local webhook, key redacted."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from metering_pipeline.defs.automation.alerts import check_failure_alert, run_failure_alert

SECRET_KEY = "sk_test_automationAlertSecret123"


class Webhook:
    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.status = 200


@pytest.fixture
def webhook(monkeypatch) -> Iterator[Webhook]:
    """A local HTTP endpoint that records the JSON bodies POSTed to it."""
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.posts.append(json.loads(body))
            self.send_response(hook.status)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("METERING_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("STRIPE_API_KEY", SECRET_KEY)
    try:
        yield hook
    finally:
        server.shutdown()


hours = dg.HourlyPartitionsDefinition(start_date="2026-11-01-00:00", fmt="%Y-%m-%d-%H:%M")


@dg.asset(partitions_def=hours)
def pushes_to_stripe() -> None:
    raise RuntimeError(f"Stripe refused the request made with key {SECRET_KEY} for cus_123")


@dg.asset(
    check_specs=[dg.AssetCheckSpec("usage_attributed", asset="priced_usage")],
)
def priced_usage() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description="3 events of cus_123 have no active subscription item",
            )
        ]
    )


def alert_run_failure(result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance) -> None:
    """What the run-failure sensor does when it sees this failed run."""
    context = dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert.name,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    run_failure_alert(context)


def test_a_failed_run_is_posted_with_its_job_partition_and_error_without_the_key(webhook):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [pushes_to_stripe], instance=instance, partition_key="2026-11-20-10:00",
        raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    alert_run_failure(result, instance)

    [post] = webhook.posts
    assert post["kind"] == "run_failure"
    assert post["run_id"] == result.run_id
    assert post["job"] == result.dagster_run.job_name
    assert post["partition"] == "2026-11-20-10:00"
    assert "Stripe refused the request" in post["error"] and "cus_123" in post["error"]
    assert "pushes_to_stripe" in post["text"]
    assert SECRET_KEY not in json.dumps(post)
    assert "sk_test_" not in json.dumps(post)


def test_a_failed_check_in_a_successful_run_is_posted_with_its_description(webhook):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([priced_usage], instance=instance)
    assert result.success
    context = dg.build_run_status_sensor_context(
        sensor_name=check_failure_alert.name,
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    )
    check_failure_alert(context)

    [post] = webhook.posts
    assert post["kind"] == "check_failure"
    assert post["failed_checks"] == [
        {
            "asset": "priced_usage",
            "check": "usage_attributed",
            "severity": "WARN",
            "partition": None,
            "description": "3 events of cus_123 have no active subscription item",
        }
    ]
    assert "usage_attributed" in post["text"]


def test_a_run_whose_checks_pass_posts_nothing(webhook):
    @dg.asset(check_specs=[dg.AssetCheckSpec("fine", asset="clean_usage")])
    def clean_usage() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(passed=True)])

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([clean_usage], instance=instance)
    check_failure_alert(
        dg.build_run_status_sensor_context(
            sensor_name=check_failure_alert.name,
            dagster_event=result.get_run_success_event(),
            dagster_instance=instance,
            dagster_run=result.dagster_run,
        )
    )
    assert webhook.posts == []


def test_a_webhook_that_refuses_does_not_stop_the_alert(webhook):
    webhook.status = 500
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [pushes_to_stripe], instance=instance, partition_key="2026-11-20-10:00",
        raise_on_error=False,
    )  # fmt: skip
    context = dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert.name,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    run_failure_alert(context)  # logs the webhook's refusal instead of raising
    assert len(webhook.posts) == 1
