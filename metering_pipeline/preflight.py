"""Start-up checks that need more than the environment: the configured databases answer.

``settings.py`` only parses; this module tries each PostgreSQL URL once (a short timeout) and
checks that a DuckDB file's folder can be written, so a wrong host, port, password or path stops
the command before any work starts, naming the variable instead of failing the first run.
"""

from __future__ import annotations

import os

import psycopg

from metering_pipeline.settings import Settings, SettingsError, duckdb_path, url_kind
from metering_pipeline.sources.reader import redact
from metering_pipeline.warehouse import Database

CONNECT_TIMEOUT_SECONDS = 5


def check_reachable(settings: Settings, *, warehouse: bool = True, source: bool = True) -> None:
    """Raise ``SettingsError`` for the first configured database that cannot be used."""
    if warehouse:
        _check("METERING_WAREHOUSE_URL", settings.warehouse_url)
    if source and settings.source_dir is None:
        _check("METERING_SOURCE_URL", settings.source_url)


def _check(variable: str, url: str) -> None:
    if url_kind(url, variable) == "duckdb":
        folder = duckdb_path(url).parent
        existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
        if not os.access(existing, os.W_OK):
            raise SettingsError(f"{variable}: cannot write the DuckDB file's folder {folder}")
        return
    try:
        with psycopg.connect(
            Database(url).postgres_conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ):
            pass
    except psycopg.OperationalError as error:
        reason = str(error).strip().splitlines()[-1].strip() if str(error).strip() else "no answer"
        raise SettingsError(
            f"{variable}: cannot connect to {redact(url)} ({reason}); check host, port, "
            "user, password and that the database exists"
        ) from None
