"""Dagster wiring, one folder per domain.

The project deliberately uses two features Dagster marks as not yet stable: single-run backfill
policies (beta) and partitioned asset checks (preview); Dagster's own run-status sensors pass
the beta ``owners`` parameter. These warnings say nothing a user can act on, so they are
silenced here, for those features only; ``python -W default`` shows them again.
"""

import sys
import warnings

from dagster import BetaWarning, PreviewWarning

if not sys.warnoptions:  # an explicit -W option wins
    for beta_parameter in ("backfill_policy", "owners"):
        warnings.filterwarnings("ignore", message=f".*`{beta_parameter}`.*", category=BetaWarning)
    warnings.filterwarnings(
        "ignore", message=".*partitions_def on an AssetCheckSpec.*", category=PreviewWarning
    )
