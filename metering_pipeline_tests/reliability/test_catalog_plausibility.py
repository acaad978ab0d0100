"""A Stripe that lost its state must not empty the catalog: after a sandbox restart the sync
used to write an empty catalog without complaint, and re-validating the hours then quarantined
every billed row as ``unknown_meter``. Now the sync refuses, keeps the last good catalog, and
fails naming what disappeared; a deliberate change goes through with ``accept_catalog_loss``."""

from __future__ import annotations

import dagster as dg

from metering_pipeline.defs.resources import StripeResource, WarehouseResource
from metering_pipeline.defs.stripe_catalog.assets import CATALOG_TABLES, stripe_catalog
from metering_pipeline.warehouse import Database
from metering_pipeline_tests.sandbox.support import meter, metered_price, subscribe


def sync(
    url: str, sandbox_url: str, instance: dg.DagsterInstance, accept_loss: bool = False
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [stripe_catalog],
        instance=instance,
        resources={
            "stripe": StripeResource(api_base=sandbox_url),
            "warehouse": WarehouseResource(url=url),
        },
        run_config=(
            {"ops": {"stripe_catalog": {"config": {"accept_catalog_loss": True}}}}
            if accept_loss
            else None
        ),
        raise_on_error=False,
    )


def snapshot(url: str) -> dict[str, list[tuple]]:
    with Database(url).connect() as conn:
        return {
            table: sorted(conn.fetchall(f"select * from metering.{table}"), key=repr)
            for table in CATALOG_TABLES
        }


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    (failure,) = result.get_step_failure_events()
    data = failure.step_failure_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message


def test_a_sync_against_a_restarted_stripe_keeps_the_last_good_catalog(
    warehouse_url, stripe_sandbox, stripe_client
):
    api_calls = meter(stripe_client, "api_calls")
    storage = meter(stripe_client, "storage_gb")
    prices = [metered_price(stripe_client, m.id, unit_amount=2) for m in (api_calls, storage)]
    customers = []
    for n in range(3):
        customer = stripe_client.v1.customers.create(
            {"metadata": {"metering_customer_id": f"app_{n}"}}
        )
        subscribe(stripe_client, customer.id, *(price.id for price in prices))
        customers.append(customer.id)
    instance = dg.DagsterInstance.ephemeral()
    assert sync(warehouse_url, stripe_sandbox.url, instance).success
    good = snapshot(warehouse_url)
    assert len(good["stripe_customers"]) == 3 and len(good["stripe_subscription_items"]) == 6

    stripe_sandbox.control.reset()  # Stripe (the sandbox) restarted without its state
    refused = sync(warehouse_url, stripe_sandbox.url, instance)

    assert not refused.success
    message = failure_message(refused)
    assert "Stripe catalog sync refused" in message
    assert "customers: 3 of 3 gone (100%): " in message
    assert all(f"{customer} (app_{n})" in message for n, customer in enumerate(customers))
    assert "meters: 2 of 2 gone (100%): api_calls, storage_gb" in message
    assert "subscriptions: 3 of 3 gone (100%)" in message
    assert "keeps the last good catalog" in message
    assert "accept_catalog_loss: true" in message
    assert snapshot(warehouse_url) == good

    # an operator who means it: the empty catalog replaces the old one (the items' history
    # stays, every interval closed)
    accepted = sync(warehouse_url, stripe_sandbox.url, instance, accept_loss=True)
    assert accepted.success
    after = snapshot(warehouse_url)
    assert after["stripe_customers"] == [] and after["stripe_meters"] == []
    with Database(warehouse_url).connect() as conn:
        assert (
            conn.fetchall("select * from metering.stripe_subscription_items where valid_to is null")
            == []
        )
