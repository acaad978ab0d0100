"""No secret in Dagster's storage: a run against a PostgreSQL warehouse whose URL carries a
password, with a Stripe key, leaves neither anywhere under DAGSTER_HOME.

The code location's own resources (``default_resources``) are used, configured from the
environment as in production; the run syncs the Stripe catalog (Stripe key, warehouse) and
builds one hour of dbt models (dbt connects with the password). Then every file of the
instance is read: the SQLite run, event-log and schedule storage cell by cell (job snapshots are
stored zlib-compressed, so each blob is also read decompressed) and every compute log.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from metering_pipeline.defs.resources import default_resources
from metering_pipeline.defs.stripe_catalog.assets import stripe_catalog
from metering_pipeline.defs.transform.assets import usage_models
from metering_pipeline.defs.transform.project import dbt_resource
from metering_pipeline.instance import INSTANCE_TEMPLATE
from metering_pipeline_tests.integration.usage_world import at, insert_events, query

HOUR = "2026-11-06-10:00"


@pytest.fixture
def passworded_warehouse(postgres_admin_url: str) -> Iterator[tuple[str, str]]:
    """A throwaway role with a password, owning a fresh database: (URL with password, password)."""
    suffix = uuid.uuid4().hex[:12]
    role, database, password = (
        f"metering_secret_{suffix}",
        f"metering_secret_{suffix}",
        (f"pw{uuid.uuid4().hex}"),
    )
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        admin.execute(f"create role {role} login password '{password}'")
        admin.execute(f'create database "{database}" owner {role}')
    host = postgres_admin_url.split("@", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"postgresql://{role}:{password}@{host}/{database}", password
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{database}" with (force)')
            admin.execute(f"drop role if exists {role}")


def _texts(path: Path) -> Iterator[bytes]:
    """Every stored byte string of a file: each SQLite cell (and its decompressed form)."""
    data = path.read_bytes()
    yield data
    if not data.startswith(b"SQLite format 3"):
        return
    with sqlite3.connect(path) as db:
        tables = [
            name for (name,) in db.execute("select name from sqlite_master where type='table'")
        ]
        for table in tables:
            for row in db.execute(f'select * from "{table}"'):
                for cell in row:
                    if isinstance(cell, str):
                        yield cell.encode()
                    elif isinstance(cell, bytes):
                        yield cell
                        try:
                            unpacked = zlib.decompress(cell)
                        except zlib.error:
                            continue
                        yield unpacked


def test_no_password_or_stripe_key_in_the_instance_storage(
    passworded_warehouse, stripe_sandbox, tmp_path, monkeypatch
):
    warehouse_url, password = passworded_warehouse
    stripe_key = f"sk_test_{uuid.uuid4().hex}"
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("METERING_HOME", str(tmp_path / "metering"))
    monkeypatch.setenv("METERING_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("STRIPE_API_KEY", stripe_key)
    monkeypatch.setenv("STRIPE_API_BASE", stripe_sandbox.url)
    monkeypatch.setenv("STRIPE_METER_EVENTS_BASE", stripe_sandbox.url)

    resources = {**default_resources(), "dbt": dbt_resource()}
    with dg.DagsterInstance.get() as instance:
        sync = dg.materialize([stripe_catalog], instance=instance, resources=resources)
        assert sync.success
        insert_events(warehouse_url, [("e-1", "cus_a", "api_calls", 5, at("2026-11-06 10:05:00"))])
        models = dg.materialize(
            [usage_models], instance=instance, resources=resources, partition_key=HOUR
        )
        assert models.success
        assert query(warehouse_url, "select count(*) from analytics.stg_usage_events") == [(1,)]
        assert len(instance.get_runs()) == 2

    files = [path for path in home.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in files)
    assert any(path.parent.name == "compute_logs" for path in files)
    leaks = {
        secret_name: sorted(
            str(path.relative_to(home))
            for path in files
            if any(secret.encode() in text for text in _texts(path))
        )
        for secret_name, secret in (("warehouse password", password), ("Stripe key", stripe_key))
    }
    assert leaks == {"warehouse password": [], "Stripe key": []}
