"""A code location for the dead-run test: one asset in the push's pool that records its run
worker's pid and, when told to, holds the pool's slot until the worker is killed.

The real push needs a warehouse and Stripe; what is under test here is the instance (its pool
limit and run monitoring) and the daemon, so the asset only has to hold the same pool.
"""

import os
import time
from pathlib import Path

import dagster as dg

from metering_pipeline.defs.push.assets import stripe_meter_events

PUSH_POOL = stripe_meter_events.op.pool
PROBE_DIR_VARIABLE = "METERING_TEST_PROBE_DIR"


class HoldConfig(dg.Config):
    hold_seconds: float = 0.0


@dg.asset(pool=PUSH_POOL)
def push_stand_in(context: dg.AssetExecutionContext, config: HoldConfig) -> None:
    """Writes ``<run id>.pid`` in the probe folder, then holds the slot for ``hold_seconds``."""
    probe = Path(os.environ[PROBE_DIR_VARIABLE])
    (probe / f"{context.run_id}.pid").write_text(str(os.getpid()))
    time.sleep(config.hold_seconds)


push_job = dg.define_asset_job("push_stand_in_job", selection=[push_stand_in])

# The code location's executor: steps run inside the run worker, so killing the step's process
# kills the run worker with it, as a crash of the real push would.
defs = dg.Definitions(assets=[push_stand_in], jobs=[push_job], executor=dg.in_process_executor)
