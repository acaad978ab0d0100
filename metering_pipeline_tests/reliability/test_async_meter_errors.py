"""A 200 is not yet delivery: Stripe validates a meter event's content after accepting it and
reports the invalid ones as v2 `v1.billing.meter.error_report_triggered` events.

Before: nothing read those reports, so an entry Stripe rejected stayed `sent`, counted, and its
usage was never billed, on a green run. Now the `stripe_meter_errors` sensor follows them, a
`meter_event_rejections` run marks the entries `rejected` (not counted: the next push sends the
usage again under a new identifier) and fails with what to fix, with the failure alert; an
unfixed cause is rejected again and fails again, every time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest

from metering_pipeline.billing.ledger import LedgerEntry, plan_push
from metering_pipeline.defs.automation.meter_errors import (
    meter_event_rejections,
    stripe_meter_errors,
)
from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.push.tables import (
    LEDGER,
    LedgerRow,
    ensure_push_tables,
    entry_identifier,
    insert_pending,
    read_ledger,
    record_outcomes,
)
from metering_pipeline.stripe_io import convert
from metering_pipeline.stripe_io.gateway import StripeGateway
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.integration.test_automation_alerts import (  # noqa: F401
    alert_run_failure,
    webhook,
)
from metering_pipeline_tests.sandbox.support import meter

PERIOD = (datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 12, 5, tzinfo=UTC))

# Stripe's own example (docs.stripe.com/billing/subscriptions/usage-based/recording-usage-api)
DOCS_EXAMPLE = {
    "id": "evt_test_65R2GpwDsnmpzihMjdT16R2GDhI4SQdXJGRbvn7JA8mPEm",
    "object": "v2.core.event",
    "created": "2024-08-28T20:54:12.051Z",
    "data": {
        "developer_message_summary": "There is 1 invalid event",
        "reason": {
            "error_count": 1,
            "error_types": [
                {
                    "code": "meter_event_no_customer_defined",
                    "error_count": 1,
                    "sample_errors": [
                        {
                            "error_message": "Customer mapping key stripe_customer_id not found "
                            "in payload.",
                            "request": {"id": "", "idempotency_key": "37c741d8-1f7e"},
                        }
                    ],
                }
            ],
        },
        "validation_end": "2024-08-28T20:54:10.000Z",
        "validation_start": "2024-08-28T20:54:00.000Z",
    },
    "reason": None,
    "related_object": {"id": "mtr_test_61R2Gl", "type": "billing.meter", "url": "/v1/x"},
    "type": "v1.billing.meter.error_report_triggered",
}


def test_an_error_report_reads_as_typed_values_whatever_names_the_identifier():
    report = convert.meter_error_report(DOCS_EXAMPLE)
    assert (report.meter_id, report.error_count, report.unnamed) == ("mtr_test_61R2Gl", 1, 0)
    assert report.created == datetime(2024, 8, 28, 20, 54, 12, 51000, tzinfo=UTC)
    [error] = report.errors
    assert (error.code, error.identifier) == ("meter_event_no_customer_defined", "37c741d8-1f7e")
    # the API reference's shape, and a report naming fewer events than it counts
    sample = DOCS_EXAMPLE["data"]["reason"]["error_types"][0]
    shaped = json.loads(json.dumps(DOCS_EXAMPLE))
    shaped["data"]["reason"]["error_count"] = 3
    shaped["data"]["reason"]["error_types"][0] = {
        **sample,
        "error_count": 3,
        "sample_errors": [{"error_message": "x", "request": {"identifier": "push-1"}}],
    }
    read = convert.meter_error_report(shaped)
    assert [e.identifier for e in read.errors] == ["push-1"] and read.unnamed == 2


def test_a_rejected_entry_is_not_counted_so_the_next_push_sends_it_again():
    entries = [LedgerEntry(1, Decimal(100), "rejected")]
    plan = plan_push("sum", Decimal(100), entries)
    assert (plan.value, plan.sequence, plan.counted) == (Decimal(100), 2, Decimal(0))
    assert plan_push("last", Decimal(7), [LedgerEntry(1, Decimal(7), "rejected")]).value == 7


def _tick(instance, resources, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return stripe_meter_errors.evaluate_tick(context)


def _push_one(database: Database, gateway: StripeGateway, customer: str, sequence: int, value):
    """What the push does for one key: a pending entry, the call (Stripe answers 200), `sent`."""
    now = datetime.now(UTC).replace(microsecond=0)
    identifier = entry_identifier("si_1", "price_1", customer, "api_calls", PERIOD[0], sequence)
    row = LedgerRow(
        identifier, "si_1", "price_1", customer, "api_calls", *PERIOD, sequence,
        Decimal(value), now - timedelta(minutes=1), "pending", 0, now,
    )  # fmt: skip
    with database.connect() as conn:
        ensure_push_tables(conn)
        insert_pending(conn, [row])
    assert gateway.send_meter_event("api_calls", customer, row.value, row.event_timestamp,
                                    identifier) == "sent"  # fmt: skip
    with database.connect() as conn:
        record_outcomes(conn, [(identifier, "sent", None)], now)
    return identifier


def _ledger(database: Database) -> dict[int, tuple[str, str | None]]:
    with database.connect() as conn:
        rows = conn.fetchall(f"select sequence, status, last_error from {LEDGER} order by 1")
    return {sequence: (status, error) for sequence, status, error in rows}


def test_rejections_mark_the_ledger_and_fail_loudly_every_time(
    stripe_sandbox,
    stripe_client,
    duckdb_url,
    webhook,  # noqa: F811
):
    meter(stripe_client, "api_calls")
    customer = stripe_client.v1.customers.create({"email": "gone@example.com"}).id
    stripe_client.v1.customers.delete(customer)  # deleted in Stripe after our catalog sync
    resources = {
        "stripe": StripeResource(api_base=stripe_sandbox.url),
        "warehouse": WarehouseResource(url=duckdb_url),
    }
    gateway = resources["stripe"].gateway()
    database = Database(duckdb_url)
    instance = dg.DagsterInstance.ephemeral()

    first = _push_one(database, gateway, customer, 1, 100)
    # the hazard: Stripe said 200, so the entry is `sent` and counts; Stripe holds nothing
    with database.connect() as conn:
        [row] = read_ledger(conn, PERIOD, None)
    assert row.status == "sent"

    tick = _tick(instance, resources, None)
    [request] = tick.run_requests
    assert request.job_name == meter_event_rejections.name
    result = meter_event_rejections.execute_in_process(
        run_config=request.run_config, instance=instance, resources=resources,
        raise_on_error=False, tags={"dagster/run_key": request.run_key},
    )  # fmt: skip
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "Stripe rejected 1 meter event(s) after answering 200" in message
    assert "NOT billed" in message and first in message
    assert "meter_event_customer_not_found" in message and customer in message
    assert "the customer does not exist in Stripe" in message  # what to do
    status, error = _ledger(database)[1]
    assert status == "rejected"
    assert "meter_event_customer_not_found" in error and customer in error

    # the alert an operator receives names it too
    alert_run_failure(result, instance)
    [post] = webhook.posts
    assert post["job"] == "meter_event_rejections"
    assert "meter_event_customer_not_found" in post["error"] and "NOT billed" in post["error"]

    # nothing new: no run
    assert not _tick(instance, resources, tick.cursor).run_requests

    # the next push sends the usage again (not counted), under a new identifier; the cause is
    # not fixed, so Stripe rejects it again: a second failed run, not a silent loop
    with database.connect() as conn:
        rows = read_ledger(conn, PERIOD, None)
    plan = plan_push(
        "sum", Decimal(100), [LedgerEntry(r.sequence, r.value, r.status) for r in rows]
    )
    assert (plan.value, plan.sequence) == (Decimal(100), 2)
    second = _push_one(database, gateway, customer, plan.sequence, plan.value)
    assert second != first
    again = _tick(instance, resources, tick.cursor)
    [request_again] = again.run_requests
    assert request_again.run_key != request.run_key
    rerun = meter_event_rejections.execute_in_process(
        run_config=request_again.run_config, instance=instance, resources=resources,
        raise_on_error=False,
    )  # fmt: skip
    assert not rerun.success
    assert [status for status, _ in _ledger(database).values()] == ["rejected", "rejected"]
    assert not _tick(instance, resources, again.cursor).run_requests


@pytest.mark.parametrize("status", ["pending", "sent"])
def test_a_late_answer_does_not_undo_a_rejection(duckdb_url, status):
    """The push records Stripe's 200 after the report was read: the entry stays rejected."""
    from metering_pipeline.push.tables import mark_rejected

    database = Database(duckdb_url)
    now = datetime.now(UTC)
    row = LedgerRow("id-1", "si", "price", "cus", "api_calls", *PERIOD, 1, Decimal(5), now,
                    status, 0, now)  # fmt: skip
    with database.connect() as conn:
        ensure_push_tables(conn)
        insert_pending(conn, [row])
        assert [r.identifier for r in mark_rejected(conn, [("id-1", "x: y"), ("other", "z")])] == [
            "id-1"
        ]
        record_outcomes(conn, [("id-1", "sent", None)], now)
    assert _ledger(database) == {1: ("rejected", "x: y")}


def test_the_cursor_rereads_an_overlap_so_a_late_visible_report_is_not_missed():
    from metering_pipeline.billing.meter_errors import MeterErrorReport
    from metering_pipeline.defs.automation.meter_errors import OVERLAP, ErrorsCursor

    def report(event_id: str, minute: int) -> MeterErrorReport:
        created = datetime(2026, 11, 20, 10, minute, tzinfo=UTC)
        return MeterErrorReport(event_id, "t", created, None, "", None, None, 1, (), ())

    first = ErrorsCursor.parse(ErrorsCursor().advance([report("a", 0), report("b", 30)]).dump())
    assert first.query_from() == datetime(2026, 11, 20, 10, 30, tzinfo=UTC) - OVERLAP
    assert first.seen == ["b"]  # "a" is older than the overlap: never read again
    # "c" was created before "b" but became visible only now: read, and not seen yet
    again = [report("b", 30), report("c", 25)]
    assert [r.id for r in again if r.id not in first.seen] == ["c"]
    assert first.advance(again).seen == ["b", "c"]
