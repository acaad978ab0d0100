"""Resources shared by every domain: the warehouse, the source, and Stripe."""

from __future__ import annotations

import dagster as dg

from metering_pipeline.settings import load_settings
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


def default_resources() -> dict[str, dg.ConfigurableResource]:
    settings = load_settings()
    return {
        "warehouse": WarehouseResource(url=settings.warehouse_url),
        "source": SourceResource(
            url=settings.source_url,
            directory=str(settings.source_dir) if settings.source_dir else None,
        ),
    }
