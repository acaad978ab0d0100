"""The gateway against a real Stripe test-mode account, read-only, when a key is given."""

from __future__ import annotations

import os

import pytest

from metering_pipeline.stripe_io import StripeGateway

KEY = os.environ.get("STRIPE_TEST_API_KEY", "")

pytestmark = [
    pytest.mark.real_stripe,
    pytest.mark.skipif(
        not KEY.startswith(("sk_test_", "rk_test_")),
        reason="set STRIPE_TEST_API_KEY to a test-mode key (sk_test_ or rk_test_) to run this",
    ),
]


def test_reads_the_catalog_and_events_of_a_real_account() -> None:
    gateway = StripeGateway(KEY, None, None, requests_per_second=20, max_retries=4)
    catalog = gateway.fetch_catalog()
    assert all(customer.id.startswith("cus_") for customer in catalog.customers)
    assert all(meter.formula in ("sum", "count", "last") for meter in catalog.meters)
    events = gateway.list_events(None, ["customer.subscription.created"])
    assert [e.created for e in events] == sorted(e.created for e in events)
    assert gateway.stats.failures == 0
