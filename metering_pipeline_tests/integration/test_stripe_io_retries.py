"""The gateway's retry loop against a small scripted HTTP server, driven through the real SDK.

The server keeps meter events by identifier as Stripe does, and answers each request with the next
scripted fault: a status (with or without ``Stripe-Should-Retry``), a response dropped after the
event was recorded, or an answer slower than the client's timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest

from metering_pipeline.stripe_io import (
    CallContext,
    StripeAuthenticationError,
    StripeGateway,
    StripeRejectedError,
    StripeUnavailableError,
)

KEY = "sk_test_51SecretValueThatMustNeverLeak"
NOW = datetime.now(UTC).replace(microsecond=0)
PERIOD = (datetime(2026, 11, 5, tzinfo=UTC), datetime(2026, 12, 5, tzinfo=UTC))


class FakeStripe(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[tuple] = []
        self.events: dict[str, dict] = {}
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeStripe

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        body = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        with self.server.lock:
            self.server.requests += 1
            fault = self.server.script.pop(0) if self.server.script else ("ok",)
        if fault[0] == "status":
            _, status, should_retry, message = fault
            headers = {"Stripe-Should-Retry": should_retry} if should_retry else {}
            return self._answer(
                status, {"error": {"type": "api_error", "message": message}}, headers
            )
        if fault[0] == "delay":
            self._slow(fault[1])
        identifier = body["identifier"][0]
        with self.server.lock:
            duplicate = identifier in self.server.events
            if not duplicate:
                self.server.events[identifier] = {k: v[0] for k, v in body.items()}
        if fault[0] == "drop":
            self.close_connection = True  # recorded, but the client never hears back
            return None
        if duplicate:
            error = {
                "type": "invalid_request_error",
                "message": f"An event already exists with identifier {identifier}.",
            }
            return self._answer(400, {"error": error}, {"Stripe-Should-Retry": "false"})
        return self._answer(200, {"object": "billing.meter_event", "identifier": identifier}, {})

    def _slow(self, seconds: float) -> None:
        """Hold the request, counting how many are held at once (before any answer is sent)."""
        with self.server.lock:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        time.sleep(seconds)
        with self.server.lock:
            self.server.in_flight -= 1

    def _answer(self, status: int, payload: dict, headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", "req_fake")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    server = FakeStripe()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def gateway(server: FakeStripe, max_retries: int = 5, timeout: float = 5.0) -> StripeGateway:
    return StripeGateway(
        KEY, server.url, None, 1000, max_retries, timeout_seconds=timeout, sleep=lambda s: None
    )


def send(gw: StripeGateway, identifier: str = "mp_abc_1") -> str:
    return gw.send_meter_event(
        "api_calls",
        "cus_1",
        Decimal(42),
        NOW,
        identifier,
        context=CallContext(customer="cus_1", meter="api_calls", period=PERIOD),
    )


def test_clean_send_records_one_event(fake_stripe: FakeStripe) -> None:
    gw = gateway(fake_stripe)
    assert send(gw) == "sent"
    assert fake_stripe.events["mp_abc_1"]["payload[value]"] == "42"
    assert fake_stripe.events["mp_abc_1"]["timestamp"] == str(int(NOW.timestamp()))
    assert (gw.stats.api_calls, gw.stats.retries, gw.stats.failures) == (1, 0, 0)


def test_faults_then_a_lost_answer_still_deliver_exactly_once(fake_stripe: FakeStripe) -> None:
    fake_stripe.script = [
        ("status", 429, None, "Too many requests"),
        ("status", 500, None, "Internal error"),
        ("status", 409, None, "Conflict"),
        ("drop",),  # Stripe records the event, the answer is lost
    ]
    gw = gateway(fake_stripe)
    # the retry after the drop is told the identifier exists: that is a delivery, not an error
    assert send(gw) == "already_delivered"
    assert list(fake_stripe.events) == ["mp_abc_1"]
    assert (gw.stats.api_calls, gw.stats.retries, gw.stats.failures) == (5, 4, 0)


def test_an_answer_slower_than_the_timeout_is_retried_without_double_counting(
    fake_stripe: FakeStripe,
) -> None:
    fake_stripe.script = [("delay", 1.0)]
    gw = gateway(fake_stripe, timeout=0.3)
    assert send(gw) in ("already_delivered", "sent")
    time.sleep(1.0)  # let the slow first request finish on the server
    assert list(fake_stripe.events) == ["mp_abc_1"]
    assert gw.stats.retries >= 1


def test_re_sending_a_pending_entry_reports_it_delivered(fake_stripe: FakeStripe) -> None:
    gw = gateway(fake_stripe)
    assert send(gw) == "sent"
    assert send(gw) == "already_delivered"  # a later run re-sends the same identifier
    assert len(fake_stripe.events) == 1


def test_should_retry_false_is_honoured_even_on_a_429(fake_stripe: FakeStripe) -> None:
    fake_stripe.script = [("status", 429, "false", "Rate limited; retrying will not help")]
    gw = gateway(fake_stripe)
    with pytest.raises(StripeRejectedError):
        send(gw)
    assert fake_stripe.requests == 1
    assert gw.stats.failures == 1


def test_should_retry_true_is_honoured_on_a_400(fake_stripe: FakeStripe) -> None:
    fake_stripe.script = [("status", 400, "true", "Lock timeout")]
    assert send(gateway(fake_stripe)) == "sent"
    assert fake_stripe.requests == 2


def test_exhausted_retries_name_the_key_and_say_the_outcome_is_unknown(
    fake_stripe: FakeStripe,
) -> None:
    fake_stripe.script = [("status", 503, None, f"Overloaded ({KEY})")] * 4
    gw = gateway(fake_stripe, max_retries=3)
    with pytest.raises(StripeUnavailableError) as raised:
        send(gw)
    message = str(raised.value)
    assert "customer cus_1" in message
    assert "meter api_calls" in message
    assert "period 2026-11-05T00:00:00Z/2026-12-05T00:00:00Z" in message
    assert "after 3 retries" in message and "HTTP 503" in message
    assert "may or may not" in message
    assert KEY not in message and "sk_test_" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert fake_stripe.requests == 4
    assert (gw.stats.api_calls, gw.stats.retries, gw.stats.failures) == (4, 3, 1)
    assert not fake_stripe.events


def test_a_rejected_event_is_not_retried_and_says_so(fake_stripe: FakeStripe) -> None:
    fake_stripe.script = [("status", 400, "false", "No such customer: 'cus_1'")]
    with pytest.raises(StripeRejectedError) as raised:
        send(gateway(fake_stripe))
    assert "No such customer" in str(raised.value)
    assert "Nothing was recorded" in str(raised.value)
    assert raised.value.http_status == 400
    assert raised.value.request_id == "req_fake"
    assert fake_stripe.requests == 1


def test_a_bad_key_gives_advice_without_the_key(fake_stripe: FakeStripe) -> None:
    fake_stripe.script = [("status", 401, None, f"Invalid API Key provided: {KEY[:12]}****leak")]
    with pytest.raises(StripeAuthenticationError) as raised:
        send(gateway(fake_stripe))
    assert "STRIPE_API_KEY" in str(raised.value)
    assert "sk_test_" not in str(raised.value)


def test_a_server_that_is_down_is_a_connection_failure(fake_stripe: FakeStripe) -> None:
    url = fake_stripe.url
    fake_stripe.shutdown()
    fake_stripe.server_close()
    gw = StripeGateway(KEY, url, None, 1000, 2, timeout_seconds=1, sleep=lambda s: None)
    with pytest.raises(StripeUnavailableError, match="no answer"):
        send(gw)
    assert gw.stats.api_calls == 3


def test_a_fractional_value_is_refused_before_any_call(fake_stripe: FakeStripe) -> None:
    gw = gateway(fake_stripe)
    with pytest.raises(ValueError, match="customer cus_1, meter api_calls.*not a whole number"):
        gw.send_meter_event("api_calls", "cus_1", Decimal("1.5"), NOW, "mp_abc_2")
    assert fake_stripe.requests == 0


def test_parallel_sends_for_one_customer_and_meter_go_one_at_a_time(
    fake_stripe: FakeStripe,
) -> None:
    fake_stripe.script = [("delay", 0.05)] * 8
    gw = gateway(fake_stripe)
    identifiers = [f"mp_abc_{n}" for n in range(8)]
    threads = [threading.Thread(target=send, args=(gw, i)) for i in identifiers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(fake_stripe.events) == sorted(identifiers)
    assert fake_stripe.max_in_flight == 1
