"""Resources shared by every domain: the warehouse, the source, and Stripe.

Dagster stores every configured resource value (defaults included) in each run's job snapshot,
so the code location never configures a URL or key by value: the URLs are ``dg.EnvVar``s
(Dagster stores the variable's name and reads the value when the run starts) and the Stripe key
is read from the settings inside the run.
"""

from __future__ import annotations

import os

import dagster as dg

from metering_pipeline.settings import load_settings
from metering_pipeline.stripe_io import StripeGateway
from metering_pipeline.warehouse import Database


class WarehouseResource(dg.ConfigurableResource):
    """Where the pipeline's tables and the dbt models live (DuckDB file or PostgreSQL)."""

    url: str

    @property
    def database(self) -> Database:
        return Database(self.url)


class SourceResource(dg.ConfigurableResource):
    """Where raw usage comes from: the ``usage_events`` table at ``url``, or a folder of files."""

    url: str
    directory: str | None = None

    @property
    def database(self) -> Database:
        return Database(self.url)


class StripeResource(dg.ConfigurableResource):
    """Where Stripe is. The key comes from ``STRIPE_API_KEY`` when the run starts, so it never
    sits in run config or the UI; the overrides exist for tests against a sandbox."""

    api_base: str | None = None
    meter_events_base: str | None = None

    def gateway(self) -> StripeGateway:
        settings = load_settings()
        return StripeGateway(
            settings.stripe_api_key.reveal(),
            self.api_base or settings.stripe_api_base,
            self.meter_events_base or self.api_base or settings.stripe_meter_events_base,
            settings.stripe_requests_per_second,
            settings.stripe_max_retries,
        )


def from_environment(variable: str, default: str) -> str:
    """``dg.EnvVar(variable)`` when the variable is set, so only its name is stored; else the
    settings' default, a file path under METERING_HOME that holds no secret."""
    return dg.EnvVar(variable) if os.environ.get(variable) else default


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """The code location's resources; ``load_settings`` validates the values first."""
    settings = load_settings()
    return {
        "warehouse": WarehouseResource(
            url=from_environment("METERING_WAREHOUSE_URL", settings.warehouse_url)
        ),
        "source": SourceResource(
            url=from_environment("METERING_SOURCE_URL", settings.source_url),
            directory=str(settings.source_dir) if settings.source_dir else None,
        ),
        "stripe": StripeResource(),
    }
