"""Dagster wiring, one folder per domain.

The project deliberately uses two features Dagster marks as not yet stable: single-run backfill
policies (beta) and partitioned asset checks (preview). Their warnings say nothing a user can act
on, so they are silenced here, for those features only; ``python -W default`` shows them again.
"""

import sys
import warnings

from dagster import BetaWarning, PreviewWarning

if not sys.warnoptions:  # an explicit -W option wins
    warnings.filterwarnings("ignore", message=".*`backfill_policy`.*", category=BetaWarning)
    warnings.filterwarnings(
        "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=PreviewWarning
    )
