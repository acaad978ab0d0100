"""Stripe's HTTP conventions and the sandbox's control API: keys, versions, lists, expand,
idempotency, rate limits, fault injection (including dropped responses) and statistics."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import stripe

from metering_pipeline.stripe_sandbox import run_sandbox

from .support import clocked_customer, meter, metered_price, subscribe, ts, usage

NOV_5 = ts(2026, 11, 5)


def client_for(url: str, key: str = "sk_test_protocol", **options) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": url, "meter_events": url}, **options)


@pytest.mark.parametrize("key", ["sk_live_abcdefghijkl", "pk_test_abcdefghijkl", "nonsense"])
def test_bad_keys_get_401_without_echoing_the_key(stripe_sandbox, key):
    with pytest.raises(stripe.AuthenticationError) as caught:
        client_for(stripe_sandbox.url, key).v1.customers.list()
    assert caught.value.http_status == 401
    assert key not in str(caught.value)


def test_restricted_test_keys_are_accepted(stripe_sandbox):
    assert client_for(stripe_sandbox.url, "rk_test_restricted").v1.customers.list().data == []


def test_stripe_version_is_echoed(stripe_client):
    customer = stripe_client.v1.customers.create({"email": "v@example.com"})
    assert customer.last_response.headers["Stripe-Version"] == stripe.api_version
    assert customer.last_response.request_id.startswith("req_")


def test_pagination_newest_first_with_cursors(stripe_client):
    ids = [stripe_client.v1.products.create({"name": f"p{i}"}).id for i in range(5)]
    first = stripe_client.v1.products.list({"limit": 2})
    assert [p.id for p in first.data] == [ids[4], ids[3]] and first.has_more
    second = stripe_client.v1.products.list({"limit": 2, "starting_after": ids[3]})
    assert [p.id for p in second.data] == [ids[2], ids[1]] and second.has_more
    last = stripe_client.v1.products.list({"limit": 2, "starting_after": ids[1]})
    assert [p.id for p in last.data] == [ids[0]] and not last.has_more
    before = stripe_client.v1.products.list({"limit": 2, "ending_before": ids[1]})
    assert [p.id for p in before.data] == [ids[3], ids[2]] and before.has_more
    every = [p.id for p in stripe_client.v1.products.list({"limit": 2}).auto_paging_iter()]
    assert every == ids[::-1]


def test_expand_and_unknown_objects(stripe_client):
    price = metered_price(stripe_client, meter(stripe_client).id, unit_amount=1)
    customer, _ = clocked_customer(stripe_client, NOV_5, email="x@example.com")
    subscription = subscribe(stripe_client, customer.id, price.id)
    expanded = stripe_client.v1.subscriptions.retrieve(
        subscription.id, {"expand": ["customer", "latest_invoice"]}
    )
    assert expanded.customer.email == "x@example.com"
    assert expanded.latest_invoice.billing_reason == "subscription_create"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        stripe_client.v1.customers.retrieve("cus_missing")
    assert (caught.value.http_status, caught.value.code) == (404, "resource_missing")


def test_customer_metadata_and_search(stripe_client):
    customer = stripe_client.v1.customers.create({"metadata": {"metering_customer_id": "acme"}})
    stripe_client.v1.customers.create({"metadata": {"metering_customer_id": "globex"}})
    found = stripe_client.v1.customers.search({"query": "metadata['metering_customer_id']:'acme'"})
    assert [c.id for c in found.data] == [customer.id]
    updated = stripe_client.v1.customers.update(customer.id, {"metadata": {"tier": "gold"}})
    assert updated.metadata.to_dict() == {"metering_customer_id": "acme", "tier": "gold"}


def test_idempotency_replays_and_rejects_other_parameters(stripe_client):
    options = {"idempotency_key": "create-acme"}
    first = stripe_client.v1.customers.create({"email": "a@example.com"}, options)
    again = stripe_client.v1.customers.create({"email": "a@example.com"}, options)
    assert again.id == first.id
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(stripe_client.v1.customers.list().data) == 1
    with pytest.raises(stripe.IdempotencyError):
        stripe_client.v1.customers.create({"email": "b@example.com"}, options)


def test_idempotency_replays_errors_too(stripe_client):
    meter(stripe_client)
    customer, _ = clocked_customer(stripe_client, NOV_5)
    usage(stripe_client, customer.id, 1, NOV_5, "same")
    params = {
        "event_name": "api_calls",
        "identifier": "same",
        "payload": {"stripe_customer_id": customer.id, "value": "1"},
        "timestamp": NOV_5,
    }
    for _ in range(2):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            stripe_client.v1.billing.meter_events.create(params, {"idempotency_key": "dup"})
    assert caught.value.headers.get("Idempotent-Replayed") == "true"


def test_rate_limit_answers_429():
    with run_sandbox(requests_per_second=5) as sandbox:
        client = client_for(sandbox.url)
        outcomes = []
        for _ in range(12):
            try:
                client.v1.customers.list()
                outcomes.append(200)
            except stripe.RateLimitError as error:
                assert error.error.code == "rate_limit"
                outcomes.append(429)
        assert outcomes[:5] == [200] * 5 and 429 in outcomes
        time.sleep(0.5)
        client.v1.customers.list()  # the budget refills
        assert sandbox.control.stats()["by_status"]["429"] == outcomes.count(429)


def test_one_meter_event_call_at_a_time_per_customer_and_meter(stripe_sandbox, stripe_client):
    meter(stripe_client)
    customer, _ = clocked_customer(stripe_client, NOV_5)
    stripe_sandbox.control.set_faults(
        [{"path_prefix": "/v1/billing/meter_events", "action": "delay", "seconds": 0.5, "times": 1}]
    )
    first: list = []
    slow = threading.Thread(
        target=lambda: first.append(usage(stripe_client, customer.id, 1, NOV_5, "slow"))
    )
    slow.start()
    time.sleep(0.2)
    with pytest.raises(stripe.RateLimitError) as caught:
        usage(stripe_client, customer.id, 1, NOV_5, "fast")
    slow.join()
    assert caught.value.error.code == "lock_timeout"
    assert caught.value.headers["Stripe-Should-Retry"] == "true"
    assert first[0].identifier == "slow"


def test_injected_status_faults_and_should_retry(stripe_sandbox, stripe_client):
    stripe_sandbox.control.set_faults(
        [
            {
                "path_prefix": "/v1/customers",
                "method": "POST",
                "action": "status",
                "status": 503,
                "should_retry": False,
                "probability": 1.0,
            }
        ]
    )
    with pytest.raises(stripe.APIError) as caught:
        stripe_client.v1.customers.create({"email": "x@example.com"})
    assert caught.value.http_status == 503
    assert caught.value.headers["Stripe-Should-Retry"] == "false"
    assert stripe_client.v1.customers.list().data == []  # GET is not matched; nothing created
    stripe_sandbox.control.clear_faults()
    stripe_client.v1.customers.create({"email": "x@example.com"})


def test_seeded_faults_repeat_exactly(stripe_sandbox, stripe_client):
    def run() -> list[int]:
        stripe_sandbox.control.set_faults(
            [
                {
                    "path_prefix": "/v1/products",
                    "action": "status",
                    "status": 500,
                    "probability": 0.5,
                }
            ],
            seed=42,
        )
        outcomes = []
        for _ in range(16):
            try:
                stripe_client.v1.products.list()
                outcomes.append(200)
            except stripe.APIError:
                outcomes.append(500)
        return outcomes

    first, second = run(), run()
    assert first == second and 200 in first and 500 in first


def test_drop_response_processes_then_hangs_up(stripe_sandbox, stripe_client):
    """The request lands but the client never hears back: a retry must not count it twice."""
    meter(stripe_client)
    customer, _ = clocked_customer(stripe_client, NOV_5)
    stripe_sandbox.control.set_faults(
        [{"path_prefix": "/v1/billing/meter_events", "action": "drop_response", "times": 1}]
    )
    with pytest.raises(stripe.APIConnectionError):
        usage(stripe_client, customer.id, 7, NOV_5, "ledger-1")
    with pytest.raises(stripe.InvalidRequestError) as caught:  # it was delivered after all
        usage(stripe_client, customer.id, 7, NOV_5, "ledger-1")
    assert "already exists" in caught.value.user_message
    stats = stripe_sandbox.control.stats()
    assert stats["by_path"]["POST /v1/billing/meter_events"] == {"dropped": 1, "400": 1}
    assert stats["faults_injected"] == {"drop_response": 1}


def test_sdk_retries_with_idempotency_survive_a_dropped_response(stripe_sandbox):
    client = client_for(stripe_sandbox.url, max_network_retries=2)
    stripe_sandbox.control.set_faults(
        [{"path_prefix": "/v1/customers", "method": "POST", "action": "drop_response", "times": 1}]
    )
    customer = client.v1.customers.create({"email": "once@example.com"})
    assert customer.last_response.headers["Idempotent-Replayed"] == "true"
    assert [c.id for c in client.v1.customers.list().data] == [customer.id]


def test_reset_clears_state(stripe_sandbox, stripe_client):
    stripe_client.v1.products.create({"name": "gone soon"})
    stripe_sandbox.control.reset()
    assert stripe_client.v1.products.list().data == []
    assert stripe_sandbox.control.stats()["requests"] == 1


def test_events_follow_by_cursor(stripe_client):
    meter(stripe_client)
    seen = stripe_client.v1.events.list({"limit": 1}).data[0]
    assert seen.type == "billing.meter.created"
    customer = stripe_client.v1.customers.create({"email": "e@example.com"})
    stripe_client.v1.customers.update(customer.id, {"name": "E"})
    newer = stripe_client.v1.events.list({"ending_before": seen.id, "limit": 100}).data
    assert [e.type for e in reversed(newer)] == ["customer.created", "customer.updated"]
    assert newer[0].data.previous_attributes.to_dict() == {"name": None}
    only = stripe_client.v1.events.list({"types": ["customer.*"]}).data
    assert {e.type for e in only} == {"customer.created", "customer.updated"}


def test_unknown_route_is_a_stripe_404(stripe_sandbox):
    response = httpx.get(
        f"{stripe_sandbox.url}/v1/usage_records",
        headers={"Authorization": "Bearer sk_test_abcdefgh"},
    )
    assert response.status_code == 404
    assert "Unrecognized request URL" in response.json()["error"]["message"]


def test_concurrent_requests_with_one_idempotency_key_conflict(stripe_sandbox, stripe_client):
    stripe_sandbox.control.set_faults(
        [{"path_prefix": "/v1/customers", "action": "delay", "seconds": 0.5, "times": 1}]
    )
    options = {"idempotency_key": "only-once"}
    first: list = []
    slow = threading.Thread(
        target=lambda: first.append(stripe_client.v1.customers.create({}, options))
    )
    slow.start()
    time.sleep(0.2)
    with pytest.raises(stripe.APIError) as caught:  # a 409, which the SDK may retry
        stripe_client.v1.customers.create({}, options)
    slow.join()
    assert (caught.value.http_status, caught.value.error.type) == (409, "idempotency_error")
    assert [c.id for c in stripe_client.v1.customers.list().data] == [first[0].id]
