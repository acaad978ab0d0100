"""`metering sandbox` keeps its state across a restart, as Stripe keeps yours: killed (SIGKILL)
mid-period and started again on the same state file, the test clock's time, the meter events
and their identifier window, idempotency keys, summaries and the period's invoice all hold."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import stripe

from metering_pipeline.stripe_sandbox.server import Sandbox, SandboxStateError
from metering_pipeline_tests.sandbox.support import (
    advance,
    clocked_customer,
    invoices,
    meter,
    metered_price,
    subscribe,
    ts,
    usage,
    wait_until_serving,
)

NOV_5, NOV_15 = ts(2026, 11, 5), ts(2026, 11, 15)
DEC_5 = ts(2026, 12, 5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served(state: Path, *extra: str) -> Iterator[stripe.StripeClient]:
    """`metering sandbox --state <state>` as its own process, SIGKILLed at the end: no chance
    to save anything on the way out, so only what was written after each request survives."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "metering_pipeline.cli", "sandbox", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--state", str(state), "--rate-limit", "1000", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_serving(url, process)
        yield stripe.StripeClient(
            "sk_test_restart", base_addresses={"api": url, "meter_events": url}
        )
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)


def test_restart_mid_period_keeps_clock_events_dedupe_idempotency_and_invoice(tmp_path):
    state = tmp_path / "sandbox-state.json"
    with served(state) as client:
        calls = meter(client, "api_calls")
        price = metered_price(client, calls.id, unit_amount_decimal="2")  # 2¢ a call
        customer, clock = clocked_customer(client, NOV_5)
        subscribe(client, customer.id, price.id)
        advance(client, clock.id, NOV_15)
        usage(client, customer.id, 100, NOV_15 - 3600, "push-1")
        usage(client, customer.id, 50, NOV_15 - 60, "push-2")
        item = client.v1.invoice_items.create(
            {"customer": customer.id, "amount": 500, "currency": "usd", "description": "late"},
            {"idempotency_key": "late-usage-1"},
        )

    with served(state) as client:  # the same state file, after a SIGKILL
        restored = client.v1.test_helpers.test_clocks.retrieve(clock.id)
        assert (restored.frozen_time, restored.status) == (NOV_15, "ready")
        (summary,) = client.v1.billing.meters.event_summaries.list(
            calls.id, {"customer": customer.id, "start_time": NOV_5, "end_time": NOV_15}
        ).data
        assert summary.aggregated_value == 150
        with pytest.raises(stripe.InvalidRequestError) as caught:  # still inside the 24 h
            usage(client, customer.id, 100, NOV_15 - 3600, "push-1")
        assert caught.value.code == "duplicate_meter_event"
        again = client.v1.invoice_items.create(
            {"customer": customer.id, "amount": 500, "currency": "usd", "description": "late"},
            {"idempotency_key": "late-usage-1"},
        )
        assert again.id == item.id  # a retry after the restart creates nothing twice
        usage(client, customer.id, 25, NOV_15 + 60, "push-3")
        advance(client, clock.id, DEC_5 + 2 * 3600)  # past the period end and its grace hour

    with served(state) as client:
        (invoice,) = invoices(client, customer.id)
        assert invoice.status == "open"  # finalized before the kill, and still so
        assert (invoice.period_start, invoice.period_end) == (NOV_5, DEC_5)
        # 175 calls at 2¢ plus the 5.00 invoice item created once
        assert invoice.total == 175 * 2 + 500
        assert len(client.v1.invoice_items.list({"customer": customer.id}).data) == 1

    with served(state, "--fresh") as client:
        assert client.v1.customers.list().data == []


def test_unreadable_state_names_the_file_and_the_way_out(tmp_path):
    state = tmp_path / "sandbox-state.json"
    state.write_text("{not json")
    with pytest.raises(SandboxStateError) as caught:
        Sandbox(25.0, 3600, state)
    assert str(state) in str(caught.value) and "--fresh" in str(caught.value)


def test_a_clock_stopped_mid_advance_finishes_it_on_restart(tmp_path):
    """Killed between the advance's 200 and its end: the clock must not stay `advancing`."""
    from metering_pipeline.stripe_sandbox import run_sandbox

    state = tmp_path / "sandbox-state.json"
    with run_sandbox(requests_per_second=1000, state_path=state) as handle:
        client = stripe.StripeClient("sk_test_restart", base_addresses={"api": handle.url})
        customer, clock = clocked_customer(client, NOV_5)
        calls = meter(client, "api_calls")
        subscribe(client, customer.id, metered_price(client, calls.id, unit_amount=2).id)
        with handle.sandbox.store.lock:  # as if killed right after answering the advance
            stored = handle.sandbox.store.objects[clock.id]
            stored["status"] = "advancing"
            stored["status_details"] = {"advancing": {"target_frozen_time": DEC_5 + 7200}}
        handle.sandbox.save()
    restarted = Sandbox(1000, 3600, state).store
    assert restarted.objects[clock.id]["status"] == "ready"
    assert restarted.objects[clock.id]["frozen_time"] == DEC_5 + 7200
    # the period end it crossed ran: the subscription_cycle invoice exists and is finalized
    cycle = [
        obj
        for obj in restarted.all("invoice")
        if obj["customer"] == customer.id and obj["billing_reason"] == "subscription_cycle"
    ]
    assert [invoice["status"] for invoice in cycle] == ["paid"]  # no usage: a $0 invoice
