"""A push that leaves usage undelivered is a failed run, and the failure alert fires.

Stripe's meter-event endpoint answers 503 to every call: after the retry budget the entries stay
``pending`` in the ledger, the step fails naming them and what to do, the run-failure alert
carries that text, and the next run, with Stripe back, delivers each exactly once.
"""

from __future__ import annotations

from decimal import Decimal

import dagster as dg

from metering_pipeline.defs.automation import alerts
from metering_pipeline_tests.integration.test_push import ledger_statuses
from metering_pipeline_tests.integration.test_push_world import (
    build_world,
    seeded_events,
)

ENDPOINT_DOWN = [
    {"path_prefix": "/v1/billing/meter_events", "method": "POST", "action": "status", "status": 503}
]


def test_undelivered_usage_fails_the_run_and_alerts_and_the_next_run_delivers_it(
    duckdb_url, stripe_sandbox, stripe_client, monkeypatch
):
    monkeypatch.setenv("METERING_STRIPE_MAX_RETRIES", "1")
    world = build_world(duckdb_url, stripe_sandbox.url, stripe_client, customers=3)
    events = seeded_events(world.customers, 5, seed=8, tag="d")
    world.add_usage(events, "2026-11-05-00:00", "2026-11-19-23:00")
    stripe_sandbox.control.set_faults(ENDPOINT_DOWN)

    failed = world.push(raise_on_error=False)

    assert not failed.success
    injected = stripe_sandbox.control.stats()["faults_injected"]["status"]
    assert injected == 2 * len(world.customers)  # one try and one retry each
    assert ledger_statuses(world.url) == {"pending": len(world.customers)}
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.user_failure_data.description
    assert f"{len(world.customers)} meter event(s) are still pending" in message
    assert "run the push again" in message
    for customer in world.customers:
        assert customer in message and "HTTP 503" in message

    alerted: list[dict] = []
    monkeypatch.setattr(alerts, "send_alert", lambda payload, log: alerted.append(payload))
    alerts.run_failure_alert(
        dg.build_run_status_sensor_context(
            sensor_name=alerts.run_failure_alert.name,
            dagster_event=failed.get_run_failure_event(),
            dagster_instance=world.instance,
            dagster_run=failed.dagster_run,
        ).for_run_failure()
    )
    [alert] = alerted
    assert alert["kind"] == "run_failure" and "still pending" in alert["error"]

    stripe_sandbox.control.clear_faults()
    again = world.push()
    assert again.success
    expected = {c: Decimal(sum(e[3] for e in events if e[1] == c)) for c in world.customers}
    assert world.stripe_totals() == expected
    assert ledger_statuses(world.url) == {"sent": len(world.customers)}
