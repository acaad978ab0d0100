"""dbt models as hourly-partitioned Dagster assets; dbt tests as their asset checks."""

import contextlib
import io
import json
from collections.abc import Iterator
from datetime import UTC

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from metering_pipeline.defs.partitions import hourly_partitions
from metering_pipeline.defs.resources import WarehouseResource
from metering_pipeline.defs.transform.project import (
    dbt_project,
    dbt_resource,
    prepare_manifest,
    warehouse_environment,
)
from metering_pipeline.warehouse import warehouse_lock


class MeteringTranslator(DagsterDbtTranslator):
    """Models keep their dbt names as keys; sources map to their producers via ``meta.dagster``."""

    def get_group_name(self, dbt_resource_props) -> str | None:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_group_name(dbt_resource_props)
        return "transform"


@dbt_assets(
    manifest=prepare_manifest(),
    project=dbt_project,
    dagster_dbt_translator=MeteringTranslator(),
    partitions_def=hourly_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def usage_models(
    context: dg.AssetExecutionContext, dbt: DbtCliResource, warehouse: WarehouseResource
) -> Iterator:
    """One ``dbt build`` for the run's whole partition window, however many hours it holds.

    A single-run backfill of a month is one invocation; each incremental model deletes the
    window before inserting it, so running the same hours again replaces them. dbt holds the
    warehouse lock for the whole invocation: on DuckDB an overlapping run waits for it here
    instead of failing inside dbt.
    """
    window = context.partition_time_window
    dbt_vars = {
        "min_date": window.start.astimezone(UTC).isoformat(),
        "max_date": window.end.astimezone(UTC).isoformat(),
    }
    with warehouse_lock(warehouse.url):
        with warehouse_environment(warehouse.url):
            invocation = dbt.cli(["build", "--vars", json.dumps(dbt_vars)], context=context)
        with contextlib.redirect_stdout(DbtLogLines(context.log)):
            yield from invocation.stream()


class DbtLogLines(io.TextIOBase):
    """dagster-dbt echoes every dbt log line to stdout; send them to the run's log instead, at
    debug level, and dbt's closing "Done. PASS=..." line at info, so a console shows one line
    per build and the UI still holds the whole listing."""

    def __init__(self, log: dg.DagsterLogManager) -> None:
        self._log = log
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in filter(None, (line.rstrip() for line in lines)):
            (self._log.info if line.lstrip().startswith("Done.") else self._log.debug)(line)
        return len(text)


defs = dg.Definitions(
    assets=[usage_models],
    resources={"dbt": dbt_resource()},
)
