"""The dbt project, its manifest (parsed at load time, offline) and the warehouse it targets."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dagster_dbt import DbtCliResource, DbtProject
from filelock import FileLock

from metering_pipeline.settings import duckdb_path, url_kind

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR)

# The dbt beside this interpreter, so `.venv/bin/metering` works without `.venv/bin` on PATH.
DBT_EXECUTABLE = (
    str(Path(sys.executable).with_name("dbt"))
    if Path(sys.executable).with_name("dbt").exists()
    else (shutil.which("dbt") or "dbt")
)


def dbt_resource() -> DbtCliResource:
    """The dbt CLI resource every caller uses: this project, this interpreter's dbt."""
    return DbtCliResource(project_dir=dbt_project, dbt_executable=DBT_EXECUTABLE)


def dbt_env(warehouse_url: str) -> dict[str, str]:
    """The variables ``profiles.yml`` reads, so dbt builds where the pipeline writes.

    ``PGTZ=UTC`` makes PostgreSQL truncate hours in UTC whatever the server's time zone.
    """
    if url_kind(warehouse_url, "METERING_WAREHOUSE_URL") == "duckdb":
        return {
            "METERING_DBT_TARGET": "duckdb",
            "METERING_DBT_DUCKDB_PATH": str(duckdb_path(warehouse_url)),
        }
    parts = urlsplit(warehouse_url)
    return {
        "METERING_DBT_TARGET": "postgres",
        "METERING_DBT_PG_HOST": parts.hostname or "127.0.0.1",
        "METERING_DBT_PG_PORT": str(parts.port or 5432),
        "METERING_DBT_PG_USER": unquote(parts.username or "postgres"),
        "METERING_DBT_PG_PASSWORD": unquote(parts.password or ""),
        "METERING_DBT_PG_DBNAME": parts.path.lstrip("/") or "postgres",
        "PGTZ": "UTC",
    }


@contextmanager
def warehouse_environment(warehouse_url: str) -> Iterator[None]:
    """Point the dbt subprocess at ``warehouse_url``.

    dagster-dbt hands ``os.environ`` to the dbt process when it starts, and offers no other way
    to pass variables; the code location runs one step at a time (in-process executor), so
    setting them around the start of one invocation is safe.
    """
    values = dbt_env(warehouse_url)
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _manifest_is_stale() -> bool:
    manifest = dbt_project.manifest_path
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [DBT_PROJECT_DIR / "dbt_project.yml", DBT_PROJECT_DIR / "profiles.yml"]
    for folder in ("models", "macros", "tests"):
        sources.extend(path for path in (DBT_PROJECT_DIR / folder).rglob("*") if path.is_file())
    return any(path.stat().st_mtime > built for path in sources)


def prepare_manifest() -> Path:
    """``dbt parse`` when the manifest is missing or older than the project; needs no network
    and no warehouse connection. A file lock keeps processes loading the code location at the
    same time (test workers, a webserver and a daemon) from parsing over each other."""
    lock_path = DBT_PROJECT_DIR / "target" / ".parse.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with FileLock(lock_path):
        if _manifest_is_stale():
            dbt_resource().cli(["--quiet", "parse"], target_path=Path("target")).wait()
    return dbt_project.manifest_path
