"""Meter events Stripe accepts and reports as invalid afterwards, through the SDK's v2 events:
v1 answers 200 then emits `v1.billing.meter.error_report_triggered` / `no_meter_found`; the v2
endpoint, validated synchronously, answers 400; `GET /v2/core/events` filters and pages."""

from __future__ import annotations

import pytest
import stripe

from .support import clocked_customer, meter, ts, usage

NOW = ts(2026, 11, 15)
TYPES = ["v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"]


@pytest.fixture
def customer(stripe_client):
    found, _ = clocked_customer(stripe_client, NOW)
    return found


def reports(client: stripe.StripeClient, **params) -> list:
    return list(client.v2.core.events.list({"types": TYPES, **params}).auto_paging_iter())


def named(report) -> list[tuple[str, str]]:
    return [
        (error_type.code, sample.request.identifier)
        for error_type in report.data.reason.error_types
        for sample in error_type.sample_errors
    ]


def test_v1_accepts_invalid_content_and_reports_it(stripe_client, customer):
    sums = meter(stripe_client)
    inactive = meter(stripe_client, "old_calls")
    stripe_client.v1.billing.meters.deactivate(inactive.id)
    # each of these answers 200 with the event, as Stripe does, and bills nothing
    accepted = [
        usage(stripe_client, "cus_doesnotexist", 5, NOW, "unknown-customer"),
        usage(stripe_client, customer.id, "12abc", NOW, "bad-value"),
        usage(stripe_client, customer.id, 1, NOW, "no-meter", event_name="nope"),
        usage(stripe_client, customer.id, 1, NOW, "archived", event_name="old_calls"),
        stripe_client.v1.billing.meter_events.create(
            {"event_name": "api_calls", "payload": {"value": "3"}, "identifier": "no-customer"}
        ),
    ]
    assert [event.identifier for event in accepted][0] == "unknown-customer"
    (summary,) = stripe_client.v1.billing.meters.event_summaries.list(
        sums.id, {"customer": customer.id, "start_time": NOW - 60, "end_time": NOW + 60}
    ).data
    assert summary.aggregated_value == 0

    found = reports(stripe_client)
    assert [r.type for r in found].count("v1.billing.meter.no_meter_found") == 1
    by_identifier = {identifier: (r, code) for r in found for code, identifier in named(r)}
    assert {i: code for i, (_, code) in by_identifier.items()} == {
        "unknown-customer": "meter_event_customer_not_found",
        "bad-value": "meter_event_invalid_value",
        "no-meter": "no_meter",
        "archived": "archived_meter",
        "no-customer": "meter_event_no_customer_defined",
    }
    report, _ = by_identifier["unknown-customer"]
    assert isinstance(report, stripe.events.V1BillingMeterErrorReportTriggeredEvent)
    assert report.related_object.id == sums.id
    assert report.related_object.url == f"/v1/billing/meters/{sums.id}"
    assert report.data.reason.error_count == 1
    assert report.data.developer_message_summary == "There is 1 invalid event"
    assert report.data.validation_start < report.data.validation_end
    assert "cus_doesnotexist" in report.data.reason.error_types[0].sample_errors[0].error_message
    # the SDK's typed event can fetch its meter
    assert report.fetch_related_object().id == sums.id
    assert stripe_client.v2.core.events.retrieve(report.id).id == report.id


def test_v1_still_rejects_duplicates_and_old_timestamps_at_once(stripe_client, customer):
    meter(stripe_client)
    usage(stripe_client, customer.id, 1, NOW, "dup")
    with pytest.raises(stripe.InvalidRequestError):
        usage(stripe_client, customer.id, 1, NOW, "dup")
    with pytest.raises(stripe.InvalidRequestError) as caught:
        usage(stripe_client, customer.id, 1, NOW - 36 * 86400)
    assert caught.value.param == "timestamp"
    assert reports(stripe_client) == []


def test_v2_meter_events_are_validated_synchronously(stripe_client, customer):
    meter(stripe_client)
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v2.billing.meter_events.create(
            {"event_name": "api_calls", "payload": {"stripe_customer_id": "cus_gone", "value": "1"}}
        )
    assert caught.value.code == "meter_event_customer_not_found"
    assert reports(stripe_client) == []


def test_events_filter_by_object_and_page(stripe_client, customer):
    sums = meter(stripe_client)
    other = meter(stripe_client, "tokens")
    for index in range(5):
        usage(stripe_client, "cus_gone", 1, NOW, f"calls-{index}")
    usage(stripe_client, "cus_gone", 1, NOW, "tokens-0", event_name="tokens")
    first = stripe_client.v2.core.events.list({"types": TYPES, "limit": 2})
    assert len(first.data) == 2 and first.next_page_url
    everything = list(first.auto_paging_iter())
    assert [named(r)[0][1] for r in everything] == [
        "tokens-0",
        "calls-4",
        "calls-3",
        "calls-2",
        "calls-1",
        "calls-0",
    ]  # fmt: skip  (newest first)
    assert [named(r)[0][1] for r in reports(stripe_client, object_id=other.id)] == ["tokens-0"]
    assert len(reports(stripe_client, object_id=sums.id)) == 5
    oldest = everything[-1].created
    later = reports(stripe_client, created={"gt": oldest})
    assert "calls-0" not in [named(r)[0][1] for r in later]


def test_stream_reports_invalid_events(stripe_sandbox, stripe_client, customer):
    meter(stripe_client)
    session = stripe_client.v2.billing.meter_event_session.create()
    stream = stripe.StripeClient(
        session.authentication_token, base_addresses={"meter_events": stripe_sandbox.url}
    )
    base = {"event_name": "api_calls", "timestamp": "2026-11-15T00:00:00.000Z"}
    stream.v2.billing.meter_event_stream.create(
        {
            "events": [
                {**base, "identifier": "ok", "payload": {"stripe_customer_id": customer.id}},
                {**base, "identifier": "gone", "payload": {"stripe_customer_id": "cus_x"}},
                {
                    **base,
                    "identifier": "old",
                    "timestamp": "2026-09-01T00:00:00.000Z",
                    "payload": {"stripe_customer_id": customer.id, "value": "1"},
                },
            ]
        }
    )
    (report,) = reports(stripe_client)
    assert sorted(named(report)) == [
        ("meter_event_customer_not_found", "gone"),
        ("meter_event_value_not_found", "ok"),
        ("timestamp_too_far_in_past", "old"),
    ]
    assert report.data.reason.error_count == 3
    assert report.data.developer_message_summary == "There are 3 invalid events"
