"""Shared fixtures: warehouses on both engines, and a fresh database per PostgreSQL test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "METERING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
POSTGRES_REQUIRED = os.environ.get("METERING_REQUIRE_POSTGRES") == "1"


def _postgres_unavailable_reason() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as error:
        return f"PostgreSQL is not reachable at METERING_TEST_POSTGRES_URL ({error})".strip()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    reason = _postgres_unavailable_reason()
    if reason:
        if POSTGRES_REQUIRED:
            pytest.fail(f"{reason}; METERING_REQUIRE_POSTGRES=1 makes this a failure, not a skip")
        pytest.skip(f"{reason}; start PostgreSQL or set METERING_TEST_POSTGRES_URL to run this")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"metering_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    base, _, _ = postgres_admin_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def duckdb_url(tmp_path) -> str:
    return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request) -> str:
    """Runs a test once on DuckDB and once on PostgreSQL."""
    if request.param == "duckdb":
        return request.getfixturevalue("duckdb_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def stripe_sandbox():
    """A fresh Stripe sandbox on a free loopback port (its own state), stopped afterwards.

    It allows 1000 requests/s so tests are not throttled by accident; tests about the rate limit
    start their own with `run_sandbox(requests_per_second=...)`.
    """
    from metering_pipeline.stripe_sandbox import run_sandbox

    with run_sandbox(requests_per_second=1000.0) as handle:
        yield handle


@pytest.fixture
def stripe_client(stripe_sandbox):
    """The official SDK's client, pointed at the sandbox for both API and meter-event hosts."""
    import stripe

    return stripe.StripeClient(
        "sk_test_sandbox_fixture_key",
        base_addresses={"api": stripe_sandbox.url, "meter_events": stripe_sandbox.url},
    )
